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
from collections.abc import Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import psycopg
from psycopg.pq import ExecStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .._bridge import GreenletLocal, GreenletRLock, await_only
from .postgres import PostgresStore, _message

TUPLES_OK = ExecStatus.TUPLES_OK


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
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs=self._kwargs,
            timeout=self.connect_timeout,
            name=f"nebula-credential-async:{self!r}",
            open=False,
        )
        await_only(pool.open(wait=False), self._loop)
        # the store only calls getconn/putconn/resize/close, which _BridgedPool provides
        return cast("ConnectionPool[Any]", _BridgedPool(pool, self._loop))

    def _after_fork(self) -> None:
        """An event loop and its pool do not survive a fork; nothing to adopt."""

    def _diagnose(self) -> str:
        async def attempt() -> str:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, **self._kwargs)
            except psycopg.Error as exc:
                return self._scrub(_message(exc))
            await conn.close()
            return "timed out waiting for a free pooled connection"

        return await_only(attempt(), self._loop)

    def new_lock(self) -> AbstractContextManager[Any]:
        return GreenletRLock()

    def pool_stats(self) -> dict[str, int]:
        """psycopg_pool's counters (``pool_size``, ``pool_available``, ``requests_waiting``...)."""
        return cast(_BridgedPool, self._pool).stats()
