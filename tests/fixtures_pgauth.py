"""The server tests' view of the password-checking PostgreSQL (``fixtures_dbengine``'s cluster).

Over the Unix socket the tests administer it without a password, over TCP on
127.0.0.1 every login -- the engine's, OpenBao's, an application's -- needs
the real one.  Each server test takes a database of its own
(:meth:`PasswordCluster.new_database`), and every role a test creates carries
its own prefix, since roles are cluster-wide.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from .fixtures_dbengine import ScramCluster


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


@pytest.fixture(scope="session")
def pgauth(scram_postgres: ScramCluster) -> PasswordCluster:
    """The session's password-checking cluster (``fixtures_dbengine``), with the server tests' helpers:
    a database per test, template URLs, logins over TCP.  Never stop it from a test."""
    return PasswordCluster(Path(scram_postgres.root), scram_postgres.port, scram_postgres.user, "")
