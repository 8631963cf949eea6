"""Dynamic database credentials and their leases, against a PostgreSQL that checks passwords."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine, DatabaseNotFoundError
from nebula_credential.leases import LeaseInputError, LeaseNotFoundError, Leases

from .fixtures_dbengine import APP_DB, DbTarget, clock_at_now
from .helpers import FakeClock


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def clock() -> FakeClock:
    return clock_at_now()  # type: ignore[no-any-return]


@pytest.fixture
def engine(vault: nc.Vault, db_target: DbTarget) -> DatabaseEngine:
    eng = DatabaseEngine(vault, "database")
    eng.write_connection("pg", db_target.connection_fields())
    s = db_target.schema
    eng.write_role("readonly", {
        "db_name": "pg", "default_ttl": "1h", "max_ttl": "2h",
        "creation_statements": [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            f'GRANT USAGE ON SCHEMA "{s}" TO "{{{{name}}}}";',
            f'GRANT SELECT ON "{s}".items TO "{{{{name}}}}";',
        ],
    })
    return eng


def _connect(target: DbTarget, data: dict[str, str]) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host="127.0.0.1", port=target.cluster.port, user=data["username"],
                           password=data["password"], dbname=APP_DB, connect_timeout=5)


def test_creds_grant_exactly_the_privileges_then_revoke_leaves_no_user_no_session(
        engine: DatabaseEngine, db_target: DbTarget) -> None:
    data, lease = engine.creds("readonly", token_accessor="acc1")
    assert lease.lease_id.startswith("database/creds/readonly/") and lease.renewable
    assert lease.expire_time - lease.issue_time == 3600
    s = db_target.schema
    conn = _connect(db_target, data)
    assert conn.execute(f'SELECT count(*) FROM "{s}".items').fetchone() == (2,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"INSERT INTO \"{s}\".items VALUES (3, 'x')")
    conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f'SELECT * FROM "{s}".secret_things')
    conn.rollback()
    assert db_target.sessions_of(data["username"]) == 1
    leases = engine.leases
    assert leases.lookup(lease.lease_id).token_accessor == "acc1"
    assert leases.list("database/creds/") == ["readonly/"]
    assert leases.list("database/creds/readonly/") == [lease.lease_id.rsplit("/", 1)[1]]
    leases.revoke(lease.lease_id)
    assert not db_target.role_exists(data["username"])
    assert db_target.sessions_of(data["username"]) == 0
    assert not db_target.can_login(data["username"], data["password"])
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    leases.revoke(lease.lease_id)  # idempotent
    with pytest.raises(LeaseNotFoundError):
        leases.lookup(lease.lease_id)
    text = repr(engine.vault.audit_events(limit=100))
    assert "database.creds" in text and "lease.revoke" in text and data["password"] not in text


def test_renew_without_increment_grants_the_default_ttl_again(engine: DatabaseEngine, clock: FakeClock) -> None:
    """As Vault: the role's default_ttl, not the previous renewal's; within max_ttl and the token's life."""
    _, lease = engine.creds("readonly")
    assert lease.last_renewal is None and engine.leases.lookup(lease.lease_id).last_renewal is None
    clock.advance(timedelta(seconds=10))
    short = engine.leases.renew(lease.lease_id, 600)
    assert round(short.expire_time - short.issue_time) == 610
    clock.advance(timedelta(seconds=10))
    again = engine.leases.renew(lease.lease_id)
    now = clock().timestamp()
    assert round(again.expire_time - now) == 3600
    assert engine.leases.lookup(lease.lease_id).last_renewal == pytest.approx(now)
    capped = engine.leases.renew(lease.lease_id, not_after=now + 300)  # the creating token ends sooner
    assert round(capped.expire_time - now) == 300
    for _ in range(2):
        engine.leases.renew(lease.lease_id)
        clock.advance(timedelta(minutes=59))
    assert engine.leases.renew(lease.lease_id).expire_time == lease.max_expire_time  # max_ttl still caps


def test_expiry_sweep_revokes_once_and_renew_is_clipped(engine: DatabaseEngine, db_target: DbTarget,
                                                         clock: FakeClock, vault: nc.Vault) -> None:
    data, lease = engine.creds("readonly")
    session = _connect(db_target, data)  # a session open when the lease expires
    renewed = engine.leases.renew(lease.lease_id, 7200)
    assert renewed.expire_time == lease.max_expire_time  # clipped to max_ttl
    other = Leases(vault, {"database": engine.leases.handlers["database"]})
    assert engine.leases.sweep().revoked == 0
    clock.advance(timedelta(hours=2, seconds=1))
    with pytest.raises(LeaseInputError):
        engine.leases.renew(lease.lease_id, 60)
    first = other.sweep()
    second = engine.leases.sweep()
    assert (first.revoked, second.revoked) == (1, 0)
    assert not db_target.role_exists(data["username"])
    assert db_target.sessions_of(data["username"]) == 0
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    assert engine.leases.tidy() == 1


def test_revoke_for_token_and_prefix(engine: DatabaseEngine, db_target: DbTarget) -> None:
    made = [engine.creds("readonly", token_accessor="tok")[0] for _ in range(3)]
    extra, _ = engine.creds("readonly", token_accessor="other")
    assert engine.leases.revoke_for_token("tok") == 3
    assert not any(db_target.role_exists(d["username"]) for d in made)
    assert db_target.role_exists(extra["username"])
    assert engine.leases.revoke_prefix("database/creds/readonly") == 1
    assert not db_target.role_exists(extra["username"])


def test_token_life_clips_the_lease(engine: DatabaseEngine, vault: nc.Vault) -> None:
    now = vault.clock().timestamp()
    _, lease = engine.creds("readonly", token_expires_at=now + 60)
    assert lease.expire_time == now + 60 and lease.max_expire_time == now + 60
    engine.leases.revoke(lease.lease_id)


def test_unknown_role(engine: DatabaseEngine) -> None:
    with pytest.raises(DatabaseNotFoundError, match="unknown role"):
        engine.creds("nope")
    assert engine.list_roles() == ["readonly"]
    assert engine.read_role("readonly")["default_ttl"] == 3600


def test_failed_revocation_is_retried_with_backoff_never_forgotten(engine: DatabaseEngine, db_target: DbTarget,
                                                                   clock: FakeClock) -> None:
    gate = f'"{db_target.schema}".revoke_gate'
    engine.write_role("gated", {"db_name": "pg", "default_ttl": "1h", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"],
        "revocation_statements": [f"DELETE FROM {gate}", "DROP ROLE IF EXISTS \"{{name}}\""]})
    data, lease = engine.creds("gated")
    with pytest.raises(nc.NebulaCredentialError) as err:
        engine.leases.revoke(lease.lease_id)
    assert data["password"] not in str(err.value)
    assert engine.leases.counts()["failing"] == 1
    assert engine.leases.lookup(lease.lease_id).attempts == 1
    assert engine.leases.sweep().revoked == 0  # backing off
    clock.advance(timedelta(seconds=6))
    report = engine.leases.sweep()
    assert (report.revoked, report.failed) == (0, 1)  # retried, still failing, still queued
    assert engine.leases.lookup(lease.lease_id).attempts == 2
    db_target.admin(f"CREATE TABLE {gate} (id int)")
    clock.advance(timedelta(seconds=11))
    assert engine.leases.sweep().revoked == 1
    assert not db_target.role_exists(data["username"])
    assert engine.leases.counts() == {"active": 0, "failing": 0, "overdue": 0}


def test_purge_revokes_every_lease_and_forgets_the_mount(engine: DatabaseEngine, db_target: DbTarget,
                                                         vault: nc.Vault) -> None:
    made = [engine.creds("readonly")[0]["username"] for _ in range(2)]
    assert engine.purge() == 2
    assert not any(db_target.role_exists(u) for u in made)
    fresh = DatabaseEngine(vault, "database")
    assert fresh.list_connections() == [] and fresh.list_roles() == []
    assert fresh.secrets.get("config/pg") is None
