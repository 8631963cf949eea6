"""Key access counters: every credential read, and every failed one, counted cheaply.

The key-access-error alert needs a ratio (failed reads / reads).  Auditing
every read would cost a write per read; instead each process counts reads
per keyring, key version and minute in memory and adds them to the store's
``key_access`` table a block at a time (every ``block`` reads or
``max_age`` seconds, and when the vault closes), the way the encryption
counter reserves nonces in blocks.  ``status``, the daemon's ``/metrics``
and the shipped Prometheus rule read the sums, so the alert works with the
default configuration and sees every process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from .exceptions import NebulaCredentialError
from .store import Store

log = logging.getLogger(__name__)

BUCKET_SECONDS = 60
#: Versions above this (a garbage header) are counted under 0: the column is a 32-bit INTEGER.
MAX_COUNTED_VERSION = 2**31 - 1


def bucket_of(at: datetime) -> int:
    """The minute bucket a moment falls in (seconds since the epoch // 60)."""
    return int(at.timestamp()) // BUCKET_SECONDS


class AccessCounter:
    """In-memory counts for one store, flushed in blocks; safe to share between threads and keyrings."""

    def __init__(self, store: Store, clock: Callable[[], datetime], *, block: int = 1000,
                 max_age: float = 10.0) -> None:
        self.store = store
        self.clock = clock
        self.block = block
        self.max_age = max_age
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int, int], list[int]] = {}
        self._pending = 0
        self._last_flush = time.monotonic()
        self._warned = False

    def record(self, keyring: str, version: int, ok: bool) -> None:
        """Count one access under ``version``; flush when a block is full or old enough."""
        key = (keyring, version if 0 < version <= MAX_COUNTED_VERSION else 0, bucket_of(self.clock()))
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                entry = self._counts[key] = [0, 0]
            entry[0] += 1
            if not ok:
                entry[1] += 1
            self._pending += 1
            due = self._pending >= self.block or time.monotonic() - self._last_flush >= self.max_age
        if due:
            self.flush()

    def flush(self) -> None:
        """Add what was counted to the store; on a store failure keep the counts for the next try."""
        with self._lock:
            taken, self._counts, self._pending = self._counts, {}, 0
            self._last_flush = time.monotonic()
        if not taken:
            return
        try:
            with self.store.transaction() as tx:
                for (keyring, version, bucket), (accesses, failures) in taken.items():
                    tx.add_key_access(keyring, version, bucket, accesses, failures)
        except BaseException as exc:  # whatever stopped the write, the counts stay for the next flush
            with self._lock:
                for key, (accesses, failures) in taken.items():
                    entry = self._counts.setdefault(key, [0, 0])
                    entry[0] += accesses
                    entry[1] += failures
                    self._pending += accesses
            if not isinstance(exc, NebulaCredentialError | NotImplementedError):
                raise  # e.g. a cancellation, or a read on the server's loop that must not write
            if not self._warned:
                self._warned = True
                log.warning("key access counters not saved (%s); kept in memory for the next flush",
                            type(exc).__name__)


def access_totals(store: Store, keyring: str, since: datetime | None = None) -> tuple[int, int]:
    """(accesses, failures) of ``keyring`` from every process, since ``since`` (minute resolution)."""
    with store.read() as tx:
        totals = tx.key_access_totals(None if since is None else bucket_of(since))
    accesses = sum(a for (kr, _), (a, _f) in totals.items() if kr == keyring)
    failures = sum(f for (kr, _), (_a, f) in totals.items() if kr == keyring)
    return accesses, failures
