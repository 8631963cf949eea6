"""The database is not trusted: an edited engine row or lease is refused, audited and named by doctor."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine
from nebula_credential.doctor import check_rows
from nebula_credential.exceptions import CorruptRecordError

from .fixtures_dbengine import DbTarget, clock_at_now
from .helpers import FakeClock


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def clock() -> FakeClock:
    return clock_at_now()  # type: ignore[no-any-return]


def _sql(store_url: str, sql: str, *params: object) -> int:
    with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
        return db.execute(sql, params).rowcount


def test_edited_role_and_lease_rows_are_refused(vault: nc.Vault, db_target: DbTarget, store_url: str,
                                                clock: FakeClock) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"})
    engine.write_role("ro", {"db_name": "pg", "default_ttl": "1h", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]})
    made, lease = engine.creds("ro")
    assert check_rows(vault.store, vault.provider)[0].severity == "ok"
    # a database writer points the static role at the root user, and the lease at the app user
    assert _sql(store_url, "UPDATE db_items SET body = replace(body, ?, ?) WHERE kind = 'static'",
                db_target.app_user, db_target.root) == 1
    assert _sql(store_url, "UPDATE secret_leases SET body = replace(body, ?, ?)",
                made["username"], db_target.app_user) == 1
    with pytest.raises(CorruptRecordError):
        engine.rotate_role("app")
    clock.advance(timedelta(hours=2))
    report = engine.leases.sweep()
    assert (report.revoked, report.failed) == (0, 1)  # refused: the app user is not dropped
    assert db_target.role_exists(db_target.app_user)
    assert db_target.can_login(db_target.root, db_target.root_password)
    actions = {e.action for e in vault.audit_events(limit=200)}
    assert {"server.row_rejected.db_items", "server.row_rejected.secret_leases"} <= actions
    [finding] = check_rows(vault.store, vault.provider)
    assert finding.severity == "error"
    assert "db_items database static 'app'" in finding.message and lease.lease_id in finding.message
    assert made["password"] not in finding.message


def test_doctor_counts_engine_rows(vault: nc.Vault, db_target: DbTarget, tmp_path: Path) -> None:
    engine = DatabaseEngine(vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    [finding] = check_rows(vault.store, vault.provider)
    assert finding.severity == "ok" and "database engine" in finding.message
