"""The PostgreSQL plugin over psycopg 3: sessions as the connection's root user, statements from templates.

One short session per operation, no pool: rotations and dynamic users are
rare next to an application's queries, and a session that outlives a root
password rotation would hide that the new password does not work.  Every
session has bounded connect and statement timeouts, so a PostgreSQL that
hangs costs a rotation attempt, not a stuck scheduler.

Errors never carry a password: every secret used in the operation is cut
out of the server's message before it is raised (a syntax error quotes the
statement, which may hold a password literal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from . import templates
from .errors import DatabaseConnectError, DatabaseInputError, DatabaseUnavailableError

T = TypeVar("T")

PLUGIN_NAME = "postgresql-database-plugin"
APPLICATION_NAME = "nebula-credential-database"
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 10_000


def redact(text: str, secrets: Sequence[str | None]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def check_url(url: object) -> str:
    """A ``connection_url``: a URL or key=value string with ``{{username}}``/``{{password}}`` templates,
    refused when it carries a literal password (it would be stored in the clear and shown by reads)."""
    from psycopg.conninfo import conninfo_to_dict

    if not isinstance(url, str) or not url.strip():
        raise DatabaseInputError("connection_url cannot be empty")
    try:
        parsed = conninfo_to_dict(_base(url))
    except Exception:
        raise DatabaseInputError("connection_url is not a valid PostgreSQL connection string") from None
    if parsed.get("password"):
        raise DatabaseInputError("connection_url must not hold a password: write {{password}} and send "
                                 "the password field")
    return url


def _base(url: str) -> str:
    return url.replace("{{username}}", "").replace("{{password}}", "")


class PostgresPlugin:
    """Sessions to one PostgreSQL as one user (the connection's root user)."""

    def __init__(self, connection_url: str, username: str, password: str) -> None:
        self._url = connection_url
        self.username = username
        self._password = password

    def __repr__(self) -> str:
        return f"<PostgresPlugin user={self.username!r}>"

    @contextmanager
    def session(self, *, password: str | None = None, extra_secrets: Sequence[str | None] = ()) -> Iterator[Any]:
        """A connection in a transaction, committed when the block ends, rolled back on error."""
        import psycopg

        pw = self._password if password is None else password
        hide = (pw, self._password, *extra_secrets)
        try:
            conn = psycopg.connect(_base(self._url), user=self.username or None, password=pw or None,
                                   connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME)
        except psycopg.Error as exc:
            raise DatabaseConnectError(f"error verifying connection: {redact(str(exc).strip(), hide)}") from None
        try:
            with conn:  # commits on a clean exit, rolls back on an exception, closes either way
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                yield conn
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(redact(str(exc).strip(), hide)) from None

    def run(self, fn: Callable[[Any], T], *, password: str | None = None,
            extra_secrets: Sequence[str | None] = ()) -> T:
        with self.session(password=password, extra_secrets=extra_secrets) as conn:
            return fn(conn)

    def verify(self) -> None:
        self.run(lambda conn: conn.execute("SELECT 1"))

    def execute(self, statements: Sequence[str], values: Mapping[str, str], *, password: str | None = None) -> None:
        """Run templated statements in one transaction (all or nothing)."""
        secrets = [values.get("password")]

        def go(conn: Any) -> None:
            for text in statements:
                conn.execute(templates.render(text, values))

        self.run(go, password=password, extra_secrets=secrets)


def role_exists(conn: Any, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def terminate_sessions(conn: Any, name: str) -> int:
    """End every session of ``name`` (after NOLOGIN, so none can start again); returns how many."""
    row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
                       (name,)).fetchone()
    return int(row[0] or 0)


def login_check(connection_url: str, username: str, password: str) -> bool:
    """Whether ``username`` can open a session with ``password`` (tests and recovery checks)."""
    try:
        PostgresPlugin(connection_url, username, password).verify()
    except DatabaseUnavailableError:
        return False
    return True
