"""The ground every SQL table family stands on: a connection, the dialect hooks, small SQL helpers.

Queries are written once with ``?`` placeholders; a backend that uses
another paramstyle translates them (:meth:`SqlBase._q`).  Backend-specific
behaviour (locking, ``SKIP LOCKED``, the audit head lock) lives in small
overridable methods, so the logic is not written twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=256)
def pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def where_clause(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """The AND of the clauses whose value is not None, and their parameters."""
    used = [(clause, value) for clause, value in conditions if value is not None]
    return " AND ".join(c for c, _ in used) or "1 = 1", [v for _, v in used]


def to_json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SqlBase:
    """A DB-API connection and the dialect hooks every table family's queries use; backends override the hooks."""

    paramstyle_qmark = True

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def _q(self, sql: str) -> str:
        return sql if self.paramstyle_qmark else pyformat(sql)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._q(sql), params)

    def _many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(self._q(sql), seq)

    def _exec_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Statements in this order; each one's cursor.  A backend may send them in one round trip
        (PostgreSQL's pipeline): they still run one after the other, each seeing the ones before."""
        return [self._exec(sql, params) for sql, params in statements]

    def _defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result nobody reads: a backend may send it with the next one, in one round
        trip (PostgreSQL); its error then surfaces there, still inside this transaction."""
        self._exec(sql, params)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        # One name for every savepoint: nested ones are strictly last in, first out, and both dialects
        # take a repeated name as the innermost one.  A name per savepoint would make each statement
        # new text, a miss in the connection's statement cache pushing out the hot path's statements.
        self._defer("SAVEPOINT nc_part")
        try:
            yield
            # sends the part's deferred statements: an error of theirs is the part's, undone with it
            self._exec("RELEASE SAVEPOINT nc_part")
        except BaseException:
            self._exec("ROLLBACK TO SAVEPOINT nc_part")
            self._exec("RELEASE SAVEPOINT nc_part")
            raise

    def _lock_suffix(self, skip_locked: bool) -> str:
        return ""

    def _row_lock(self, mode: str) -> str:
        """`` FOR <mode>`` where the dialect has row locks (SQLite: one writer, none needed)."""
        return ""

    def _lock_audit_head(self) -> None:
        """Serialise appenders of the audit chain (SQLite: the write lock does)."""

    def _table_exists(self, name: str) -> bool:
        row = self._exec(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None
