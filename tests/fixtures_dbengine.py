"""A PostgreSQL that checks passwords, for the database secrets engine's tests.

``initdb --auth-local=trust --auth-host=scram-sha-256`` (DESIGN.md's recipe):
the Unix socket logs in anyone (the tests' administration), TCP on 127.0.0.1
needs the real password, so a rotated password is really tested.  One
cluster per session, shared by the xdist workers (tests/shared_service.py);
each test gets its own schema and role names (:class:`DbTarget`), so tests
never see each other's users.  Tests that stop the server take
``private_scram_postgres`` instead.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .fixtures_postgres import PG_BIN, PostgresCluster, start_cluster, stop_cluster
from .shared_service import register_stopper, shared

APP_DB = "apps"
_names = itertools.count(1)


class ScramCluster(PostgresCluster):
    """A cluster whose TCP logins need a password (scram-sha-256); admin over the Unix socket."""

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        else:
            self.user = os.environ.get("USER") or "postgres"
        self._checked("initdb", str(PG_BIN / "initdb"), "-D", str(self.data), "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-U", self.user, "--no-sync", "-E", "UTF8")

    def record(self) -> dict[str, Any]:
        return {**super().record(), "kind": "postgres-scram"}

    def admin(self, sql: str, database: str = APP_DB) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(host=str(self.root), port=self.port, user=self.user, dbname=database,
                             autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[call-overload]
            return list(cur.fetchall()) if cur.description else []

    def tcp_url(self, database: str = APP_DB) -> str:
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/{database}"


def _start() -> ScramCluster:
    cluster = ScramCluster(Path(tempfile.mkdtemp(prefix="nebula-pg-scram-")))
    return start_cluster(cluster, APP_DB, "password-checking")


def _attach(record: dict[str, Any]) -> ScramCluster:
    cluster = ScramCluster(Path(record["root"]), int(record["port"]))
    cluster.user = str(record["user"])
    return cluster


register_stopper("postgres-scram", lambda record: stop_cluster(_attach(record)))


@pytest.fixture(scope="session")
def scram_postgres() -> ScramCluster:
    """The session's password-checking cluster (never stop it from a test)."""
    return _attach(shared("postgres-scram", lambda _folder: _start().record()))


@pytest.fixture(scope="session")
def private_scram_postgres() -> Iterator[ScramCluster]:
    """This worker's own password-checking cluster, for tests that stop or restart it."""
    cluster = _start()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@dataclass
class DbTarget:
    """One test's corner of the cluster: a superuser "root" with a password, a schema with a table,
    a static application user owning nothing but granted on the table, and name helpers."""

    cluster: ScramCluster
    prefix: str
    root: str
    root_password: str
    schema: str
    app_user: str
    app_password: str

    @property
    def url(self) -> str:
        return self.cluster.tcp_url()

    def admin(self, sql: str) -> list[tuple[object, ...]]:
        return self.cluster.admin(sql)

    def can_login(self, user: str, password: str | None) -> bool:
        import psycopg

        if not password:
            return False
        try:
            with psycopg.connect(host="127.0.0.1", port=self.cluster.port, user=user, password=password,
                                 dbname=APP_DB, connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def role_exists(self, user: str) -> bool:
        return bool(self.admin(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"))

    def sessions_of(self, user: str) -> int:
        return int(str(self.admin(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")[0][0]))

    def connection_fields(self, **extra: Any) -> dict[str, Any]:
        return {"plugin_name": "postgresql-database-plugin", "connection_url": self.url, "username": self.root,
                "password": self.root_password, "allowed_roles": ["*"], **extra}


def make_target(cluster: ScramCluster) -> DbTarget:
    prefix = f"t{os.getpid()}x{next(_names)}"
    root, app = f"{prefix}_root", f"{prefix}_app"
    root_pw, app_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    schema = f"{prefix}_s"
    cluster.admin(f"CREATE ROLE \"{root}\" WITH LOGIN SUPERUSER PASSWORD '{root_pw}'")
    cluster.admin(f"CREATE ROLE \"{app}\" WITH LOGIN PASSWORD '{app_pw}'")
    cluster.admin(f'CREATE SCHEMA "{schema}"')
    cluster.admin(f'CREATE TABLE "{schema}".items (id int PRIMARY KEY, name text)')
    cluster.admin(f"INSERT INTO \"{schema}\".items VALUES (1, 'one'), (2, 'two')")
    cluster.admin(f'CREATE TABLE "{schema}".secret_things (id int)')
    cluster.admin(f'GRANT USAGE ON SCHEMA "{schema}" TO "{app}"')
    cluster.admin(f'GRANT SELECT, INSERT ON "{schema}".items TO "{app}"')
    return DbTarget(cluster, prefix, root, root_pw, schema, app, app_pw)


@pytest.fixture
def db_target(scram_postgres: ScramCluster) -> DbTarget:
    return make_target(scram_postgres)



def clock_at_now() -> Any:
    """A fake clock that starts at the real time: PostgreSQL compares VALID UNTIL with its own clock.
    A test module of the engine overrides ``clock`` with it."""
    from datetime import UTC, datetime

    from .helpers import FakeClock

    return FakeClock(datetime.now(UTC).replace(microsecond=0))
