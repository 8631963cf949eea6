"""Failure rules of the database engine: a process killed between the phases of a rotation, PostgreSQL
stopped during a rotation, clock jumps.  No credential is lost and no user is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine, DatabaseUnavailableError
from nebula_credential.database.connections import LOCK_TTL
from nebula_credential.database.static import CLAIM_TTL

from .fixtures_dbengine import DbTarget, ScramCluster, clock_at_now, make_target
from .helpers import SRC, FakeClock

CHILD = Path(__file__).with_name("db_crash_child.py")


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def clock() -> FakeClock:
    return clock_at_now()  # type: ignore[no-any-return]


def _killed_at(store_url: str, operation: str, phase: str, name: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parents[1]}"}
    proc = subprocess.run([sys.executable, str(CHILD), store_url, operation, phase, name], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stdout + proc.stderr


def _users_like(target: DbTarget) -> set[str]:
    rows = target.admin(f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{target.prefix}%'")
    return {str(r[0]) for r in rows}


@pytest.mark.parametrize("strategy", ["plain", "alternating"])
@pytest.mark.parametrize("phase", ["claimed", "stored", "applied"])
def test_static_rotation_killed_between_phases(vault: nc.Vault, db_target: DbTarget, clock: FakeClock,
                                               store_url: str, phase: str, strategy: str) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    fields = {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"}
    if strategy == "alternating":
        fields.update(rotation_strategy="alternating", grace_period="10m")
    engine.write_static_role("app", fields)
    before = engine.static_creds("app")
    users = _users_like(db_target)
    _killed_at(store_url, "rotate", phase, "app")
    # the dead process's rotation lease runs out; the next operation settles what it left
    clock.advance(timedelta(seconds=CLAIM_TTL + 30))
    after = engine.static_creds("app")
    assert db_target.can_login(after["username"], after["password"]), "the stored credential works"
    state, _ = engine.static._state("app")
    assert state.pending is None
    if phase == "claimed":  # nothing stored, nothing sent: rolled back
        assert after["password"] == before["password"] and after["username"] == before["username"]
    else:  # the pending password was stored: finished
        assert after["password"] != before["password"]
        if strategy == "plain":
            assert not db_target.can_login(before["username"], before["password"])
        else:  # the previous user is in its grace period, and still works
            assert after["previous"]["username"] == before["username"]
            assert db_target.can_login(before["username"], before["password"])
    assert _users_like(db_target) == users, "no user left behind"
    engine.rotate_role("app")  # and the role rotates normally afterwards
    assert db_target.can_login(engine.static_creds("app")["username"], engine.static_creds("app")["password"])


@pytest.mark.parametrize("phase", ["stored", "applied"])
def test_root_rotation_killed_between_phases(vault: nc.Vault, db_target: DbTarget, store_url: str,
                                             phase: str, clock: FakeClock) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    _killed_at(store_url, "root", phase, "pg")
    record = engine.secrets.get("config/pg")
    assert record is not None and record.get("pending")  # the store knows both passwords
    engine.connections.plugin("pg").verify()  # the dead process's lock still holds: nothing settled
    assert (engine.secrets.get("config/pg") or {}).get("pending")
    clock.advance(timedelta(seconds=LOCK_TTL + 30))
    engine.connections.plugin("pg").verify()  # settles by logging in
    record = engine.secrets.get("config/pg")
    assert record is not None and not record.get("pending")
    assert db_target.can_login(db_target.root, record["password"])
    expected_changed = phase == "applied"
    assert (record["password"] != db_target.root_password) == expected_changed


@pytest.mark.parametrize("phase", ["leased", "created"])
def test_creds_killed_midway_leave_no_user_behind(vault: nc.Vault, db_target: DbTarget, clock: FakeClock,
                                                  store_url: str, phase: str) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_role("ro", {"db_name": "pg", "default_ttl": "1h", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]})
    _killed_at(store_url, "creds", phase, "ro")
    [key] = engine.leases.list("database/creds/ro/")
    lease_id = f"database/creds/ro/{key}"
    username = json.loads(engine.leases._row(lease_id).body)["username"]  # the cluster is shared: by name
    assert db_target.role_exists(username) == (phase == "created")
    clock.advance(timedelta(hours=1, minutes=2))  # the child's lease was issued on the real clock
    report = engine.leases.sweep()
    assert (report.revoked, report.failed) == (1, 0)
    assert not db_target.role_exists(username)
    assert engine.leases.list("database/creds/") == []


def test_postgres_stopped_during_rotation(vault: nc.Vault, private_scram_postgres: ScramCluster,
                                          clock: FakeClock) -> None:
    target = make_target(private_scram_postgres)
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": target.app_user, "rotation_period": "1h"})
    before = engine.static_creds("app")
    engine.static.on_phase = lambda phase: private_scram_postgres.stop("fast") if phase == "stored" else None
    try:
        with pytest.raises(DatabaseUnavailableError) as err:
            engine.rotate_role("app")
        assert before["password"] not in str(err.value) and target.root_password not in str(err.value)
        engine.static.on_phase = lambda _phase: None
        assert engine.static_creds("app") == before  # the old credential stays current
        view = engine.overview()[0]
        assert view["state"] == "failing" and view["failures"] == 1
        # the scheduler: due, PostgreSQL still down -> counted again, after the back-off
        clock.advance(timedelta(hours=1, seconds=1))
        assert [r.outcome for r in engine.run_due()] == ["failed"]
        assert [r.outcome for r in engine.run_due()] == ["not-due"]  # backing off
        events = [e for e in engine.vault.audit_events(limit=100) if e.action.endswith("rotate_failed")]
        assert len(events) == 2
    finally:
        private_scram_postgres.start()
    assert target.can_login(before["username"], before["password"])
    clock.advance(timedelta(minutes=5))
    assert [r.outcome for r in engine.run_due()] == ["rotated"]
    after = engine.static_creds("app")
    assert target.can_login(after["username"], after["password"])
    assert engine.overview()[0]["state"] == "ok"


def test_clock_jumps(vault: nc.Vault, db_target: DbTarget, clock: FakeClock) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"})
    clock.advance(timedelta(hours=10))  # forward by ten periods: one rotation, not ten
    assert [r.outcome for r in engine.run_due()] == ["rotated"]
    assert [r.outcome for r in engine.run_due()] == ["not-due"]
    assert engine.read_static_role("app")["ttl"] == 3600
    clock.advance(timedelta(hours=-5))  # back: no rotation, and a ttl never beyond the period
    assert [r.outcome for r in engine.run_due()] == ["not-due"]
    creds = engine.static_creds("app")
    assert 0 <= creds["ttl"] <= 3600
    assert db_target.can_login(creds["username"], creds["password"])
    clock.advance(timedelta(hours=6))  # forward again past the due time: rotates once
    assert [r.outcome for r in engine.run_due()] == ["rotated"]
    assert engine.static.overview_of("app")["rotations"] == 3


def test_a_root_rotation_in_progress_is_not_rolled_back_by_another_process(vault: nc.Vault,
                                                                            db_target: DbTarget) -> None:
    """Another instance using the connection while a rotation has stored its pending password but not yet
    sent it must not settle it: it would roll the pending password back, and the rotation would then give
    PostgreSQL a password the store no longer has."""
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    other = DatabaseEngine(vault, "database")  # another process's engine: another holder
    seen = []

    def meanwhile(phase: str) -> None:
        if phase == "stored":
            other.connections.plugin("pg").verify()  # works with the current (old) password
            seen.append((other.secrets.get("config/pg") or {}).get("pending") is not None)

    engine.connections.on_phase = meanwhile
    engine.rotate_root("pg")
    assert seen == [True]  # the pending password was left alone
    record = engine.secrets.get("config/pg")
    assert record is not None and db_target.can_login(db_target.root, record["password"])
    assert not db_target.can_login(db_target.root, db_target.root_password)
