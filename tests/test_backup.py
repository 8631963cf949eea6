"""Backups that retention knows about: create, register, hold, forget (library API)."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import (
    create_sqlite_backup,
    forget_backup,
    list_backups,
    manifest_path,
    register_backup,
)
from nebula_credential.config import KeyManagementConfig
from nebula_credential.doctor import run as doctor_run
from nebula_credential.exceptions import BackupError, ConfigError, PolicyViolationError
from nebula_credential.holds import held_versions
from nebula_credential.lifecycle import cleanup
from nebula_credential.models import KeyStatus
from nebula_credential.policies import UntilReEncrypted
from nebula_credential.store import SCHEMA_VERSION, BackupRecord

from .helpers import KEEP_ONE, FakeClock

KEEP = timedelta(days=30)


@pytest.fixture
def sq(tmp_path: Path, key_file: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    # keep_versions = 1: only backup holds (not the previous-version rule) keep v1 in these tests
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock,
                config=KEEP_ONE)
    yield v
    v.close()


def retire_v1(vault: nc.Vault, clock: FakeClock) -> None:
    """Rotate, move every row to v2 and revoke v1: only retention stands between v1 and destruction."""
    vault.keys.rotate()
    assert not vault.reencrypt().failures
    clock.advance(minutes=5)
    vault.keys.revoke(1)
    clock.advance(hours=1)


def test_create_copies_registers_and_writes_a_private_manifest(sq: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    for i in range(5):
        sq.put(f"a{i}", {"i": i})
    sq.keys.rotate()
    for i in range(3):
        sq.put(f"b{i}", {"i": i})
    tenant = sq.keyring("tenant")
    tenant.keys.initialize()
    tenant.put("t", {"i": 0})
    dest = tmp_path / "b1.db"
    m = create_sqlite_backup(sq, dest, keep=KEEP)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest_path(dest).stat().st_mode) == 0o600
    on_disk = json.loads(manifest_path(dest).read_text())
    assert on_disk["keys"] == {"default": {"1": 5, "2": 3}, "tenant": {"1": 1}} and on_disk["credentials"] == 9
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["expires_at"] == (clock.now + KEEP).isoformat()
    with sq.store.read() as tx:
        assert on_disk["store_id"] == tx.get_meta("store_id")
        assert tx.backup_versions("b1.db") == {"default": {1: 5, 2: 3}, "tenant": {1: 1}}
    assert [b.name for b in list_backups(sq.store)] == ["b1.db"] and m.name == "b1.db"
    copy = nc.open(f"sqlite:///{dest}", clock=clock)  # a self-contained store: not a WAL fragment
    try:
        assert copy.get("a4") == {"i": 4} and copy.get("b2") == {"i": 2}
        assert copy.audit.verify().ok
        with copy.store.read() as tx:
            assert tx.get_audit_head() == on_disk["audit_head"]
    finally:
        copy.close()
    assert [r.action for r in sq.audit.rows()][-1] == "backup.create"


def test_manifest_counts_versions_by_envelope_header_not_the_column(sq: nc.Vault, tmp_path: Path) -> None:
    sq.put("x", {"v": 1})
    sq.keys.rotate()
    sq.put("y", {"v": 2})
    with sqlite3.connect(sq.store.path) as conn:  # a database writer edits the column, not the envelope
        conn.execute("UPDATE credentials SET key_version = 2 WHERE id = 'x'")
    m = create_sqlite_backup(sq, tmp_path / "b.db", keep=KEEP)
    assert m.keys == {"default": {1: 1, 2: 1}}


def test_refuses_to_overwrite_and_leaves_nothing_behind_on_failure(sq: nc.Vault, tmp_path: Path) -> None:
    sq.put("x", {"v": 1})
    (tmp_path / "taken.db").write_bytes(b"precious")
    with pytest.raises(BackupError, match="already exists"):
        create_sqlite_backup(sq, tmp_path / "taken.db", keep=KEEP)
    assert (tmp_path / "taken.db").read_bytes() == b"precious"
    with pytest.raises(BackupError, match="does not exist"):
        create_sqlite_backup(sq, tmp_path / "no" / "b.db", keep=KEEP)
    create_sqlite_backup(sq, tmp_path / "b.db", keep=KEEP)
    with pytest.raises(BackupError, match="already registered"):
        create_sqlite_backup(sq, tmp_path / "other.db", keep=KEEP, name="b.db")
    assert not (tmp_path / "other.db").exists() and not manifest_path(tmp_path / "other.db").exists()
    assert [b.name for b in list_backups(sq.store)] == ["b.db"]


def test_online_copy_while_a_writer_commits(sq: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    writer = nc.open(sq.store.url, clock=clock)
    acked: list[int] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set() or i < 50:
            writer.put(f"w{i:05d}", {"i": i})
            acked.append(i)
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        while len(acked) < 20:
            stop.wait(0.01)
        m = create_sqlite_backup(sq, tmp_path / "hot.db", keep=KEEP)
    finally:
        stop.set()
        t.join()
        writer.close()
    assert 20 <= m.credentials <= len(acked)
    copy = nc.open(f"sqlite:///{tmp_path / 'hot.db'}", clock=clock)
    try:
        rows = list(copy.list())
        assert len(rows) == m.credentials
        # a consistent snapshot: a prefix of the acknowledged writes, every one readable
        assert sorted(r.id for r in rows) == [f"w{i:05d}" for i in range(m.credentials)]
        assert all(copy.get(r.id) == {"i": int(r.id[1:])} for r in rows)
        assert copy.audit.verify().ok
    finally:
        copy.close()


def test_a_backup_keeps_its_versions_until_it_expires(sq: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    for i in range(4):
        sq.put(f"c{i}", {"i": i})
    create_sqlite_backup(sq, tmp_path / "b.db", keep=KEEP)
    retire_v1(sq, clock)
    policy = UntilReEncrypted()
    assert cleanup(sq.keys, policy, clock.now, dry_run=True) == []
    assert cleanup(sq.keys, policy, clock.now) == []
    for force in (False, True):  # no flag skips the backup hold
        with pytest.raises(PolicyViolationError, match=r"kept: needed by backup b\.db until"):
            sq.keys.destroy(1, force_retention=force)
    assert sq.keys.version(1).status is KeyStatus.REVOKED
    [(kv, hold)] = held_versions(sq.store, "default", clock.now)
    assert kv.version == 1 and hold.backup == "b.db" and hold.until == clock.now - timedelta(hours=1, minutes=5) + KEEP
    findings = doctor_run(sq.store.url, clock=lambda: clock.now)
    assert any(f.check == "backups" and "v1 kept: needed by backup b.db until" in f.message for f in findings)
    clock.advance(KEEP)  # the backup expired: normal retention resumes
    assert held_versions(sq.store, "default", clock.now) == []
    assert [a.version for a in cleanup(sq.keys, policy, clock.now)] == [1]
    assert sq.keys.version(1).status is KeyStatus.DESTROYED
    assert any("expired" in f.message for f in doctor_run(sq.store.url, clock=lambda: clock.now))


def test_forget_releases_the_hold(sq: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    sq.put("c", {"i": 1})
    create_sqlite_backup(sq, tmp_path / "b.db", keep=KEEP)
    retire_v1(sq, clock)
    with pytest.raises(BackupError, match="no registered backup"):
        forget_backup(sq, "nope")
    forget_backup(sq, "b.db")
    assert list_backups(sq.store) == []
    assert sq.keys.destroy(1, retention=UntilReEncrypted()).status is KeyStatus.DESTROYED
    actions = [r.action for r in sq.audit.rows()]
    assert actions.count("backup.forget") == 1 and sq.audit.verify().ok


def test_the_newest_expiry_wins(sq: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    sq.put("c", {"i": 1})
    create_sqlite_backup(sq, tmp_path / "short.db", keep=timedelta(days=1))
    create_sqlite_backup(sq, tmp_path / "long.db", keep=timedelta(days=10))
    retire_v1(sq, clock)
    [(_, hold)] = held_versions(sq.store, "default", clock.now)
    assert hold.backup == "long.db"


def test_register_holds_every_version_that_existed_then(keep1_vault: nc.Vault, clock: FakeClock) -> None:
    """PostgreSQL-style: the copy is taken elsewhere; the store records what it may need."""
    vault = keep1_vault  # only the backup hold (not keep_versions) keeps v1 here
    vault.put("a", {"v": 1})
    taken = clock.now
    clock.advance(hours=1)
    vault.keys.rotate()
    vault.reencrypt()
    with pytest.raises(BackupError, match="future"):
        register_backup(vault, "pitr", taken_at=clock.now + timedelta(hours=1), keep=KEEP)
    m = register_backup(vault, "pitr-0100", taken_at=taken, keep=KEEP, location="s3://bucket/base")
    assert m.keys == {"default": {1: 0}}  # v2 did not exist when the copy was taken
    assert m.expires_at == taken + KEEP
    clock.advance(minutes=5)
    vault.keys.revoke(1)
    with pytest.raises(PolicyViolationError, match="needed by backup pitr-0100"):
        vault.keys.destroy(1)
    with pytest.raises(BackupError, match="already registered"):
        register_backup(vault, "pitr-0100", taken_at=taken, keep=KEEP)
    [b] = list_backups(vault.store)
    assert b.kind == "registered" and b.location == "s3://bucket/base"
    forget_backup(vault, "pitr-0100")
    clock.advance(seconds=10)  # the destroy floor
    assert vault.keys.destroy(1, retention=UntilReEncrypted()).status is KeyStatus.DESTROYED
    assert vault.audit.verify().ok


def test_create_refuses_postgres(vault: nc.Vault, tmp_path: Path) -> None:
    if vault.store.scheme == "sqlite":
        pytest.skip("the refusal is for PostgreSQL")
    with pytest.raises(BackupError, match="backup register"):
        create_sqlite_backup(vault, tmp_path / "x.db", keep=KEEP)


def test_backup_keep_config() -> None:
    assert KeyManagementConfig().backup.keep == timedelta(days=30)
    assert KeyManagementConfig.from_dict({"backup": {"keep": "7d"}}).backup.keep == timedelta(days=7)
    with pytest.raises(ConfigError, match="backup.keep"):
        KeyManagementConfig.from_dict({"backup": {"keep": "soon"}})
    with pytest.raises(ConfigError, match="backup.nope"):
        KeyManagementConfig.from_dict({"backup": {"nope": 1}})


def test_the_hold_is_checked_inside_the_destroy_transaction(vault: nc.Vault, clock: FakeClock) -> None:
    """A registration that commits while a destroy waits is seen by that destroy."""
    vault.put("c", {"i": 1})
    retire_v1(vault, clock)
    registering = threading.Event()
    outcome: list[BaseException | None] = []

    def destroy() -> None:
        registering.wait()
        try:
            vault.keys.destroy(1)
            outcome.append(None)
        except PolicyViolationError as exc:
            outcome.append(exc)

    t = threading.Thread(target=destroy)
    t.start()
    with vault.store.transaction() as tx:  # what register_backup does, held open
        tx.lock_keyring("default")
        tx.put_backup(BackupRecord("late", "registered", clock.now, clock.now + KEEP, clock.now, "", "{}"),
                      {"default": {1: 1}})
        registering.set()
        t.join(0.3)  # the destroy is now waiting on our lock (or has not started): either way it must see us
    t.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], PolicyViolationError), outcome
    assert "needed by backup late" in str(outcome[0])
    assert vault.keys.version(1).status is KeyStatus.REVOKED
