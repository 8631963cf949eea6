"""PostgreSQL for the asyncio API: the same store, its I/O awaited on the loop.

:class:`BridgedPostgresStore` *is* :class:`~.postgres.PostgresStore` --
transactions, retries, advisory locks, ``SKIP LOCKED``, error translation,
every query -- with only the connection pool swapped for psycopg 3's
:class:`~psycopg_pool.AsyncConnectionPool` behind a sync-looking adapter.
Each driver call the sync code makes becomes one awaitable handed to the
event loop through :func:`~nebula_credential._bridge.await_only`, so the
loop keeps serving other tasks while PostgreSQL answers, and no rule of
the store is written twice.

Use it only from :func:`~nebula_credential._bridge.greenlet_spawn` (which
the :class:`~nebula_credential.aio.AsyncVault` does) or from another
thread while the loop runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from .._extras import extra

with extra("postgres"):
    import psycopg
    from psycopg.pq import ExecStatus
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolClosed, PoolTimeout

from .._bridge import GreenletLocal, GreenletRLock, await_only, in_bridge
from ..models import EncryptedCredential
from ._rows import CRED_COLS, decode_credential
from ._sql_base import pyformat
from ._sql_versions import VersionsSql, decode_credential_version
from .postgres import PostgresStore, message_of
from .records import VersionRow

TUPLES_OK = ExecStatus.TUPLES_OK
log = logging.getLogger(__name__)


class _Result:
    """A fully fetched result: what the sync code reads of a cursor."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


async def _execute(conn: psycopg.AsyncConnection[Any], sql: str, params: Any) -> _Result:
    # one awaitable per statement: execute and fetch travel together
    cur = await conn.execute(sql, params)
    # the test ``cur.description`` makes, without building its Column objects (9 a SELECT)
    res = cur.pgresult
    rows = await cur.fetchall() if res is not None and (res.nfields or res.status == TUPLES_OK) else []
    return _Result(rows, cur.rowcount)


async def _pipeline(conn: psycopg.AsyncConnection[Any], statements: Sequence[tuple[str, Any]]) -> list[_Result]:
    # several statements, one round trip: the results are read once the pipeline is synced at its end
    async with conn.pipeline():
        cursors = [await conn.execute(sql, params) for sql, params in statements]
    out = []
    for cur in cursors:
        res = cur.pgresult
        rows = await cur.fetchall() if res is not None and (res.nfields or res.status == TUPLES_OK) else []
        out.append(_Result(rows, cur.rowcount))
    return out


async def _executemany(conn: psycopg.AsyncConnection[Any], sql: str, seq: Any) -> int:
    async with conn.cursor() as cur:
        await cur.executemany(sql, seq)
        return int(cur.rowcount)


async def _shielded(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the awaiting task is cancelled (giving a connection back).

    A coroutine, so the shielding task is created on the loop that awaits it,
    also when the store is called from another thread.
    """
    await asyncio.shield(coro)


class _BatchFailed(Exception):
    """The shared read did not happen: each reader retries alone, or (no connection) fails at once."""

    def __init__(self, no_connection: PoolClosed | PoolTimeout | None = None) -> None:
        super().__init__()
        self.no_connection = no_connection


class _ReadBatcher:
    """Credential reads issued by concurrent tasks in one turn of the loop become ONE statement.

    The DataLoader technique: a read registers its id and a future of its
    own; the first read of a turn schedules a flush with ``call_soon``, so
    every read issued before the loop comes round is answered by one
    ``WHERE id = ANY(...)`` on one pooled connection.  32 tasks reading at
    once cost one round trip instead of 32, which is where an event loop
    beats a thread pool (threads cannot see each other's statements).

    Consistency is that of a single read: the statement starts after every
    read of the batch was issued, so a write acknowledged before a read was
    issued is seen by it.  A failed statement fails no one: each reader falls
    back to its own one-statement read, with the store's retries and errors.
    """

    #: ids per statement (PostgreSQL plans ``= ANY`` of a few hundred as an index scan).
    MAX_IDS = 256
    #: The current rows (``get``, a KV write's existence check).
    SQL = f"SELECT {CRED_COLS} FROM credentials WHERE keyring = %s AND id = ANY(%s)"
    #: The current rows with their latest version's row and number (a KV read of the current version).
    KV_SQL = pyformat(VersionsSql._CURRENT_VERSION_SQL.replace("c.id = ?", "c.id = ANY(?)"))

    def __init__(self, pool: AsyncConnectionPool[Any], loop: asyncio.AbstractEventLoop, sql: str = SQL) -> None:
        self._pool = pool
        self._loop = loop
        #: a statement of ``keyring = %s`` and ``id = ANY(%s)`` whose rows carry the id as their second column
        self._sql = sql
        self._pending: dict[str, list[tuple[str, asyncio.Future[Any]]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    def submit(self, keyring: str, credential_id: str) -> asyncio.Future[Any]:
        """A future of the raw row (None: no such credential); one per reader, so cancelling one cancels no other."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.setdefault(keyring, []).append((credential_id, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for keyring, readers in pending.items():
            for start in range(0, len(readers), self.MAX_IDS):
                task = self._loop.create_task(self._fetch(keyring, readers[start:start + self.MAX_IDS]))
                self._flushing.add(task)  # the loop keeps only a weak reference to a task
                task.add_done_callback(self._flushing.discard)

    async def _fetch(self, keyring: str, readers: list[tuple[str, asyncio.Future[Any]]]) -> None:
        try:
            async with self._pool.connection() as conn:
                try:
                    cur = await conn.execute(self._sql, (keyring, list({cid for cid, _ in readers})))
                    rows = {row[1]: row for row in await cur.fetchall()}
                except Exception as exc:
                    # the statement failed (a connection the server dropped, a bad id): each
                    # reader retries alone, with the store's retries and its own error
                    log.debug("shared credential read failed (%s); readers retry alone", type(exc).__name__)
                    self._fail(readers, _BatchFailed())
                    return
        except (PoolClosed, PoolTimeout) as exc:
            # no connection within connect_timeout (or the store closed): waiting again per
            # reader would multiply the wait and the queue; every reader gets this answer
            self._fail(readers, _BatchFailed(exc))
            return
        except BaseException:
            self._fail(readers, _BatchFailed())
            raise  # cancelled with the loop: let it end
        for cid, future in readers:
            if not future.done():  # a reader cancelled meanwhile
                future.set_result(rows.get(cid))

    @staticmethod
    def _fail(readers: list[tuple[str, asyncio.Future[Any]]], error: _BatchFailed) -> None:
        for _, future in readers:
            if not future.done():
                future.set_exception(error)


class _Cursor:
    """``with conn.cursor() as cur: cur.executemany(...)`` as the sync store writes it."""

    def __init__(self, conn: _BridgedConnection) -> None:
        self._conn = conn
        self.rowcount = -1

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        self.rowcount = self._conn.wait(_executemany(self._conn.aconn, sql, seq))

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _BridgedConnection:
    """The part of ``psycopg.Connection`` the store uses, over an async connection."""

    __slots__ = ("_loop", "aconn")

    def __init__(self, aconn: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.aconn = aconn
        self._loop = loop

    def wait(self, coro: Any) -> Any:
        return await_only(coro, self._loop)

    def execute(self, sql: str, params: Any = None) -> _Result:
        return cast(_Result, self.wait(_execute(self.aconn, sql, params)))

    def execute_pipeline(self, statements: Sequence[tuple[str, Any]]) -> list[_Result]:
        """Several statements in one pipeline; each one's result (see ``PostgresTx._send``)."""
        return cast(list[_Result], self.wait(_pipeline(self.aconn, statements)))

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    @property
    def closed(self) -> bool:
        return bool(self.aconn.closed)


class _BridgedPool:
    """The part of ``psycopg_pool.ConnectionPool`` the store uses, over the async pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop

    def getconn(self) -> _BridgedConnection:
        return _BridgedConnection(await_only(self._pool.getconn(), self._loop), self._loop)

    def putconn(self, conn: _BridgedConnection) -> None:
        await_only(_shielded(self._pool.putconn(conn.aconn)), self._loop)

    def stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        await_only(self._pool.resize(min_size, max_size), self._loop)

    def close(self) -> None:
        await_only(self._pool.close(), self._loop)


class BridgedPostgresStore(PostgresStore):
    """:class:`PostgresStore` whose connections are psycopg ``AsyncConnection`` objects.

    Construct it inside the bridge (it opens the pool on the running loop).
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.get_running_loop()
        super().__init__(url, **kwargs)
        self._local = GreenletLocal()  # type: ignore[assignment]  # per task, not per thread: all tasks share the loop's thread

    def _new_pool(self) -> ConnectionPool[Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(self.url, **self._pool_options())
        await_only(pool.open(wait=False), self._loop)
        self._reads = _ReadBatcher(pool, self._loop)
        self._kv_reads = _ReadBatcher(pool, self._loop, _ReadBatcher.KV_SQL)
        # the store only calls getconn/putconn/resize/close, which _BridgedPool provides
        return cast("ConnectionPool[Any]", _BridgedPool(pool, self._loop))

    def read_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """Joined to the reads of other tasks in the same loop turn (see :class:`_ReadBatcher`)."""
        shared, row = self._shared_read(self._reads, keyring, credential_id)
        if not shared:
            return super().read_credential(keyring, credential_id)
        return None if row is None else decode_credential(row)

    def read_credential_version(self, keyring: str, credential_id: str, version: int | None
                                ) -> tuple[EncryptedCredential, VersionRow | None, int] | None:
        """A KV read of the current version joined to the others of the same loop turn, as
        :meth:`read_credential` (a given version, rarer, reads alone)."""
        shared, row = (False, None) if version is not None else self._shared_read(
            self._kv_reads, keyring, credential_id)
        if not shared:
            return super().read_credential_version(keyring, credential_id, version)
        return None if row is None else decode_credential_version(row)

    def _shared_read(self, reads: _ReadBatcher, keyring: str, credential_id: str) -> tuple[bool, Any]:
        """(True, the raw row or None) from the shared statement; (False, None): the caller reads alone
        (another thread, inside a transaction, or the shared statement failed)."""
        if not in_bridge() or getattr(self._local, "tx", None) is not None:
            return False, None
        try:
            return True, await_only(reads.submit(keyring, credential_id))
        except _BatchFailed as failed:
            if failed.no_connection is not None:
                raise self._no_connection(failed.no_connection) from None
            return False, None

    def _after_fork(self) -> None:
        """An event loop and its pool do not survive a fork; nothing to adopt."""

    def _diagnose(self) -> str:
        async def attempt() -> str:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, **self._kwargs)
            except psycopg.Error as exc:
                return self._scrub(message_of(exc))
            await conn.close()
            return "timed out waiting for a free pooled connection"

        return await_only(attempt(), self._loop)

    def new_lock(self) -> AbstractContextManager[Any]:
        return GreenletRLock()

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters (``pool_size``, ``pool_available``, ``requests_waiting``...)."""
        return cast(_BridgedPool, self._pool).stats()
