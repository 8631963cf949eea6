"""A throwaway PostgreSQL 15 cluster for the test session.

The cluster is created with ``initdb`` in a temp folder, started with
``pg_ctl`` on a free loopback port and stopped when the session ends; one
cluster serves the session, shared by the xdist workers (tests/shared_service.py).
Test files that stop, restart or terminate the server, or count what happens
cluster-wide (locks, waiting sessions), take ``private_postgres_cluster``
instead: the worker's own cluster, as before, so no other worker sees it.  Each
test gets its own schema in one database (``options=-csearch_path=...`` in
the URL), which is far cheaper than a database per test and just as
isolated: every statement the store issues is unqualified.

If the server cannot be started the tests that need it fail with the reason;
they never skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

from .helpers import free_port
from .shared_service import register_stopper, shared

PG_BIN = Path(os.environ.get("NEBULA_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "nebula_test"


class PostgresCluster:
    """A running throwaway cluster: URLs for tests, restart/terminate for failure tests."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = port or free_port()
        self.user = "postgres"
        self._as_postgres = os.geteuid() == 0
        self._schemas = itertools.count(1)

    @classmethod
    def attach(cls, record: dict[str, Any]) -> PostgresCluster:
        """The cluster another worker started (its :meth:`record`)."""
        cluster = cls(Path(record["root"]), int(record["port"]))
        cluster.user = str(record["user"])
        return cluster

    def record(self) -> dict[str, Any]:
        return {"kind": "postgres", "root": str(self.root), "port": self.port, "user": self.user}

    # ---- process control -------------------------------------------------
    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def _checked(self, what: str, *argv: str) -> None:
        proc = self._run(*argv)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL {what} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{log}"
            )

    def init(self) -> None:
        initdb = PG_BIN / "initdb"
        if not initdb.exists():
            raise RuntimeError(
                f"{initdb} not found: install postgresql-15 (scripts/ensure-system-deps.sh)"
            )
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        else:
            self.user = os.environ.get("USER") or "postgres"
        self._checked(
            "initdb", str(initdb), "-D", str(self.data), "-A", "trust", "-U", self.user,
            "--no-sync", "-E", "UTF8",
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            "-c shared_buffers=32MB"
        )
        self._checked(
            "start", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", opts, "-w", "-t", "60", "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: every session is terminated) and start again on the same port."""
        self.stop("fast")
        self.start()

    # ---- URLs and admin ----------------------------------------------------
    def url(self, database: str = DATABASE, *, schema: str | None = None) -> str:
        base = f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"
        if schema is None:
            return base
        return base + "?options=" + quote(f"-csearch_path={schema}", safe="")

    def admin(self, sql: str, database: str = DATABASE) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(sql)
            return list(cur.fetchall()) if cur.description else []

    def new_schema(self) -> str:
        name = f"t{os.getpid()}_{next(self._schemas)}"
        self.admin(f'CREATE SCHEMA "{name}"')
        return name

    def terminate_backends(self, application_name: str | None = "nebula-credential") -> int:
        """pg_terminate_backend every client session but this one (default: the store's)."""
        where = "pid <> pg_backend_pid() AND backend_type = 'client backend'"
        if application_name is not None:
            where += f" AND application_name = '{application_name}'"
        rows = self.admin(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {where}"
        )
        return int(str(rows[0][0]))


C = TypeVar("C", bound=PostgresCluster)


def start_cluster(cluster: C, database: str, what: str) -> C:
    """initdb, start, create ``database``; fails the calling test with the reason (``what``: which cluster)."""
    try:
        cluster.init()
        cluster.start()
        cluster.admin(f"CREATE DATABASE {database}", database="postgres")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        stop_cluster(cluster)
        pytest.fail(f"could not start the {what} PostgreSQL cluster: {exc}", pytrace=False)
    return cluster


def _start_cluster() -> PostgresCluster:
    return start_cluster(PostgresCluster(Path(tempfile.mkdtemp(prefix="nebula-pg-"))), DATABASE, "throwaway")


def stop_cluster(cluster: PostgresCluster) -> None:
    if cluster.data.joinpath("postmaster.pid").exists():
        cluster.stop("immediate")
    shutil.rmtree(cluster.root, ignore_errors=True)


register_stopper("postgres", lambda record: stop_cluster(PostgresCluster.attach(record)))


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    """The session's cluster, shared by the xdist workers: never stop, restart or
    terminate it from a test (take ``private_postgres_cluster`` for that)."""
    record = shared("postgres", lambda _folder: _start_cluster().record())
    return PostgresCluster.attach(record)


@pytest.fixture(scope="session")
def private_postgres_cluster() -> Iterator[PostgresCluster]:
    """This worker's own cluster, for tests that stop, restart or terminate it, or that
    count locks and sessions cluster-wide.  A test file opts in by overriding
    ``postgres_cluster`` with it."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
def postgres_store_url_factory(postgres_cluster: PostgresCluster) -> Callable[[], str]:
    """Returns a callable giving the URL of a fresh, empty store (its own schema)."""

    def make() -> str:
        return postgres_cluster.url(schema=postgres_cluster.new_schema())

    return make
