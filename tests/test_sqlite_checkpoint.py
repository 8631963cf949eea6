"""SQLite's WAL is copied back by a thread of its own under ``serve``, not in a request's commit.

A commit that crosses SQLite's 1,000-page threshold checkpoints the WAL
itself: page copies and an ``fsync`` of the database file inside the
request's write, on the event loop under ``serve``.  With
:meth:`SqliteStore.checkpoint_in_background` the store's connections leave
that to a background thread (and still checkpoint themselves past a safety
bound), and the WAL's frames reach the database file within the interval.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from nebula_credential.store.sqlite import SAFETY_AUTOCHECKPOINT, SqliteStore


def _write_rows(store: SqliteStore, n: int) -> None:
    with store.transaction() as tx:
        for i in range(n):
            tx.set_meta(f"k{i}", "x" * 2000)


def test_connections_leave_checkpoints_to_the_background_thread(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        store.migrate()
        store.checkpoint_in_background(interval=0.05)
        with store.read() as tx:  # this thread's connection, opened by migrate() before the call
            assert tx._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_AUTOCHECKPOINT  # type: ignore[attr-defined]
        seen: list[int] = []

        def new_connection() -> None:  # another thread's, opened after it
            with store.read() as tx:
                seen.append(tx._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])  # type: ignore[attr-defined]
                seen.append(tx._conn.execute("PRAGMA journal_size_limit").fetchone()[0])  # type: ignore[attr-defined]

        reader = threading.Thread(target=new_connection)
        reader.start()
        reader.join()
        assert seen == [SAFETY_AUTOCHECKPOINT, SAFETY_AUTOCHECKPOINT * 4096]
        threads = [t for t in threading.enumerate() if t.name == "nebula-sqlite-checkpoint"]
        assert len(threads) == 1
        size_before = (tmp_path / "a.db").stat().st_size
        _write_rows(store, 600)  # ~300 pages: more than fits in the file's pages before
        deadline = time.monotonic() + 5
        while (tmp_path / "a.db").stat().st_size <= size_before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "a.db").stat().st_size > size_before  # the rows reached the database file
    finally:
        store.close()
    assert not [t for t in threading.enumerate() if t.name == "nebula-sqlite-checkpoint"]


def test_a_plain_store_keeps_sqlites_own_checkpoints(tmp_path: Path) -> None:
    """A store opened by the CLI or the library starts no thread and leaves SQLite's checkpoints as they are."""
    store = SqliteStore(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        store.migrate()
        with store.read() as tx:
            assert tx._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # type: ignore[attr-defined]
        assert not [t for t in threading.enumerate() if t.name == "nebula-sqlite-checkpoint"]
    finally:
        store.close()
