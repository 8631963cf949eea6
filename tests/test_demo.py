"""`nebula-credential demo` runs the whole lifecycle end to end."""

from __future__ import annotations

import re
from pathlib import Path

from .helpers import run_cli


def test_demo_runs_the_lifecycle(tmp_path: Path) -> None:
    res = run_cli("demo", "--count", "600", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "imported 600 credentials" in out
    assert "rotated: v1 -> v2" in out
    assert "re-encrypted 600 credentials" in out
    assert "tamper attempt refused" in out and "DecryptionError" in out
    assert "audit chain: intact" in out
    assert "tok_…" in out and not re.search(r"tok_[a-z0-9]", out)  # the value is shown redacted only
    assert not list(tmp_path.iterdir())  # temp folder is elsewhere and removed
