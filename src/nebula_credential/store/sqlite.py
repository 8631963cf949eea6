"""SQLite backend: the embedded default (``sqlite:///path/to.db``), in WAL mode.

One connection per thread, autocommit mode with explicit ``BEGIN IMMEDIATE``
for write transactions, so a writer takes the database lock up front and
two rotations can never interleave.  ``sqlite:///:memory:`` gives a private
in-memory database (one connection shared under a lock), used by
``KeyManager.ephemeral()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..exceptions import ConcurrencyError, NebulaCredentialError, StoreError, StoreUnavailableError
from ._schema import all_migrations
from ._sql import SqlTx
from .base import Store
from .tx import StoreTx

T = TypeVar("T")
MIGRATIONS = all_migrations("BLOB", "REAL")


def path_from_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :] or ":memory:"
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        return rest or ":memory:"
    raise StoreError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to.db)")


class SqliteTx(SqlTx):
    paramstyle_qmark = True
    latest_in_returning = True


class WriteNeedsWorker(BaseException):
    """A write transaction was asked for inside :func:`reads_only`: run the whole call on a worker thread.

    A BaseException so that no ``except Exception`` on the way swallows it
    (nothing has been written when it is raised: the write is refused
    before its ``BEGIN``).
    """


_here = threading.local()


@contextmanager
def reads_only() -> Iterator[None]:
    """On this thread, refuse to open a write transaction (:class:`WriteNeedsWorker`) while inside.

    The server runs a store read on its event loop this way: a WAL reader
    never waits for a writer, but a write could wait for another process's
    lock, which the loop must not do; a call that turns out to write (an
    access-counter flush, a failed-decrypt audit) is run again on a worker.
    """
    before = _refuse_writes()
    try:
        yield
    finally:
        _here.reads_only = before


def _refuse_writes() -> bool:
    """Refuse write transactions on this thread from now on; returns the flag as it was, to put back."""
    before: bool = getattr(_here, "reads_only", False)
    _here.reads_only = True
    return before


class _WriterQueue:
    """Writers of one database file queue here before ``BEGIN IMMEDIATE``: threads of this process on a
    lock, processes on an ``flock`` of the file.

    SQLite's own busy handler sleeps and retries (1, 2, 5 ... up to 100 ms a
    sleep), so with two ``serve`` workers writing, a loser slept long past
    the winner's sub-millisecond commit: a one-path KV write load had a p99
    of 200-340 ms.  A queued writer instead wakes as soon as the lock is
    free.  It is only a queue in front of SQLite's lock, never instead of
    it: past ``timeout`` a writer goes on without it and SQLite decides as
    before.  ``flock`` does not touch SQLite's POSIX locks (separate lock
    kinds on Linux); the descriptor stays open for the process's life
    (closing any descriptor of the file would drop SQLite's POSIX locks), and
    a forked child opens its own (``flock`` belongs to the open file, which
    a child shares with its parent).
    """

    _lock = threading.Lock()
    _queues: dict[tuple[int, str], _WriterQueue] = {}

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.threads = threading.RLock()
        self.depth = 0
        self.flocked = False

    @classmethod
    def of(cls, path: str) -> _WriterQueue | None:
        """The queue of the file at ``path`` (a real path: one queue per file) in this process."""
        key = (os.getpid(), path)
        with cls._lock:
            queue = cls._queues.get(key)
            if queue is None:
                try:
                    queue = cls._queues[key] = cls(path)
                except OSError:
                    return None  # no queue: SQLite's busy handler alone, as before
            return queue

    def enter(self, timeout: float) -> bool:
        """Take this thread's turn (waiting up to ``timeout``); False: not taken, go on without the queue.
        A True is paired with one :meth:`exit` (a method pair, not a context manager: every write pays it)."""
        deadline = time.monotonic() + timeout
        if not self.threads.acquire(timeout=timeout):
            return False
        try:
            self.depth += 1
            if self.depth == 1:
                self.flocked = self._flock(deadline)
        except BaseException:
            self.exit()
            raise
        return True

    def exit(self) -> None:
        self._leave()
        self.threads.release()

    @contextmanager
    def taken_now(self) -> Iterator[bool]:
        """Hold the queue if nobody does (never waits): True; False if a writer holds or waits for it."""
        if not self.threads.acquire(blocking=False):
            yield False
            return
        try:
            if self.depth == 0:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    yield False
                    return
                self.flocked = True
            self.depth += 1
            try:
                yield True
            finally:
                self._leave()
        finally:
            self.threads.release()

    def _leave(self) -> None:
        """One holder of this thread's turn is done: the last one lets the file's lock go."""
        self.depth -= 1
        if self.depth == 0 and self.flocked:
            self.flocked = False
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _flock(self, deadline: float) -> bool:
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.0002)
            except OSError:
                return False


#: How often :meth:`SqliteStore.checkpoint_in_background` checkpoints (seconds), and the WAL size
#: (pages of 4 KiB) past which a commit still checkpoints itself.
CHECKPOINT_INTERVAL = 0.25
SAFETY_AUTOCHECKPOINT = 16_384


class SqliteStore(Store):
    scheme = "sqlite"
    supports_skip_locked = False

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        super().__init__(url)
        self.path = path_from_url(url)
        self._memory = self.path == ":memory:"
        self._real_path = "" if self._memory else os.path.realpath(self.path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        # every connection opened, with the thread it serves: a connection whose
        # thread has ended is closed when the next one is opened, so short-lived
        # threads (an HTTP server's handlers) do not leak file descriptors
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        #: set by :meth:`checkpoint_in_background`: the thread that copies the WAL back (in the process that
        #: started it; a forked child's connections checkpoint themselves again)
        self._checkpointer: _Checkpointer | None = None
        #: (pid, this file's writer queue): a forked child finds its own (see _WriterQueue)
        self._queue: tuple[int, _WriterQueue] | None = None
        if not self._memory:
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise StoreUnavailableError(f"directory {parent} for the SQLite store does not exist")

    def directory(self) -> Path | None:
        return None if self._memory else Path(self.path).resolve().parent

    def database_file(self) -> Path | None:
        return None if self._memory else Path(self.path)

    def copy_to(self, dest: Path) -> None:
        """SQLite's online backup API, in one step under one read transaction.

        In WAL mode writers keep committing meanwhile, and the copy is the
        snapshot the step started from.  The copy is switched out of WAL so
        it is one self-contained file, and synced to disk.  SQLite opens
        ``dest`` by path: callers give a path in a folder only they can write
        (:func:`nebula_credential.backups.copy_store` uses a private 0700 one).
        """
        if self._memory:
            super().copy_to(dest)
        try:
            src = sqlite3.connect(self.path, timeout=30)
            try:
                dst = sqlite3.connect(dest)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
            fd = os.open(dest, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    def _create_private(self) -> None:
        """Create a new database file 0600 whatever the umask; SQLite gives its -wal and -shm the same mode."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            return  # another opener created it first, or it already existed
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create SQLite store {self.path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        if not self._memory and not os.path.lexists(self.path):
            self._create_private()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            if not self._memory:
                self._enable_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
                if self._checkpointer is not None and self._checkpointer.pid == os.getpid():
                    self._leave_checkpoints(conn)  # a forked child has no thread: it keeps SQLite's own
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        with self._all_lock:
            alive = []
            for thread, old in self._all:
                if thread.is_alive():
                    alive.append((thread, old))
                else:
                    with contextlib.suppress(sqlite3.Error):
                        old.close()
            alive.append((threading.current_thread(), conn))
            self._all = alive
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL; on a new file several openers race for that switch, so retry briefly.

        SQLite does not apply the busy timeout to a journal-mode change.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _conn(self) -> sqlite3.Connection:
        if self._memory:
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, *, write: bool = True, autonomous: bool = False) -> Iterator[StoreTx]:
        if self._memory:  # one shared connection, one thread at a time
            with self._shared_lock:
                yield from self._begin(write)
            return
        yield from self._begin(write)

    def _begin(self, write: bool) -> Iterator[StoreTx]:
        """The transaction's body for both kinds of store: join this thread's open transaction, refuse a
        write under :func:`reads_only`, take the file's writer queue (a file's writers), then BEGIN.

        Generators delegated to, not context managers nested (the writer queue's turn is taken and left
        by method calls): each request pays at least one transaction (its audit event), and the layers of
        context managers were ~6 us of it."""
        conn = self._conn()
        if conn.in_transaction:  # nested use from the same thread: join it
            yield SqliteTx(conn)
            return
        if write and getattr(_here, "reads_only", False):
            raise WriteNeedsWorker()
        queue = self._writer_queue() if write and not self._memory else None
        if queue is None or not queue.enter(self._busy_timeout):
            yield from self._transaction(conn, write)
            return
        try:
            yield from self._transaction(conn, write)
        finally:
            queue.exit()

    def _writer_queue(self) -> _WriterQueue | None:
        """This file's writer queue in this process (kept: :meth:`_WriterQueue.of` takes a class-wide lock)."""
        pid = os.getpid()
        kept = self._queue
        if kept is not None and kept[0] == pid:
            return kept[1]
        queue = _WriterQueue.of(self._real_path)
        if queue is not None:
            self._queue = (pid, queue)
        return queue

    def read_one(self, fn: Callable[[StoreTx], T]) -> T:
        """One statement in autocommit (no BEGIN, no COMMIT): a single SELECT reads one snapshot on
        its own in SQLite too.  ``:memory:`` shares one locked connection and keeps :meth:`read`."""
        if self._memory:
            return super().read_one(fn)
        conn = self._conn()
        if conn.in_transaction:  # inside this thread's transaction: read in it
            return fn(SqliteTx(conn))
        try:
            return fn(SqliteTx(conn))
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    @property
    def reads_without_waiting(self) -> bool:  # type: ignore[override]
        return not self._memory  # WAL: a reader never waits for a writer; :memory: shares one locked connection

    def read_here(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        if self._memory:
            return False, None
        # :func:`reads_only` without its generator and context manager (~5 % of a KV read's store side)
        before = _refuse_writes()
        try:
            return True, fn(*args, **kwargs)
        except WriteNeedsWorker:
            return False, None
        finally:
            _here.reads_only = before

    @contextmanager
    def writer_free(self) -> Iterator[bool]:
        """Hold this file's writer queue if no writer of this process or, through the queue, of another
        holds it (never waits): True, and the caller's write begins at once; False otherwise."""
        queue = None if self._memory else self._writer_queue()
        if queue is None:
            yield False
            return
        with queue.taken_now() as free:
            yield free

    def _transaction(self, conn: sqlite3.Connection, write: bool) -> Iterator[StoreTx]:
        """One transaction on this thread's connection, rolled back on any error."""
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite store is busy or unavailable: {exc}") from exc
        try:
            yield SqliteTx(conn)
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _translate(exc, self.path) from exc
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"commit failed: {exc}") from exc

    def migrate(self) -> int:
        with self.transaction() as tx:
            assert isinstance(tx, SqlTx)
            return tx.apply_migrations(MIGRATIONS, "REAL")

    def checkpoint_in_background(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Copy the WAL into the database file from a thread of its own, every ``interval`` seconds,
        instead of in the commit that happens to cross SQLite's 1,000-page threshold.

        That commit is a request's (under ``serve``, an audit batch's or a KV
        write's, often run on the event loop): the checkpoint's page copies and
        its ``fsync`` of the database file stalled every request of the worker
        for milliseconds and cost ~10 % of a write's CPU on the loop.  A
        PASSIVE checkpoint never blocks readers or the writer.  Connections
        still checkpoint in their commit past :data:`SAFETY_AUTOCHECKPOINT`
        pages, so the WAL stays bounded if this thread falls behind.  For a
        long-lived process (``serve``); nothing for an in-memory store.
        """
        if self._memory or (self._checkpointer is not None and self._checkpointer.pid == os.getpid()):
            return
        try:
            self._checkpointer = _Checkpointer(self.path, interval, self._busy_timeout)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        with self._all_lock:
            for _, conn in self._all:  # opened before this call (start-up: none is in use yet)
                with contextlib.suppress(sqlite3.Error):
                    self._leave_checkpoints(conn)

    @staticmethod
    def _leave_checkpoints(conn: sqlite3.Connection) -> None:
        """This connection checkpoints in its own commits only past the safety bound, and a WAL that
        grew that far is cut back to it when it starts over."""
        conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_AUTOCHECKPOINT}")
        conn.execute(f"PRAGMA journal_size_limit={SAFETY_AUTOCHECKPOINT * 4096}")

    def close(self) -> None:
        if self._checkpointer is not None and self._checkpointer.pid == os.getpid():
            self._checkpointer.stop()
            self._checkpointer = None
        with self._all_lock:
            conns, self._all = [c for _, c in self._all], []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
        self._shared = None


class _Checkpointer:
    """A daemon thread with its own connection running ``PRAGMA wal_checkpoint(PASSIVE)``."""

    def __init__(self, path: str, interval: float, busy_timeout: float) -> None:
        self.pid = os.getpid()
        self._stopped = threading.Event()
        self._conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, args=(interval,), name="nebula-sqlite-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        try:
            while not self._stopped.wait(interval):
                with contextlib.suppress(sqlite3.Error):  # busy (another checkpoint), or the file went away
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


@contextmanager
def read_file(path: Path) -> Iterator[StoreTx]:
    """A read transaction on a SQLite store file opened read-only: a copy is read, never changed.

    Not even its journal mode is touched (opening it as a :class:`SqliteStore`
    would switch it to WAL).  A file that is no readable SQLite database
    raises :class:`StoreError` with SQLite's message.
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(str(exc)) from None
    try:
        conn.execute("BEGIN")
        yield SqliteTx(conn)
    except sqlite3.DatabaseError as exc:
        raise StoreError(str(exc)) from None
    finally:
        conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite ends some on its own, e.g. on a full disk)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _translate(exc: sqlite3.Error, path: str) -> NebulaCredentialError:
    """A typed error for a failed statement: the transaction was rolled back, nothing of it remains."""
    if isinstance(exc, sqlite3.IntegrityError):
        return ConcurrencyError(f"constraint violated in SQLite store {path}: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return StoreUnavailableError(f"SQLite store {path} is busy: {exc}; the transaction was rolled back")
    return StoreError(f"SQLite store {path} failed: {exc}; the transaction was rolled back")
