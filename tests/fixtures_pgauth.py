"""A PostgreSQL 15 cluster that checks passwords, for the database secrets engine's tests.

The store's cluster (``fixtures_postgres``) trusts every login, so a rotated
password would prove nothing.  This one is made with ``initdb
--auth-local=trust --auth-host=scram-sha-256``: over the Unix socket the
tests administer it without a password, over TCP on 127.0.0.1 every login --
the engine's, OpenBao's, an application's -- needs the real one.  The
superuser's password is set once over the socket.  One cluster serves the
session, shared by the xdist workers (tests/shared_service.py); each test
takes a database of its own (:meth:`PasswordCluster.new_database`), and every
role a test creates carries its own prefix, since roles are cluster-wide.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from .fixtures_postgres import PG_BIN
from .helpers import free_port
from .shared_service import register_stopper, shared


@dataclass
class PasswordCluster:
    root: Path
    port: int
    superuser: str
    password: str
    _names: Any = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def record(self) -> dict[str, Any]:
        return {"kind": "pgauth", "root": str(self.root), "port": self.port, "superuser": self.superuser,
                "password": self.password}

    @classmethod
    def attach(cls, record: dict[str, Any]) -> PasswordCluster:
        return cls(Path(record["root"]), int(record["port"]), str(record["superuser"]), str(record["password"]))

    def url(self, user: str | None = None, password: str | None = None, database: str = "postgres") -> str:
        """A TCP URL (password checked); the superuser's by default."""
        user = user or self.superuser
        password = self.password if password is None else password
        return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/"
                f"{database}?sslmode=disable")

    def template_url(self, database: str) -> str:
        """Vault's ``connection_url`` with ``{{username}}``/``{{password}}`` templates."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def admin(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser over the Unix socket (no password: trust)."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.superuser, dbname=database,
                             autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def can_login(self, user: str, password: str, database: str = "postgres") -> bool:
        """Whether ``user``/``password`` logs in over TCP right now."""
        import psycopg

        try:
            with psycopg.connect(self.url(user, password, database), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def new_database(self) -> str:
        name = f"db{os.getpid()}_{next(self._names)}_{secrets.token_hex(3)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def roles(self, prefix: str) -> list[str]:
        rows = self.admin(f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{prefix}%' ORDER BY rolname")
        return [str(r[0]) for r in rows]


def _run(argv: list[str], *, as_postgres: bool) -> subprocess.CompletedProcess[str]:
    cmd = ["runuser", "-u", "postgres", "--", *argv] if as_postgres else argv
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _start(folder: Path) -> dict[str, Any]:
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="nebula-pgauth-"))
    superuser = "postgres" if as_postgres else (os.environ.get("USER") or "postgres")
    cluster = PasswordCluster(root, free_port(), superuser, secrets.token_urlsafe(18))
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    steps = [
        [str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", superuser, "--auth-local=trust",
         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"],
        [str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), "-l", str(root / "server.log"), "-o",
         f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
         "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB", "-w", "-t", "60", "start"],
    ]
    for argv in steps:
        proc = _run(argv, as_postgres=as_postgres)
        if proc.returncode != 0:
            _stop(cluster.record())
            pytest.fail(f"password-checking PostgreSQL: {argv[0]} failed: {proc.stderr.strip()}", pytrace=False)
    cluster.admin(f"ALTER ROLE \"{superuser}\" PASSWORD '{cluster.password}'")
    return cluster.record()


def _stop(record: dict[str, Any]) -> None:
    root = Path(record["root"])
    if (root / "data" / "postmaster.pid").exists():
        _run([str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"],
             as_postgres=os.geteuid() == 0)
    shutil.rmtree(root, ignore_errors=True)


register_stopper("pgauth", _stop)


@pytest.fixture(scope="session")
def pgauth() -> PasswordCluster:
    """The session's password-checking cluster (shared by the xdist workers: never stop it)."""
    return PasswordCluster.attach(shared("pgauth", _start))
