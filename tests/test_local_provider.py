"""Local root key: file mode, missing or wrong key, corrupt rows; nothing written on failure."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.providers.local import LocalKeyProvider

from .helpers import cli_env, run_cli


def _digest(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        rows = []
        for table in ("key_versions", "credentials", "audit_events", "meta"):
            rows.append(conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall())
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    assert run_cli("put", "gh", "--value", '{"token": "ghp_x"}', cwd=tmp_path, env=env).returncode == 0
    return tmp_path, env


def test_key_file_created_0600(store: tuple[Path, dict[str, str]]) -> None:
    cwd, _ = store
    assert (cwd / "master.key").stat().st_mode & 0o777 == 0o600


def test_0644_key_file_refused(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    (cwd / "master.key").chmod(0o644)
    before = _digest(cwd / "c.db")
    res = run_cli("get", "gh", cwd=cwd, env=env)
    assert res.returncode == 1 and "mode 0644" in res.stderr and "chmod 600" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert _digest(cwd / "c.db") == before


def test_missing_key_file(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    (cwd / "master.key").unlink()
    before = _digest(cwd / "c.db")
    res = run_cli("put", "x", "--value", "1", cwd=cwd, env=env)
    assert res.returncode == 1 and "not found" in res.stderr
    assert _digest(cwd / "c.db") == before


def test_wrong_root_key_refused_and_nothing_written(store: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    cwd, env = store
    other = tmp_path / "other.key"
    LocalKeyProvider.create(other)
    before = _digest(cwd / "c.db")
    env2 = dict(env, NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(other))
    for args in (("put", "x", "--value", "1"), ("keys", "rotate"), ("get", "gh")):
        res = run_cli(*args, cwd=cwd, env=env2)
        assert res.returncode == 1 and "root key" in res.stderr, res.stderr
    assert _digest(cwd / "c.db") == before


def test_damaged_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"nckey1 0011 bm90LWEta2V5\n")
    os.close(fd)
    with pytest.raises(nc.ConfigError, match="damaged"):
        LocalKeyProvider.load(path)
    with pytest.raises(nc.ConfigError, match="already exists"):
        LocalKeyProvider.create(path)


def test_corrupt_rows_give_typed_errors(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    with sqlite3.connect(cwd / "c.db") as conn:
        conn.execute("UPDATE credentials SET envelope = X'00112233' WHERE id = 'gh'")
    res = run_cli("get", "gh", cwd=cwd, env=env)
    assert res.returncode == 1 and res.stderr.startswith("error: envelope too short")
    with sqlite3.connect(cwd / "c.db") as conn:
        conn.execute("UPDATE credentials SET metadata = '{not json' WHERE id = 'gh'")
    res = run_cli("list", cwd=cwd, env=env)
    assert res.returncode == 1 and "corrupt metadata" in res.stderr
    with sqlite3.connect(cwd / "c.db") as conn:
        conn.execute("UPDATE key_versions SET wrapped_key = X'4c31' WHERE version = 1")
    res = run_cli("put", "y", "--value", "1", cwd=cwd, env=env)
    assert res.returncode == 1 and "error:" in res.stderr and "Traceback" not in res.stderr


def test_passing_key_file_setting_relative_to_store(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'd.db'}")
    (tmp_path / "c.toml").write_text(f'[provider]\ntype = "local"\nkey_file = "{tmp_path / "keys" / "root.key"}"\n')
    (tmp_path / "keys").mkdir()
    assert run_cli("--config", "c.toml", "init", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "keys" / "root.key").exists()
    # the key file comes from the process's config, never from the store
    assert run_cli("--config", "c.toml", "put", "a", "--value", "1", cwd=tmp_path, env=env).returncode == 0
    res = run_cli("put", "a", "--value", "1", cwd=tmp_path, env=env)
    assert res.returncode == 1 and str(tmp_path / "master.key") in res.stderr  # the default, not the record
