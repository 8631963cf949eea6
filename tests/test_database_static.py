"""The database engine's connections and static roles against a PostgreSQL that checks passwords
(on both store kinds: the engine's rows and envelopes are store semantics)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine, DatabaseInputError, DatabaseNotFoundError

from .fixtures_dbengine import DbTarget, clock_at_now
from .helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return clock_at_now()  # type: ignore[no-any-return]


@pytest.fixture
def engine(vault: nc.Vault) -> DatabaseEngine:
    return DatabaseEngine(vault, "database")


def test_connection_verify_and_read_never_returns_the_password(engine: DatabaseEngine, db_target: DbTarget) -> None:
    warnings = engine.write_connection("pg", db_target.connection_fields())
    assert warnings == []
    shape = engine.read_connection("pg")
    assert shape["plugin_name"] == "postgresql-database-plugin"
    assert shape["connection_details"]["username"] == db_target.root
    assert db_target.root_password not in repr(shape)
    assert engine.list_connections() == ["pg"]
    with pytest.raises(nc.NebulaCredentialError) as err:
        engine.write_connection("bad", db_target.connection_fields(password="wrong-password"))
    assert "wrong-password" not in str(err.value)
    assert engine.list_connections() == ["pg"]
    with pytest.raises(DatabaseInputError):
        engine.write_connection("lit", db_target.connection_fields(
            connection_url=f"postgresql://x:secret@127.0.0.1:{db_target.cluster.port}/apps"))


def test_rotate_root(engine: DatabaseEngine, db_target: DbTarget) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    engine.rotate_root("pg")
    assert not db_target.can_login(db_target.root, db_target.root_password)
    stored = engine.secrets.get("config/pg")
    assert stored is not None and set(stored) == {"password", "gen"}
    assert db_target.can_login(db_target.root, stored["password"])
    assert stored["password"] not in repr(engine.read_connection("pg"))
    # only the new password is kept: no older version of the record holds the old one
    versions = engine.vault.versions("config/pg")
    assert len([v for v in versions.versions if not v.destroyed]) <= 1
    engine.rotate_root("pg")  # and again, with the stored password
    assert not db_target.can_login(db_target.root, stored["password"])


def test_static_plain_rotation(engine: DatabaseEngine, db_target: DbTarget, clock: FakeClock) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"})
    creds = engine.static_creds("app")
    assert creds["username"] == db_target.app_user
    assert creds["ttl"] == 3600 and creds["rotation_period"] == 3600
    assert db_target.can_login(db_target.app_user, creds["password"])
    assert not db_target.can_login(db_target.app_user, db_target.app_password)
    engine.rotate_role("app")
    again = engine.static_creds("app")
    assert again["password"] != creds["password"]
    assert db_target.can_login(db_target.app_user, again["password"])
    assert not db_target.can_login(db_target.app_user, creds["password"])
    # the scheduler: not due yet, then due once after the period
    assert [r.outcome for r in engine.run_due()] == ["not-due"]
    clock.advance(timedelta(hours=1, seconds=1))
    assert [r.outcome for r in engine.run_due()] == ["rotated"]
    assert [r.outcome for r in engine.run_due()] == ["not-due"]
    third = engine.static_creds("app")
    assert db_target.can_login(db_target.app_user, third["password"])
    read = engine.read_static_role("app")
    assert read["username"] == db_target.app_user and "password" not in read
    assert [e["state"] for e in engine.static_timeline("app")] == ["retired", "retired", "current"]


def test_static_role_errors(engine: DatabaseEngine, db_target: DbTarget) -> None:
    engine.write_connection("pg", db_target.connection_fields(allowed_roles=["only"]))
    with pytest.raises(DatabaseInputError, match='^"app" is not an allowed role$'):  # Vault's words
        engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": 60})
    with pytest.raises(DatabaseInputError, match="rotation_period"):
        engine.write_static_role("only", {"db_name": "pg", "username": db_target.app_user, "rotation_period": 1})
    with pytest.raises(DatabaseNotFoundError):
        engine.read_static_role("nope")
    with pytest.raises(DatabaseNotFoundError):
        engine.write_static_role("only", {"db_name": "missing", "username": "x", "rotation_period": 60})


def test_alternating_rotation(engine: DatabaseEngine, db_target: DbTarget, clock: FakeClock) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h",
                                     "rotation_strategy": "alternating", "grace_period": "10m"})
    b = f"{db_target.app_user}_b"
    first = engine.static_creds("app")
    assert first["username"] == db_target.app_user and "previous" not in first
    assert db_target.role_exists(b)
    engine.rotate_role("app")
    second = engine.static_creds("app")
    assert second["username"] == b
    assert second["previous"]["username"] == db_target.app_user
    # both work during the grace period, and b has a's grants
    assert db_target.can_login(db_target.app_user, first["password"])
    assert db_target.can_login(b, second["password"])
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=db_target.cluster.port, user=b, password=second["password"],
                         dbname="apps") as conn:
        assert conn.execute(f'SELECT count(*) FROM "{db_target.schema}".items').fetchone() == (2,)
    clock.advance(timedelta(minutes=11))
    assert [r.outcome for r in engine.run_due()] == ["retired"]
    assert not db_target.can_login(db_target.app_user, first["password"])
    assert db_target.can_login(b, second["password"])
    assert "previous" not in engine.static_creds("app")
    states = [(e["username"], e["state"]) for e in engine.static_timeline("app")]
    assert states == [(db_target.app_user, "retired"), (b, "current")]


def test_secrets_stay_out_of_audit(engine: DatabaseEngine, db_target: DbTarget, tmp_path: Path) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": 60})
    creds = engine.static_creds("app")
    events = engine.vault.audit_events(limit=200)
    text = repr(events)
    assert "database.static_role.rotate" in text
    assert creds["password"] not in text and db_target.root_password not in text
    assert creds["password"] not in repr(engine)


def test_one_rotation_per_due_time_across_instances(vault: nc.Vault, db_target: DbTarget, clock: FakeClock) -> None:
    import threading

    first = DatabaseEngine(vault, "database")
    first.write_connection("pg", db_target.connection_fields())
    first.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"})
    clock.advance(timedelta(hours=1, seconds=1))
    engines = [DatabaseEngine(vault, "database") for _ in range(3)]  # three instances, three holders
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def run(engine: DatabaseEngine) -> None:
        barrier.wait()
        outcomes.extend(r.outcome for r in engine.run_due())

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("rotated") == 1 and set(outcomes) <= {"rotated", "busy", "not-due"}
    assert first.static.overview_of("app")["rotations"] == 2
    creds = first.static_creds("app")
    assert db_target.can_login(creds["username"], creds["password"])


def test_rotation_schedule_role(engine: DatabaseEngine, db_target: DbTarget) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user,
                                     "rotation_schedule": "0 3 * * *", "rotation_timezone": "Europe/Berlin",
                                     "rotation_window": "1h"})
    read = engine.read_static_role("app")
    assert read["rotation_schedule"] == "0 3 * * *" and read["rotation_window"] == 3600
    assert "rotation_period" not in read and 0 < read["ttl"] <= 86400
    with pytest.raises(DatabaseInputError, match="mutually exclusive"):
        engine.write_static_role("app", {"rotation_period": 60, "rotation_schedule": "0 3 * * *"})


def test_a_static_role_whose_first_rotation_fails_is_not_created(engine: DatabaseEngine, db_target: DbTarget) -> None:
    engine.write_connection("pg", db_target.connection_fields())
    with pytest.raises(nc.NebulaCredentialError):
        engine.write_static_role("ghost", {"db_name": "pg", "username": "no_such_user", "rotation_period": 60})
    assert engine.list_static_roles() == []
    with pytest.raises(DatabaseInputError, match="does not exist"):
        engine.write_static_role("ghost", {"db_name": "pg", "username": "no_such_user", "rotation_period": 60,
                                           "rotation_strategy": "alternating", "grace_period": 10})
    assert engine.list_static_roles() == []


def test_static_and_dynamic_roles_may_not_share_a_name(engine: DatabaseEngine, db_target: DbTarget) -> None:
    """As Vault, both ways: one name is one kind of credentials."""
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_role("dyn", {"db_name": "pg", "creation_statements": ['CREATE ROLE "{{name}}"']})
    with pytest.raises(DatabaseInputError, match="^Role and Static Role names must be unique$"):
        engine.write_static_role("dyn", {"db_name": "pg", "username": db_target.app_user, "rotation_period": 60})
    assert engine.list_static_roles() == []
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": 60})
    with pytest.raises(DatabaseInputError, match="^Role and Static Role names must be unique$"):
        engine.write_role("app", {"db_name": "pg", "creation_statements": ['CREATE ROLE "{{name}}"']})
    assert engine.list_roles() == ["dyn"]
    engine.write_role("dyn", {"default_ttl": 60})  # an update of the same kind is no clash


def test_maintain_rotates_due_static_roles_and_sweeps_leases(engine: DatabaseEngine, db_target: DbTarget,
                                                              clock: FakeClock) -> None:
    from nebula_credential.maintenance import maintain

    engine.write_connection("pg", db_target.connection_fields())
    engine.write_static_role("app", {"db_name": "pg", "username": db_target.app_user, "rotation_period": "1h"})
    engine.write_role("ro", {"db_name": "pg", "default_ttl": "10m", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]})
    made, _ = engine.creds("ro")
    clock.advance(timedelta(hours=1, seconds=1))
    report = maintain(engine.vault)
    assert report.database is not None
    entry = report.database["database"]
    assert [r["outcome"] for r in entry["rotations"]] == ["rotated"]
    assert entry["leases"]["revoked"] == 1 and not db_target.role_exists(made["username"])
    assert any("static role app rotated" in line for line in report.actions())
    assert maintain(engine.vault).database == {"database": {"rotations": [], "leases": {
        "revoked": 0, "failed": 0, "lost_races": 0}}}
