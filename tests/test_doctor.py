"""`doctor` finds each planted problem and is clean on a healthy store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .helpers import cli_env, run_cli


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    for i in range(3):
        assert run_cli("put", f"c{i}", "--value", f'{{"s": "v{i}"}}', cwd=tmp_path, env=env).returncode == 0
    return tmp_path, env


def _doctor(store: tuple[Path, dict[str, str]]) -> tuple[int, list[dict[str, str]]]:
    cwd, env = store
    res = run_cli("--json", "doctor", cwd=cwd, env=env)
    assert "Traceback" not in res.stderr
    return res.returncode, json.loads(res.stdout)


def _problems(findings: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in findings if f["severity"] in ("warning", "error")}


def test_healthy_store_is_clean(store: tuple[Path, dict[str, str]]) -> None:
    rc, findings = _doctor(store)
    assert rc == 0 and not _problems(findings)
    assert {f["check"] for f in findings} >= {
        "schema",
        "key-versions",
        "reencryption",
        "key-age",
        "key-file",
        "provider",
        "audit",
    }
    assert all(set(f) == {"check", "severity", "message", "fix"} for f in findings)


def test_revoked_version_still_referenced(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    run_cli("keys", "rotate", cwd=cwd, env=env)
    assert run_cli("keys", "revoke", "1", cwd=cwd, env=env).returncode == 0
    rc, findings = _doctor(store)
    problem = _problems(findings)["key-versions"]
    assert rc == 1 and "revoked key version 1" in problem["message"] and "3 credential" in problem["message"]
    assert "keys reinstate 1" in problem["fix"]
    pending = next(f for f in findings if f["check"] == "reencryption")
    assert pending["severity"] == "info" and "3 of 3" in pending["message"] and pending["fix"].endswith("reencrypt")


def test_destroyed_version_still_referenced(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    run_cli("keys", "rotate", cwd=cwd, env=env)
    run_cli("keys", "revoke", "1", cwd=cwd, env=env)
    refused = run_cli("keys", "destroy", "1", "--force", "--yes-destroy-key-version", "1", cwd=cwd, env=env)
    assert refused.returncode == 1 and "still used by 3" in refused.stderr  # no flag skips it any more
    with sqlite3.connect(cwd / "c.db") as conn:  # a table edit (or an old forced destroy) strands the rows
        conn.execute("UPDATE key_versions SET status = 'destroyed', wrapped_key = NULL WHERE version = 1")
    rc, findings = _doctor(store)
    problem = _problems(findings)["key-versions"]
    assert rc == 1 and "destroyed key version 1" in problem["message"] and "backup" in problem["fix"]


def test_world_readable_key_file(store: tuple[Path, dict[str, str]]) -> None:
    cwd, _ = store
    (cwd / "master.key").chmod(0o644)
    rc, findings = _doctor(store)
    problem = _problems(findings)["key-file"]
    assert rc == 1 and problem["fix"] == f"chmod 600 {cwd / 'master.key'}"


def test_provider_down(store: tuple[Path, dict[str, str]]) -> None:
    cwd, _ = store
    (cwd / "master.key").rename(cwd / "elsewhere.key")
    rc, findings = _doctor(store)
    assert rc == 1 and "missing" in _problems(findings)["key-file"]["message"]


def test_wrong_root_key_is_reported(store: tuple[Path, dict[str, str]]) -> None:
    cwd, _env = store
    other = cwd / "other"
    other.mkdir()
    assert run_cli("init", cwd=other, env=cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{other / 'o.db'}")).returncode == 0
    (cwd / "master.key").write_bytes((other / "master.key").read_bytes())
    rc, findings = _doctor(store)
    assert rc == 1
    assert "provider" in _problems(findings) or "audit" in _problems(findings)


def test_edited_audit_row(store: tuple[Path, dict[str, str]]) -> None:
    cwd, _ = store
    with sqlite3.connect(cwd / "c.db") as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory@evil' WHERE seq = 2")
    rc, findings = _doctor(store)
    problem = _problems(findings)["audit"]
    assert rc == 1 and "broken at event 2" in problem["message"]


def test_uninitialised_store(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'none.db'}")
    res = run_cli("--json", "doctor", cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert json.loads(res.stdout)[0]["fix"] == "nebula-credential init"
