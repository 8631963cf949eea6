"""backup verify / restore, and the backup CLI end to end."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import create_sqlite_backup, forget_backup, manifest_path
from nebula_credential.exceptions import BackupError
from nebula_credential.restore import restore_backup, verify_backup

from .helpers import FakeClock, cli_in_process, dump

KEEP = timedelta(days=30)


@pytest.fixture
def live(tmp_path: Path, key_file: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock)
    for i in range(6):
        v.put(f"c{i}", {"i": i}, scope=["production", "user"][i % 2])
    yield v
    v.close()


def test_verify_a_good_copy(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    before = (tmp_path / "b.db").read_bytes()
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert report.ok, report.problems
    assert report.credentials == 6 and report.keys == {"default": {1: 6}} and report.audit_events >= 2
    assert report.decrypted == 6
    assert (tmp_path / "b.db").read_bytes() == before  # checks run on a working copy


def test_verify_catches_a_tampered_copy(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok and any("audit chain broken at event 1" in p for p in report.problems)


def test_verify_reads_every_row_back(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    with sqlite3.connect(tmp_path / "b.db") as conn:  # bit rot in one ciphertext of the copy
        blob = bytearray(conn.execute("SELECT envelope FROM credentials WHERE id = 'c3'").fetchone()[0])
        blob[30] ^= 0x01
        conn.execute("UPDATE credentials SET envelope = ? WHERE id = 'c3'", (bytes(blob),))
    report = verify_backup(tmp_path / "b.db")
    assert not report.ok and report.problems == ["1 credential(s) of the copy do not decrypt: default/c3"]
    assert report.decrypted == 5


def test_verify_catches_a_copy_that_does_not_match_its_manifest(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "a.db", keep=KEEP)
    live.put("later", {"i": 99})
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    os.replace(tmp_path / "a.db", tmp_path / "b.db")  # b's manifest, a's rows
    report = verify_backup(tmp_path / "b.db")
    assert not report.ok and any("audit head differs" in p for p in report.problems)


def test_verify_refuses_a_copy_under_another_root_key(live: nc.Vault, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    other = tmp_path / "other.key"
    nc.providers.local.LocalKeyProvider.create(other)
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(other))
    report = verify_backup(tmp_path / "b.db")
    assert not report.ok and "cannot open the copy" in report.problems[0]


def test_a_copy_whose_version_was_destroyed_since_is_refused(live: nc.Vault, tmp_path: Path,
                                                            clock: FakeClock) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    forget_backup(live, "b.db")  # the operator dropped the hold: retention may now destroy v1
    live.keys.rotate()
    live.reencrypt()
    clock.advance(minutes=5)
    live.keys.revoke(1)
    clock.advance(hours=1)
    live.keys.destroy(1, force_retention=True)
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok and report.destroyed_since == {"default/v1": 6}
    assert any("default/v1" in p and "6 credential(s)" in p for p in report.problems)
    target = tmp_path / "restored.db"
    with pytest.raises(BackupError, match="default/v1"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{target}", live=live.store)
    assert not target.exists() and [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []


def test_restore_into_a_new_store(live: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    live.put("c0", {"i": "changed after the backup"})
    target = tmp_path / "new" / "restored.db"
    target.parent.mkdir()
    report, kept = restore_backup(tmp_path / "b.db", f"sqlite:///{target}", live=live.store)
    assert report.ok and kept is None
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    restored = nc.open(f"sqlite:///{target}", clock=clock)
    try:
        assert [restored.get(f"c{i}") for i in range(6)] == [{"i": i} for i in range(6)]
        assert restored.audit.verify().ok
        assert [r.action for r in restored.audit.rows()][-1] == "backup.restore"
    finally:
        restored.close()


def test_restore_never_replaces_a_store_unasked_and_keeps_the_old_one(live: nc.Vault, tmp_path: Path,
                                                                       clock: FakeClock) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    live.put("after", {"i": 1})
    live_path = Path(live.store.path)
    before = dump(live_path)
    with pytest.raises(BackupError, match="--replace"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", live=live.store)
    assert dump(live_path) == before
    live.close()
    report, kept = restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", replace=True, now=clock.now)
    assert report.ok and kept is not None
    assert dump(Path(kept)) == before  # nothing lost: the replaced store is kept, WAL folded in
    back = nc.open(f"sqlite:///{live_path}", clock=clock)
    try:
        assert back.get("c5") == {"i": 5}
        with pytest.raises(nc.CredentialNotFoundError):
            back.get("after")
    finally:
        back.close()


def test_a_failing_copy_replaces_nothing(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 2")
    live_path = Path(live.store.path)
    before = dump(live_path)
    with pytest.raises(BackupError, match="failed verification"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", replace=True)
    assert dump(live_path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if "replaced" in p.name or "restoring" in p.name) == []


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    return run


def test_cli_backup_round_trip(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("put", "gh", "--value", '{"token": "s3cr3t-value"}')
    res = cli("--json", "backup", "create", "nightly.db", "--keep", "7d")
    assert "root key file" in res.stderr and "same folder" in res.stderr  # master.key sits beside it here
    made = json.loads(res.stdout)
    assert made["keys"] == {"default": {"1": 1}} and manifest_path(tmp_path / "nightly.db").exists()
    listed = json.loads(cli("--json", "backup", "list").stdout)["backups"]
    assert [(b["name"], b["versions"], b["expired"]) for b in listed] == [("nightly.db", ["default/v1"], False)]
    cli("keys", "rotate")
    cli("reencrypt")
    cli("keys", "revoke", "1")
    res = cli("keys", "destroy", "1", ok=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: key version 1 is kept: needed by backup nightly.db until ")
    dry = cli("keys", "cleanup", "--dry-run").stdout
    assert "v1 kept: needed by backup nightly.db until" in dry
    assert any("v1 kept: needed by backup nightly.db" in f["message"] for f in json.loads(cli("--json", "doctor").stdout))
    verified = json.loads(cli("--json", "backup", "verify", "nightly.db").stdout)
    assert verified["ok"] and verified["credentials"] == 1
    out = json.loads(cli("--json", "backup", "restore", "nightly.db", "--to", "sqlite:///r.db").stdout)
    assert out["ok"] and out["replaced_store_kept_as"] is None
    got = json.loads(cli("--db", "sqlite:///r.db", "--json", "get", "gh").stdout)
    assert got["value"] == {"token": "s3cr3t-value"} and got["key_version"] == 1
    res = cli("backup", "restore", "nightly.db", "--to", "sqlite:///r.db", ok=False)
    assert res.returncode == 1 and "already exists" in res.stderr and res.stderr.count("\n") == 1
    cli("put", "late", "--value", '{"v": 1}')
    out = json.loads(cli("--json", "backup", "restore", "nightly.db", "--to", f"sqlite:///{tmp_path / 'c.db'}",
                         "--replace").stdout)  # over the live store itself (--db): kept beside it
    assert Path(out["replaced_store_kept_as"]).exists()
    assert cli("get", "late", ok=False).returncode == 1  # the store is the backup again
    assert json.loads(cli("--json", "get", "gh").stdout)["key_version"] == 1
    cli("backup", "forget", "nightly.db")
    assert json.loads(cli("--json", "backup", "list").stdout)["backups"] == []
    for res in (cli("backup", "verify", "missing.db", ok=False), cli("backup", "forget", "nope", ok=False)):
        assert res.returncode == 1 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert cli("backup", "register", ok=False).returncode == 2
    assert "s3cr3t" not in "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.json"))


def test_cli_register_and_a_bad_time(cli) -> None:  # type: ignore[no-untyped-def]
    res = cli("--json", "backup", "register", "--label", "pgdump-1", "--taken-at", "2020-01-01T00:00:00",
              "--keep", "36500d")
    assert json.loads(res.stdout)["keys"] == {}  # v1 did not exist in 2020
    res = cli("backup", "register", "--label", "x", "--taken-at", "yesterday", ok=False)
    assert res.returncode == 2 and "ISO 8601" in res.stderr


def test_a_copy_taken_before_a_root_rotation_still_restores(live: nc.Vault, tmp_path: Path,
                                                              clock: FakeClock) -> None:
    from nebula_credential.rootkeys import rotate_root_key

    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    rotate_root_key(live.store, live.provider, live.audit)  # the copy's DEKs stay under the old generation
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert report.ok and report.decrypted == 6, report.problems
    restore_backup(tmp_path / "b.db", f"sqlite:///{tmp_path / 'r.db'}", live=live.store)
    with nc.open(f"sqlite:///{tmp_path / 'r.db'}", clock=clock) as back:
        assert [back.get(f"c{i}") for i in range(6)] == [{"i": i} for i in range(6)]
