"""A backup is data, not code: verify and restore refuse a copy whose schema was edited.

Attacks of issue 31 by someone who can write the backup folder: a trigger
that makes every new token root, a trigger that copies wrapped keys into a
``loot`` table before destroy clears them, a view standing in for a table.
Each is refused by ``backup verify`` and ``backup restore``, by name, and
nothing is replaced.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backup_schema import expected_schema, read_schema
from nebula_credential.backups import create_sqlite_backup, manifest_path
from nebula_credential.exceptions import BackupError
from nebula_credential.restore import restore_backup, verify_backup

from .helpers import FakeClock, cli_in_process

KEEP = timedelta(days=30)


@pytest.fixture
def live(tmp_path: Path, key_file: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock)
    for i in range(3):
        v.put(f"c{i}", {"i": i})
    yield v
    v.close()


def _root_trigger(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TRIGGER grant_root AFTER INSERT ON server_tokens BEGIN "
                 "UPDATE server_tokens SET policies = '[\"root\"]' WHERE accessor = NEW.accessor; END")


def _loot_trigger(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE loot (keyring TEXT, version INTEGER, wrapped BLOB)")
    conn.execute("CREATE TRIGGER keep_keys BEFORE UPDATE OF wrapped_key ON key_versions BEGIN "
                 "INSERT INTO loot VALUES (OLD.keyring, OLD.version, OLD.wrapped_key); END")


def _view_as_table(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE leases RENAME TO leases_real")
    conn.execute("CREATE VIEW leases AS SELECT * FROM leases_real WHERE holder != 'hidden'")


def _extra_index(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX sneaky ON credentials (id)")


ATTACKS: dict[str, tuple[Callable[[sqlite3.Connection], None], list[str]]] = {
    "root trigger": (_root_trigger, ["trigger 'grant_root'"]),
    "loot trigger": (_loot_trigger, ["trigger 'keep_keys'", "table 'loot'"]),
    "view named like a table": (_view_as_table, ["view 'leases'", "table 'leases_real'", "missing table 'leases'"]),
    "extra index": (_extra_index, ["index 'sneaky'"]),
}


def _tamper(path: Path, attack: Callable[[sqlite3.Connection], None]) -> None:
    conn = sqlite3.connect(path)
    try:
        attack(conn)
        conn.commit()
    finally:
        conn.close()


def test_the_expected_schema_is_what_a_real_store_has(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    conn = sqlite3.connect(tmp_path / "b.db")
    try:
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert read_schema(conn) == expected_schema(version)
    finally:
        conn.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_verify_refuses_a_copy_with_code_in_it(live: nc.Vault, tmp_path: Path, attack: str) -> None:
    change, names = ATTACKS[attack]
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    _tamper(tmp_path / "b.db", change)
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok
    text = "; ".join(report.problems)
    assert "not one this project creates" in text
    for name in names:
        assert name in text, text


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_restore_refuses_a_copy_with_code_in_it_and_replaces_nothing(live: nc.Vault, tmp_path: Path,
                                                                     attack: str) -> None:
    change, names = ATTACKS[attack]
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    _tamper(tmp_path / "b.db", change)
    target = tmp_path / "live.db"
    live.store.close()
    before = target.read_bytes()
    with pytest.raises(BackupError) as info:
        restore_backup(tmp_path / "b.db", f"sqlite:///{target}", replace=True)
    assert names[0] in str(info.value) and "nothing was restored" in str(info.value)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name or "restoring" in p.name] == []
    with pytest.raises(BackupError):
        restore_backup(tmp_path / "b.db", f"sqlite:///{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists()


def test_cli_verify_and_restore_refuse_a_root_trigger(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cli = cli_in_process(tmp_path, capsys, monkeypatch)
    cli("init")
    cli("put", "gh", "--value", '{"token": "x"}')
    cli("backup", "create", "b.db")
    _tamper(tmp_path / "b.db", _root_trigger)
    res = cli("backup", "verify", "b.db", ok=False)
    assert res.returncode == 1 and "grant_root" in res.stdout + res.stderr
    res = cli("backup", "restore", "b.db", "--to", "sqlite:///new.db", ok=False)
    assert res.returncode == 1 and "grant_root" in res.stderr
    assert not (tmp_path / "new.db").exists()


def test_verify_compares_the_manifest_with_the_copy(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    mpath = manifest_path(tmp_path / "b.db")
    doc = json.loads(mpath.read_text())
    doc["keys"] = {"default": {"1": 2}}
    doc["schema_version"] = 1
    mpath.write_text(json.dumps(doc))
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok
    text = "; ".join(report.problems)
    assert "default/v1: 2" in text and "default/v1: 3" in text
    assert "schema version 1" in text


def test_a_corrupt_backup_is_named_not_the_working_copy(live: nc.Vault, tmp_path: Path) -> None:
    bad = tmp_path / "b.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 84 + b"garbage" * 200)
    with pytest.raises(BackupError) as info:
        verify_backup(bad)
    assert str(bad) in str(info.value) and "nc-verify-" not in str(info.value)
    with pytest.raises(BackupError) as info:
        restore_backup(bad, f"sqlite:///{tmp_path / 'new.db'}")
    assert str(bad) in str(info.value) and "restoring" not in str(info.value)
