"""The store backend interface: connections, transactions, retries, paging.

A backend is a :class:`Store` whose :meth:`Store.transaction` yields a
:class:`~.tx.StoreTx` (the queries, sliced by table family in :mod:`.tx`);
the records it reads and writes are in :mod:`.records`.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .._sleep import sleep
from ..exceptions import (
    CommitOutcomeUnknownError,
    CorruptRecordError,
    StoreError,
    StoreUnavailableError,
    TransientStoreError,
)
from ..models import EncryptedCredential
from ..providers.base import RetryPolicy
from .records import Page, VersionRow
from .tx import StoreTx

T = TypeVar("T")

logger = logging.getLogger("nebula_credential.store")

#: Store retries: a PostgreSQL restart takes a second or two, so back off up to ~3 s.
STORE_RETRY = RetryPolicy(attempts=6, base_delay=0.1, max_delay=3.0)


class Store(ABC):
    """A credential store backend: SQLite (embedded) or PostgreSQL (shared)."""

    scheme: str = ""
    #: True where fetch_for_reencryption(skip_locked=True) really skips locked rows.
    supports_skip_locked: bool = False

    def __init__(self, url: str, *, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.retry = retry or STORE_RETRY

    @abstractmethod
    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[StoreTx]:
        """A transaction; ``write=False`` may run without taking write locks.

        Nested use from the same thread joins the outer transaction, unless
        ``autonomous``: then, where the backend can (PostgreSQL), it runs on its
        own connection and commits at once.  Short bookkeeping writes (the
        encryption counter) use it so they never hold row locks for the length
        of a caller's batch.  SQLite has one writer and always joins.
        """

    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version now in force."""

    @abstractmethod
    def close(self) -> None: ...

    def ensure_connections(self, count: int) -> None:  # noqa: B027 - optional hook
        """Make room for ``count`` concurrent transactions (a pooled backend grows its pool)."""

    def checkpoint_in_background(self) -> None:  # noqa: B027 - optional hook
        """For a long-lived process: do the store's periodic housekeeping of its write log off the
        committing thread (SQLite's WAL checkpoints); nothing for a store without one."""

    def new_lock(self) -> AbstractContextManager[Any]:
        """A reentrant lock for the callers of this store (the key manager's).

        Threads get a ``threading.RLock``; the asyncio bridge's store hands out
        a greenlet-aware one, since its callers all share the loop's thread.
        """
        return threading.RLock()

    def directory(self) -> Path | None:
        """The folder holding a file-backed store (a local key file's default home), else None."""
        return None

    def database_file(self) -> Path | None:
        """The one file holding a file-backed store, which :meth:`copy_to` can copy; else None."""
        return None

    def copy_to(self, dest: Path) -> None:
        """A consistent online copy of a file-backed store into ``dest``, an existing empty file.

        The copy is one self-contained file, a snapshot taken while writers
        go on.  Only a store with a :meth:`database_file` can be copied; a
        failure raises :class:`StoreError` and may leave ``dest`` partly
        written (the caller removes it).
        """
        raise StoreError(f"store {redact_url(self.url)} is not a file that can be copied")

    def read(self) -> AbstractContextManager[StoreTx]:
        return self.transaction(write=False)

    #: Whether :meth:`read_here` may answer: a read never waits for a lock (SQLite's WAL file).
    reads_without_waiting = False

    def read_here(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        """Run ``fn`` on this thread if it only reads: ``(True, result)``; ``(False, None)`` when this
        store cannot, or ``fn`` asked for a write (refused before it began: nothing written), and the
        caller runs it again where it may wait (the server: on a worker thread, not its event loop)."""
        return False, None

    @contextmanager
    def writer_free(self) -> Iterator[bool]:
        """True, holding this store's writer queue, if no writer holds or waits for it (never waits);
        False if there is none or it is busy."""
        yield False

    def read_one(self, fn: Callable[[StoreTx], T]) -> T:
        """Run ``fn``, a read that sends exactly ONE statement, in the cheapest consistent way.

        One statement sees one snapshot on its own, so a store may skip the
        transaction around it (PostgreSQL: one round trip instead of BEGIN,
        SELECT, COMMIT).  Here it is simply :meth:`read`.  Inside a
        transaction of the same caller it joins that transaction, as
        :meth:`read` does.
        """
        with self.read() as tx:
            return fn(tx)

    def read_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """One credential's row, read as :meth:`read_one` reads.

        The one entry point for a single-credential read, so a store can do
        better than a statement per caller: the asyncio PostgreSQL store
        answers the reads of concurrent tasks with one statement.
        """
        return self.read_one(lambda tx: tx.get_credential(keyring, credential_id))

    def read_credential_version(self, keyring: str, credential_id: str, version: int | None
                                ) -> tuple[EncryptedCredential, VersionRow | None, int] | None:
        """What a KV read needs (:meth:`~.tx.VersionsTx.credential_version`), read as :meth:`read_one` reads.

        Like :meth:`read_credential`, the one entry point, so the asyncio
        PostgreSQL store can answer concurrent tasks' reads with one statement.
        """
        return self.read_one(lambda tx: tx.credential_version(keyring, credential_id, version))

    def run(
        self, fn: Callable[[StoreTx], T], *, write: bool = True, idempotent: bool = False
    ) -> T:
        """Run ``fn`` in a transaction, re-running the whole transaction after a lost connection.

        Only a :class:`TransientStoreError` is retried: the transaction was
        rolled back before its COMMIT was sent, so nothing of it remains and
        running ``fn`` again is safe (``fn`` must not have side effects
        outside the transaction).  A connection lost during COMMIT leaves the
        outcome unknown and is retried only for an ``idempotent`` ``fn`` (one
        that may apply twice without harm, such as a compare-and-swap).
        After the bounded attempts a
        :class:`StoreUnavailableError` names the store (password redacted).
        """
        delays: list[float] | None = None  # drawn at the first failure: most transactions never need them
        while True:
            try:
                with self.transaction(write=write) as tx:
                    return fn(tx)
            except StoreUnavailableError as exc:
                retryable = isinstance(exc, TransientStoreError) or (
                    idempotent and isinstance(exc, CommitOutcomeUnknownError)
                )
                if not retryable:
                    raise
                if delays is None:
                    delays = self.retry.delays()
                if not delays:
                    raise StoreUnavailableError(
                        f"store {redact_url(self.url)} unavailable after "
                        f"{self.retry.attempts} attempts: {exc}"
                    ) from exc
                delay = delays.pop(0)
                logger.warning("%s; running the transaction again in %.2fs", exc, delay)
                sleep(delay)

    def iter_credentials(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        page: int = 1000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[EncryptedCredential]:
        """Stream every matching credential, one page in memory at a time.

        A corrupt row raises, unless ``on_corrupt`` is given: then it is
        handed to that callback and the stream carries on with the next row.
        """
        skip = on_corrupt is not None
        return self.iter_pages(lambda tx, after_id, size: tx.list_credentials(
            keyring, scope=scope, key_version=key_version, after_id=after_id, limit=size, skip_corrupt=skip),
            page=page, on_corrupt=on_corrupt)

    def iter_pages(
        self,
        fetch: Callable[[StoreTx, Any, int], Page[T]],
        *,
        after: Any = None,
        limit: int | None = None,
        page: int = 1000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[T]:
        """Keyset paging: ``fetch(tx, after_id, size)`` one page per read transaction, at most ``limit`` rows."""
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            with self.read() as tx:
                rows = fetch(tx, after, size)
            if on_corrupt is not None:
                for exc in rows.corrupt:
                    on_corrupt(exc)
            yield from rows
            if rows.fetched < size:
                return
            after = rows.last_id
            if left is not None:
                left -= rows.fetched

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"


_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&]*")


def redact_url(url: str) -> str:
    """Drop a password (userinfo or libpq ``password=`` parameter) before a URL is printed."""
    url = _QUERY_SECRET.sub(r"\1***", url)
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
