"""The disaster-recovery drill (``make drill``), small enough for the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nebula_credential.drill import run_drill

from .helpers import cli_env


def test_drill_restores_every_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", raising=False)
    report = run_drill(tmp_path, credentials=30)
    assert report.ok, report.lines()
    assert report.restored_readable == 30 and report.mismatched == 0
    assert report.kept == ["v1"] and report.destroyed == [2]  # the backup kept v1; v2 went by policy
    assert not (tmp_path / "live.db").exists() and (tmp_path / "restored.db").exists()


def test_drill_entry_point_prints_a_report() -> None:
    res = subprocess.run([sys.executable, "-m", "nebula_credential.drill", "--credentials", "12"],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "RESULT: PASS"
    assert "12/12 credential(s) read back, 0 mismatched" in res.stdout
