"""Issue 31 items 1 (part) and 5: the backup registry is explained; restore says what comes back.

Deleting the ``backups``/``backup_keys`` rows lifted every backup hold with
no alarm: a ``backup.create`` with no ``backup.forget`` passed ``audit
verify``.  Now the chain explains the registry as it explains
``key_versions``, and ``doctor`` names it.

Restore brought back tokens revoked after the backup, silently.  Now it
lists the tokens (by accessor) and backup holds that differ from the live
store before anything is replaced, and tokens the live store revoked since
the copy stay revoked (docs/backups.md).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import create_sqlite_backup, forget_backup, register_backup
from nebula_credential.doctor import run as doctor
from nebula_credential.restore import VerifyReport, restore_backup, verify_backup
from nebula_credential.server.tokens import TokenManager

from .helpers import FakeClock, cli_in_process

KEEP = timedelta(days=30)


def raw(vault: nc.Vault, sql: str, params: tuple[object, ...] = ()) -> None:
    """What a database writer (no key, no config) can do."""
    with vault.store.transaction() as tx:
        tx._exec(sql, params)  # type: ignore[attr-defined]


@pytest.fixture
def live(tmp_path: Path, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock)
    for i in range(3):
        v.put(f"c{i}", {"i": i})
    yield v
    v.close()


def test_create_register_forget_are_explained(live: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    register_backup(live, "pitr-1", taken_at=clock(), keep=KEEP)
    create_sqlite_backup(live, tmp_path / "c.db", keep=KEEP)
    forget_backup(live, "c.db")
    result = live.audit.verify()
    assert result.ok and result.unexplained == (), result.unexplained
    assert [f for f in doctor(live.store.url) if f.check == "backup-registry" and f.problem] == []


@pytest.mark.parametrize("table", ["backups", "backup_keys", "both"])
def test_a_hold_deleted_behind_the_chain_is_reported(live: nc.Vault, tmp_path: Path, table: str) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    if table in ("backups", "both"):
        raw(live, "DELETE FROM backups WHERE name = 'b.db'")
    if table in ("backup_keys", "both"):
        raw(live, "DELETE FROM backup_keys WHERE backup = 'b.db'")
    result = live.audit.verify()
    assert not result.ok
    assert any(line.startswith("backup b.db:") for line in result.unexplained), result.unexplained
    found = [f for f in doctor(live.store.url) if f.check == "backup-registry"]
    assert len(found) == 1 and found[0].problem and "b.db" in found[0].message


def test_a_row_no_event_made_and_edited_versions_are_reported(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    raw(live, "UPDATE backup_keys SET version = 7 WHERE backup = 'b.db'")
    raw(live, "INSERT INTO backups SELECT 'forged', kind, taken_at, expires_at, registered_at, location, manifest "
              "FROM backups WHERE name = 'b.db'")
    lines = live.audit.verify().unexplained
    assert any("backup forged: in the backup registry with no backup.create" in u for u in lines), lines
    assert any("backup b.db: holds default/v7 in backup_keys; the chain recorded default/v1" in u for u in lines)


def test_audit_verify_cli_fails_on_a_lifted_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    run("put", "a", "--value", '{"v": 1}')
    run("backup", "create", str(tmp_path / "b.db"))
    v = nc.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        raw(v, "DELETE FROM backups")
        raw(v, "DELETE FROM backup_keys")
    finally:
        v.close()
    res = run("audit", "verify", ok=False)
    assert res.returncode != 0 and "backup b.db" in res.stdout + res.stderr


# ---- restore says what comes back ------------------------------------------------------
def _tokens(live: nc.Vault, clock: FakeClock) -> TokenManager:
    return TokenManager(live.store, live.provider, clock=clock, cache_ttl=timedelta(0))


def _accessors(url: str) -> set[str]:
    v = nc.open(url)
    try:
        with v.store.read() as tx:
            return {t.accessor for t in tx.token_list()}
    finally:
        v.close()


def test_restore_lists_what_differs_and_keeps_revocations(live: nc.Vault, tmp_path: Path,
                                                          clock: FakeClock) -> None:
    tokens = _tokens(live, clock)
    _, kept = tokens.create(["app-ro"])
    _, revoked = tokens.create(["app-rw"])
    _, child = tokens.create(["app-rw"], parent=revoked)
    _, renewed = tokens.create(["app-ro"], ttl=timedelta(minutes=30))
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    tokens.revoke(revoked.accessor)  # and its child with it
    _, later = tokens.create(["app-ro"])
    clock.advance(minutes=1)
    tokens.renew(renewed)
    register_backup(live, "pitr-after", taken_at=clock(), keep=KEEP)
    forget_backup(live, "b.db")

    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert report.ok, report.problems
    changes = report.changes
    assert changes is not None and changes.carry_revocations
    assert changes.tokens_revoked_since == sorted([revoked.accessor, child.accessor])
    assert changes.tokens_created_since == [later.accessor]
    assert changes.tokens_changed == [renewed.accessor]
    assert changes.holds_lost == ["pitr-after"] and changes.holds_back == ["b.db"]
    assert report.to_json()["changes"]["tokens_revoked_since"] == changes.tokens_revoked_since

    seen: list[VerifyReport] = []
    live_path = Path(live.store.path)

    def before(r: VerifyReport) -> None:
        assert _accessors(f"sqlite:///{live_path}") >= {later.accessor}  # nothing replaced yet
        seen.append(r)

    _, aside = restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", live=live.store, replace=True,
                              before_replace=before)
    assert len(seen) == 1 and aside is not None
    restored = _accessors(f"sqlite:///{live_path}")
    assert restored == {kept.accessor, renewed.accessor}  # the revoked token and its child stay revoked
    v = nc.open(f"sqlite:///{live_path}")
    try:
        assert v.audit.verify().ok
        last = list(v.audit.rows())[-1]
        assert last.action == "backup.restore"
        assert sorted(json.loads(last.details)["revocations_carried"]) == changes.tokens_revoked_since
    finally:
        v.close()


def test_restore_of_another_store_carries_nothing(live: nc.Vault, tmp_path: Path, clock: FakeClock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = _tokens(live, clock)
    _, row = tokens.create(["app-ro"])
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(other_dir / "master.key"))
    other = nc.open(f"sqlite:///{other_dir / 'other.db'}", create=True, clock=clock)
    try:
        monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
        report = verify_backup(tmp_path / "b.db", live=other.store, key_dir=tmp_path)
    finally:
        other.close()
    assert report.ok and report.changes is not None and not report.changes.carry_revocations
    assert report.changes.tokens_revoked_since == [row.accessor]


def test_the_cli_lists_changes_before_it_replaces(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    run("put", "a", "--value", '{"v": 1}')
    v = nc.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        tokens = TokenManager(v.store, v.provider, cache_ttl=timedelta(0))
        _, row = tokens.create(["app-ro"])
    finally:
        v.close()
    run("backup", "create", str(tmp_path / "b.db"))
    v = nc.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        TokenManager(v.store, v.provider, cache_ttl=timedelta(0)).revoke(row.accessor)
    finally:
        v.close()
    run("backup", "forget", "b.db")
    res = run("backup", "restore", str(tmp_path / "b.db"), "--to", f"sqlite:///{tmp_path / 'c.db'}", "--replace")
    assert f"tokens revoked since the copy, which stay revoked (deleted from the restored store): {row.accessor}" \
        in res.stderr
    res = run("--json", "backup", "verify", str(tmp_path / "b.db"))
    assert json.loads(res.stdout)["changes"]["tokens_revoked_since"] == [row.accessor]


def test_a_copy_made_before_holds_were_audited_still_restores(live: nc.Vault, tmp_path: Path,
                                                             clock: FakeClock) -> None:
    """Older versions registered the provisional hold with no event: the copy holds that one row."""
    from nebula_credential.backups import KIND_COPY, Manifest

    hold = Manifest("old.db", "sid", clock(), clock() + KEEP, 0, {"default": {1: 0}}, None, KIND_COPY, "")
    with live.store.transaction() as tx:
        tx.put_backup(hold.record(clock()), {"default": {1: 0}})  # as the old create did: no event
    live.store.copy_to(tmp_path / "old.db")  # the old copy: made while that hold stood
    with live.store.transaction() as tx:
        tx.delete_backup("old.db")
    report = verify_backup(tmp_path / "old.db", accept_unauthenticated=True)  # no signed manifest then
    assert report.ok, report.problems
    assert report.unaudited_holds == ["old.db"]
    target = tmp_path / "restored.db"
    restore_backup(tmp_path / "old.db", f"sqlite:///{target}", accept_unauthenticated=True)
    v = nc.open(f"sqlite:///{target}")
    try:
        assert v.audit.verify().ok, v.audit.verify().unexplained
    finally:
        v.close()
    # any other row no event made still fails
    with live.store.transaction() as tx:
        tx.put_backup(dataclasses.replace(hold.record(clock()), name="forged",
                                          manifest='{"schema_version":1}'), {"default": {1: 0}})
    live.store.copy_to(tmp_path / "forged.db")
    report = verify_backup(tmp_path / "forged.db", accept_unauthenticated=True)
    assert not report.ok and any("backup forged" in p for p in report.problems), report.problems
