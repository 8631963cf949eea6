"""PostgreSQL backend (``postgresql://user@host:5432/db``) for shared deployments.

Several application processes and daemons on several hosts share one
database; every coordination point is a database primitive, never a
protocol of our own:

* rotations and lifecycle changes of a keyring serialise on a
  transaction-scoped advisory lock (``lock_keyring``), and the partial
  unique index ``key_versions_one_active`` makes a second active version
  impossible even for a writer that skipped the lock;
* audit appenders serialise on another advisory lock, so the MAC chain
  has no forks;
* re-encryption workers take disjoint batches with
  ``SELECT ... FOR UPDATE SKIP LOCKED``;
* migrations run under an advisory lock, so two processes opening a new
  database at once apply each one exactly once.

Advisory lock keys are hashed from the current schema plus a name, so two
stores in different schemas of one database do not block each other.

Connections come from a ``psycopg_pool`` pool; a connection that died
(server restart, network cut, ``pg_terminate_backend``) is detected when
taken from the pool and replaced.  Starting a transaction is retried with
bounded backoff; a failure inside one rolls it back and raises
:class:`TransientStoreError`, which :meth:`Store.run` answers by running
the whole transaction again.  A connection lost during COMMIT leaves the
outcome unknown and is reported, never retried.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._extras import extra
from .._sleep import sleep
from ..envelope import KEY_VERSION_END
from ..exceptions import (
    CommitOutcomeUnknownError,
    ConcurrencyError,
    StoreError,
    StoreUnavailableError,
    TransientStoreError,
)
from ..providers.base import RetryPolicy
from ._schema import all_migrations
from ._sql import SqlTx
from ._sql_credentials import VERSION_LEN, VERSION_START_SQL
from ._sql_ops import audit_insert
from .base import Store, redact_url
from .records import AuditRow
from .tx import StoreTx

with extra("postgres"):  # names the missing one: psycopg or psycopg_pool
    import psycopg
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

if TYPE_CHECKING:
    Connection = psycopg.Connection[Any]

T = TypeVar("T")

MIGRATIONS = all_migrations("BYTEA", "DOUBLE PRECISION")
APPLICATION_NAME = "nebula-credential"

# SQLSTATE classes and codes meaning "the connection or the server went away".
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


#: Least privileges per runtime role, table by table (docs/operations/postgresql.md prints these).
#: Apps read and write credentials and count encryptions; the usage bound
#: (``[rotation] max_encryptions``) can make an app rotate, hence INSERT and a
#: status UPDATE on key_versions.  Operators and daemons additionally move
#: versions through the lifecycle, rewrap keys and hold the leases.  Nobody
#: but the owner may UPDATE or DELETE audit_events.  The schema owner runs
#: migrations (``init``): CREATE on the schema.
GRANTS: dict[str, tuple[str, ...]] = {
    "app": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON {schema}.schema_version, {schema}.meta TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.credentials TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.credential_versions TO {role}",
        "GRANT SELECT, INSERT, UPDATE (encryptions, status, status_changed_at) "
        "ON {schema}.key_versions TO {role}",
        "GRANT SELECT, INSERT ON {schema}.audit_events TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.audit_head TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.server_tokens, {schema}.server_policies, "
        "{schema}.server_token_roles TO {role}",
        "GRANT SELECT ON {schema}.backups, {schema}.backup_keys TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.key_access TO {role}",
        # the database engine: its rows (rotation locks included) and leases
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.db_items, {schema}.secret_leases TO {role}",
    ),
    "operator": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON {schema}.schema_version TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.meta TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.credentials TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.credential_versions TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.key_versions TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.leases TO {role}",
        "GRANT SELECT, INSERT ON {schema}.audit_events TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.audit_head TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.server_tokens, {schema}.server_policies, "
        "{schema}.server_token_roles TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.backups, {schema}.backup_keys TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON {schema}.key_access TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.db_items, {schema}.secret_leases TO {role}",
    ),
}


def grant_statements(kind: str, role: str, schema: str = "public") -> list[str]:
    """The GRANTs a runtime role of ``kind`` ("app" or "operator") needs, as SQL."""
    return [g.format(schema=schema, role=role) for g in GRANTS[kind]]


def _lock_sql(name: str) -> str:
    """An advisory xact lock keyed by schema and ``name`` (a literal, never user text)."""
    return f"SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':{name}:' || ?, 0))"


def _translate(exc: BaseException, conn: Connection | None, url: str) -> Exception:
    """Map a psycopg error to the package's typed errors (no password, no parameters)."""
    if isinstance(exc, PoolClosed):
        return StoreError(f"store {redact_url(url)} is closed")
    if not isinstance(exc, psycopg.Error):
        return StoreError(f"store {redact_url(url)} failed: {type(exc).__name__}")
    state = exc.sqlstate or ""
    message = message_of(exc)
    if (conn is not None and conn.closed) or state.startswith(_CONNECTION_STATES) or (
        not state and isinstance(exc, psycopg.OperationalError)
    ):
        return TransientStoreError(
            f"connection to {redact_url(url)} lost; the transaction was rolled back: {message}"
        )
    if state.startswith("40"):  # serialization failure, deadlock: roll back, run again
        return ConcurrencyError(f"concurrent update in {redact_url(url)}: {message}")
    if state.startswith("23"):  # a constraint a concurrent writer got to first
        return ConcurrencyError(f"constraint violated in {redact_url(url)}: {message}")
    return StoreError(f"PostgreSQL error in {redact_url(url)}: {message}")


def message_of(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag is not None else None
    if primary:
        return primary
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


#: The most audit rows one ``INSERT`` of a batch carries (see :meth:`PostgresTx.audit_append`): ten
#: parameters a row, and psycopg parses a query's placeholders again on every call past 50 parameters
#: (``psycopg._queries.MAX_CACHED_STATEMENT_PARAMS``), which cost more than the statements saved.
AUDIT_ROWS_PER_INSERT = 4


class PostgresTx(SqlTx):
    paramstyle_qmark = False

    def __init__(self, conn: Connection, url: str) -> None:
        super().__init__(conn)
        self._url = url
        #: statements nobody reads the result of, sent with the next statement in one pipeline
        self._deferred: list[tuple[str, Sequence[Any]]] = []

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            if self._deferred:
                return self._send([*self._take_deferred(), (self._q(sql), params)])[-1]
            return self._conn.execute(self._q(sql), params)
        except psycopg.Error as exc:
            raise _translate(exc, self._conn, self._url) from exc

    def _exec_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        try:
            sent = self._send([*self._take_deferred(), *((self._q(sql), params) for sql, params in statements)])
        except psycopg.Error as exc:
            raise _translate(exc, self._conn, self._url) from exc
        return sent[len(sent) - len(statements):]

    def _defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._deferred.append((self._q(sql), params))

    def _take_deferred(self) -> list[tuple[str, Sequence[Any]]]:
        deferred, self._deferred = self._deferred, []
        return deferred

    def _send(self, statements: list[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Statements in one pipeline (one round trip), run in order; each one's result.  An error of any
        of them is raised here (psycopg's), and the ones after it did not run."""
        pipelined = getattr(self._conn, "execute_pipeline", None)  # the asyncio bridge's connection
        if pipelined is not None:
            return cast(list[Any], pipelined(statements))
        with self._conn.pipeline():
            cursors = [self._conn.execute(sql, params) for sql, params in statements]
        return cursors

    def commit(self) -> None:
        """``COMMIT``, with the statements still deferred in the same round trip (psycopg's error if any
        fails: then nothing of the transaction was committed)."""
        if self._deferred:
            self._send([*self._take_deferred(), ("COMMIT", ())])
        else:
            self._conn.execute("COMMIT")

    def _many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        self._executemany(sql, seq)

    def _executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> int:
        """One round trip for the batch (libpq pipeline mode); returns rows affected.  Statements still
        deferred go first, in the same pipeline, so the order the caller wrote them in holds."""
        if not seq:
            return 0
        if self._deferred:
            query = self._q(sql)
            try:
                sent = self._send([*self._take_deferred(), *((query, params) for params in seq)])
            except psycopg.Error as exc:
                raise _translate(exc, self._conn, self._url) from exc
            return sum(int(cursor.rowcount) for cursor in sent[len(sent) - len(seq):])
        try:
            with self._conn.cursor() as cur:
                cur.executemany(self._q(sql), seq)
                return int(cur.rowcount)
        except psycopg.Error as exc:
            raise _translate(exc, self._conn, self._url) from exc

    def _table_exists(self, name: str) -> bool:
        row = self._exec("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])

    _HEADER_SQL = (f"CASE WHEN octet_length(envelope) >= {KEY_VERSION_END} "
                   f"THEN substring(envelope from {VERSION_START_SQL} for {VERSION_LEN}) END")
    _MISMATCH_SQL = (f"octet_length(envelope) >= {KEY_VERSION_END} "
                     f"AND substring(envelope from {VERSION_START_SQL} for {VERSION_LEN}) <> int4send(key_version)")
    _PREFIX_BY_RANGE = False  # the database's collation orders ids, not code points: LIKE 'p%'

    def _lock_suffix(self, skip_locked: bool) -> str:
        return " FOR UPDATE SKIP LOCKED" if skip_locked else ""

    def _row_lock(self, mode: str) -> str:
        return f" FOR {mode}"

    def _lock_audit_head(self) -> None:
        # sent with the chain tail's SELECT, in one round trip: taken before that (or any) statement runs
        self._defer(_lock_sql("audit"), ("chain",))

    def audit_append(self, *rows: AuditRow) -> None:
        r"""The rows (and, from :meth:`set_audit_head`, the new head) go with the COMMIT in one pipeline:
        an audit batch is BEGIN, the lock with the tail, then the rows with COMMIT (three round trips,
        six before).  A row that fails fails the COMMIT's round trip: nothing of the batch is kept.

        The rows go as a few multi-row ``INSERT``\ s, of 1, 2, 4 ... :data:`AUDIT_ROWS_PER_INSERT` rows
        (13 rows: 4, 4, 4 and 1), not one statement each: every statement of a pipeline costs the
        client a cursor, its own send and its result, which for a server's batch of request events was
        most of the batch's CPU.  Powers of two keep the statement texts few, so each is prepared once
        per connection.
        """
        params = [self._audit_params(row) for row in rows]
        at = 0
        while at < len(params):
            size = min(AUDIT_ROWS_PER_INSERT, 1 << ((len(params) - at).bit_length() - 1))
            self._defer(audit_insert(size), [value for row in params[at:at + size] for value in row])
            at += size

    def set_audit_head(self, value: str) -> None:
        self._defer(self._AUDIT_HEAD_SET, (value,))

    def lock_keyring(self, keyring: str) -> None:
        self._exec(_lock_sql("keyring"), (keyring,))

    def cas_update_envelopes(
        self, keyring: str, updates: Sequence[tuple[str, int, int, bytes]]
    ) -> int:
        return self._executemany(
            "UPDATE credentials SET envelope = ?, key_version = ?, revision = revision + 1 "
            "WHERE keyring = ? AND id = ? AND revision = ?",
            [(env, ver, keyring, cid, rev) for cid, rev, ver, env in updates],
        )


class PostgresStore(Store):
    """A pooled PostgreSQL store; safe to share between threads of one process."""

    scheme = "postgresql"
    supports_skip_locked = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(url, retry=retry)
        self.connect_timeout = connect_timeout
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise StoreError(f"malformed PostgreSQL URL {redact_url(url)}") from None
        self._password = str(params.get("password") or "")
        kwargs: dict[str, Any] = {"autocommit": True}
        if "application_name" not in params:
            kwargs["application_name"] = APPLICATION_NAME
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, round(connect_timeout))
        self._kwargs = kwargs
        self._pool_size = max(1, pool_size)
        self._local = threading.local()
        self._orphans: list[ConnectionPool[Any]] = []
        self._pid = os.getpid()
        self._pool = self._new_pool()

    def _pool_options(self) -> dict[str, Any]:
        """What every pool of this store is made with, sync or async (sizes, timeout, session settings)."""
        return {"min_size": 1, "max_size": self._pool_size, "kwargs": self._kwargs,
                "timeout": self.connect_timeout, "name": f"nebula-credential:{redact_url(self.url)}", "open": False}

    def _new_pool(self) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(self.url, **self._pool_options())
        pool.open(wait=False)
        return pool

    def _after_fork(self) -> None:
        """A forked child (multiprocessing workers) gets its own pool.

        The parent's connections are kept referenced and never closed here:
        closing them would send a Terminate on sockets the parent still uses.
        """
        if os.getpid() != self._pid:
            self._orphans.append(self._pool)
            self._pid = os.getpid()
            self._local = threading.local()
            self._pool = self._new_pool()

    # ---- connections -----------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _diagnose(self) -> str:
        """Why no connection could be made, from one direct attempt (the pool hides it)."""
        try:
            psycopg.connect(self.url, **self._kwargs).close()
        except psycopg.Error as exc:
            return self._scrub(message_of(exc))
        return "timed out waiting for a free pooled connection"

    def _getconn(self) -> Connection:
        """A pooled connection, or the typed error saying why there is none."""
        try:
            conn: Connection = self._pool.getconn()
        except (PoolClosed, PoolTimeout) as exc:
            raise self._no_connection(exc) from (exc if isinstance(exc, PoolClosed) else None)
        return conn

    def _no_connection(self, exc: PoolClosed | PoolTimeout) -> Exception:
        """The typed error for a pool that gave no connection (closed, or none within connect_timeout)."""
        if isinstance(exc, PoolClosed):
            return _translate(exc, None, self.url)
        # the pool already retried connecting, with backoff, for connect_timeout
        return StoreUnavailableError(
            f"cannot reach PostgreSQL store {redact_url(self.url)} within "
            f"{self.connect_timeout:g}s: {self._diagnose()}"
        )

    def _begin(self, write: bool) -> Connection:
        """A pooled connection inside BEGIN, retried with backoff (nothing has run yet).

        BEGIN doubles as the liveness check: a pooled connection the server
        dropped (restart, ``pg_terminate_backend``) fails it at once, goes
        back to the pool to be discarded, and the next one is tried without
        waiting; only a failure on a fresh connection costs a backoff step.
        """
        self._after_fork()
        statement = "BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ"
        delays = self.retry.delays()
        stale_budget = self._pool_size
        while True:
            conn: Connection | None = None
            try:
                conn = self._getconn()
                conn.execute(statement)
                return conn
            except psycopg.OperationalError as exc:
                assert conn is not None
                self._pool.putconn(conn)  # closed: the pool discards it and reconnects
                if stale_budget > 0:
                    stale_budget -= 1
                    continue
                if not delays:
                    raise StoreUnavailableError(
                        f"cannot start a transaction on PostgreSQL store {redact_url(self.url)} "
                        f"after {self.retry.attempts} attempts: {self._scrub(message_of(exc))}"
                    ) from None
                sleep(delays.pop(0))
            except BaseException:
                if conn is not None:  # interrupted mid-BEGIN (a cancelled task): the pool resets or drops it
                    self._pool.putconn(conn)
                raise

    @contextmanager
    def transaction(self, *, write: bool = True, autonomous: bool = False) -> Iterator[StoreTx]:
        joined: PostgresTx | None = getattr(self._local, "tx", None)
        if joined is not None and not autonomous:  # nested use from the same thread joins, as on SQLite
            yield joined
            return
        conn = self._begin(write)
        tx = PostgresTx(conn, self.url)
        outer, self._local.tx = joined, tx
        try:
            try:
                yield tx
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, psycopg.Error):
                    raise _translate(exc, conn, self.url) from exc
                raise
            try:
                tx.commit()
            except psycopg.Error as exc:
                if conn.closed:
                    raise CommitOutcomeUnknownError(
                        f"connection to {redact_url(self.url)} lost during COMMIT; whether the "
                        "transaction was applied is unknown: re-read before acting on it"
                    ) from exc
                self._rollback(conn)
                raise _translate(exc, conn, self.url) from exc
        finally:
            self._local.tx = outer
            self._pool.putconn(conn)

    def read_one(self, fn: Callable[[StoreTx], T]) -> T:
        """One statement in autocommit: one round trip instead of three (BEGIN, it, COMMIT).

        A single statement runs in its own snapshot, so it reads exactly
        what it would inside ``BEGIN ISOLATION LEVEL REPEATABLE READ``.  The
        statement is also the liveness check BEGIN otherwise is: when it
        fails on a pooled connection the server dropped, the read is run
        again (it changes nothing) through :meth:`read`, whose BEGIN retries
        stale connections and backs off.
        """
        joined: PostgresTx | None = getattr(self._local, "tx", None)
        if joined is not None:  # inside this caller's transaction: read in it
            return fn(joined)
        self._after_fork()
        conn = self._getconn()
        try:
            return fn(PostgresTx(conn, self.url))
        except TransientStoreError:
            if not conn.closed:
                raise
        finally:
            self._pool.putconn(conn)
        return super().read_one(fn)

    @staticmethod
    def _rollback(conn: Connection) -> None:
        if conn.closed:
            return
        with suppress(psycopg.Error):  # the pool discards a connection left in a bad state
            conn.execute("ROLLBACK")

    # ---- schema ------------------------------------------------------------
    def migrate(self) -> int:
        def apply(tx: StoreTx) -> int:
            assert isinstance(tx, PostgresTx)
            tx._exec(_lock_sql("migrate"), ("schema",))
            return tx.apply_migrations(MIGRATIONS, "DOUBLE PRECISION")

        return self.run(apply)

    def ensure_connections(self, count: int) -> None:
        if count > self._pool_size:
            self._pool_size = count
            self._pool.resize(min_size=1, max_size=count)

    def close(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not close the parent's sessions
            self._orphans.append(self._pool)
            return
        self._pool.close()
