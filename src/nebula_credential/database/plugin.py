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
from contextlib import contextmanager, suppress
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


def default_drop_user(conn: Any, name: str) -> None:
    """Revoke what ``name`` was granted and drop it, when its role has no revocation statements.

    Vault's PostgreSQL plugin does this with an admin that is not a superuser
    (``CREATEROLE`` only): ``REASSIGN``/``DROP OWNED`` need the dropped role's
    privileges, which PostgreSQL 15 refuses such an admin.  So, as Vault: revoke
    the privileges on every table and sequence of each schema the user holds a
    grant in, and on ``public``, the schemas' usage and the database's
    ``CONNECT``; a revocation that fails is reported after the others were tried
    (the lease is retried), then ``DROP ROLE``.  Where the admin may (a
    superuser), ``REASSIGN``/``DROP OWNED`` run first, so objects the user made
    do not block the drop; refused, they are skipped.  Revocations take turns
    (an advisory lock): PostgreSQL fails concurrent grants on one object.
    """
    import psycopg
    from psycopg import sql

    user = sql.Identifier(name)
    # two GRANT/REVOKEs on one object at once fail ("tuple concurrently updated"): revocations of this
    # cluster (sweepers in several processes) take turns, until this transaction ends
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('nebula-credential: default revocation'))")
    with suppress(psycopg.Error), conn.transaction():  # a savepoint: refused to a CREATEROLE admin
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(user))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(user))
    rows = conn.execute("SELECT DISTINCT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee "
                        "WHERE r.rolname = %s ORDER BY 1", (name,)).fetchall()
    statements = []
    for schema in [str(r[0]) for r in rows if r[0] != "public"] + ["public"]:
        ident = sql.Identifier(schema)
        statements += [sql.SQL("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA {} FROM {}").format(ident, user),
                       sql.SQL("REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(ident, user),
                       sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(ident, user)]
    statements.append(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(
        sql.Identifier(str(conn.execute("SELECT current_database()").fetchone()[0])), user))
    failed: psycopg.Error | None = None
    for statement in statements:
        try:
            with conn.transaction():
                conn.execute(statement)
        except psycopg.Error as exc:
            failed = exc
    if failed is not None:
        raise DatabaseUnavailableError(f"could not perform all revocation statements: {str(failed).strip()}")
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(user))
