"""What bounds the cost an unauthenticated client can put on the server.

Every refused request is audited, and an audit event is a store write: a
client without a token could fill the disk through 404s alone (~16 MB/s
before).  Two guards sit in front of that write:

* :class:`SourceBuckets`, a token bucket per source address for requests
  that are unauthenticated or denied (``[server] unauthenticated_rate`` per
  second, ``unauthenticated_burst`` at once).  Past it the answer is 429
  with ``Retry-After`` and no audit event; the 429s are counted by
  ``nebula_credential_http_rate_limited_total{reason}``.  The table of
  addresses is bounded (the least recently seen is forgotten first), so a
  spread of addresses costs memory only up to :data:`MAX_SOURCES`.
* :class:`FreeSpaceFloor`: under ``[server] min_free_space`` free on the
  store's file system, writes and unauthenticated requests get 503 (and a
  log line, once a minute at most) while authenticated reads keep
  answering, so the last free bytes go to the audit events of reads.

Both hold for the whole ``serve``, not per worker: granian's workers accept
connections from one shared listening socket, so a client's connections
land on whichever worker accepts first, and a bucket per worker gave a
flood N times the budget with N workers.  Dividing the rate and burst by N
would be wrong both ways (a client on one keep-alive connection would get
1/N of its budget, a flood spread unevenly more than it).  So ``serve``
creates one small file (:class:`SharedTable`, ~400 KB, mode 0600, in
``/dev/shm`` or else the temporary folder) before the workers start, and
every worker maps it: buckets, the floor's last check and the refusal
counters live there, each change under a file lock.  A server built in-process (tests, embedding)
keeps them in the process (:class:`LocalTable`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..config import ServerConfig, parse_free_space

logger = logging.getLogger("nebula_credential.server")

#: Source addresses tracked at once (per budget in a process; about this many in the shared table).
MAX_SOURCES = 10_000

#: The environment variable naming the shared table's file (set by ``serve`` for its workers).
ENV_TABLE = "NEBULA_CREDENTIAL_SERVE_LIMITS"

#: Seconds a request past its source's budget waits for its 429 (see :func:`refuse_spent_source`).
REFUSAL_DELAY = 0.25

#: The budgets whose refusals are counted, the ``reason`` label's fixed set.
REASONS = ("unauthenticated_or_denied", "login_source", "login_user", "console_login")

#: A bucket's saved tokens and when it was last seen (``time.monotonic``, the same clock in every process).
Level = tuple[float, float]


class Table(Protocol):
    """Where buckets, the floor's state and the refusal counters live: one process's or one serve's."""

    def locked(self) -> Any: ...
    def get(self, key: str) -> Level | None: ...
    def put(self, key: str, level: Level) -> None: ...
    def floor_state(self) -> tuple[float, bool, float]: ...
    def set_floor_state(self, checked: float, low: bool, logged: float) -> None: ...
    def count(self, reason: str) -> None: ...
    def counts(self) -> dict[str, int]: ...


class LocalTable:
    """One process's table (a server built in-process): an LRU dict under a thread lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, Level] = OrderedDict()
        self._floor: tuple[float, bool, float] = (-math.inf, False, -math.inf)
        self._counts = dict.fromkeys(REASONS, 0)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def get(self, key: str) -> Level | None:
        return self._rows.get(key)

    def put(self, key: str, level: Level) -> None:
        self._rows[key] = level
        self._rows.move_to_end(key)
        while len(self._rows) > MAX_SOURCES:
            self._rows.popitem(last=False)

    def floor_state(self) -> tuple[float, bool, float]:
        return self._floor

    def set_floor_state(self, checked: float, low: bool, logged: float) -> None:
        self._floor = (checked, low, logged)

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


# The shared file: a header, then SLOTS rows of (key hash, tokens, last seen).
_MAGIC = b"NCLIMIT1"
_HEADER = struct.Struct(f"<8sQ16sddd{len(REASONS)}Q")
_HEADER_SIZE = 256
_ROW = struct.Struct("<Qdd")
_FLOOR_AT = 8 + 8 + 16
_FLOOR = struct.Struct("<ddd")
_COUNTS_AT = _FLOOR_AT + _FLOOR.size
_COUNT = struct.Struct("<Q")
#: What a change is about, one counter each (see :func:`note_change`), after the refusal counters:
#: ``access`` (tokens, policies, mounts: caches re-read cheaply) and ``keys`` (Transit keys: reloading
#: one unwraps it again, a provider round trip for KMS or an HSM), so a revocation reloads no key.
CHANGE_KINDS = ("access", "keys")
_CHANGES_AT = _COUNTS_AT + len(REASONS) * _COUNT.size
#: Rows of the shared table (a power of two); a key probes :data:`_PROBES` rows from its hash.
SLOTS = 16_384
_PROBES = 8


class SharedTable:
    """The table all workers of one ``serve`` map: a file of fixed size, changed under ``flock``.

    Keys are stored as a keyed 64-bit hash (the key is random per serve, so
    a client cannot choose addresses that collide with another's row); a
    key probes 8 rows and, when none is its own or free, takes the least
    recently seen one (which forgets that address: it starts again with a
    full burst, as an evicted address did in a worker's own table).
    """

    def __init__(self, path: str) -> None:
        self._thread_lock = threading.Lock()
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        magic, slots, salt, *_ = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or size != _HEADER_SIZE + slots * _ROW.size or slots & (slots - 1):
            self.close()
            raise ValueError(f"{path} is not a rate-limit table")
        self._slots: int = slots
        self._salt: bytes = salt

    @classmethod
    def create(cls, slots: int = SLOTS) -> str:
        """A new table file (mode 0600) for one ``serve``; the caller removes it when the serve ends."""
        # shared memory when the system has it (no disk writes, nothing left in the user's TMPDIR);
        # mkstemp: a random name, O_EXCL, mode 0600
        shm = "/dev/shm"  # noqa: S108
        folder = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="nebula-credential-limits-", dir=folder)
        try:
            os.ftruncate(fd, _HEADER_SIZE + slots * _ROW.size)
            header = _HEADER.pack(_MAGIC, slots, secrets.token_bytes(16), 0.0, 0.0, 0.0, *([0] * len(REASONS)))
            os.pwrite(fd, header, 0)
        finally:
            os.close(fd)
        return path

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:  # flock excludes other processes, not this one's threads
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _hash(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=self._salt).digest()
        return int.from_bytes(digest, "little") or 1  # 0 marks a free row

    def _row(self, key: str) -> tuple[int, int]:
        """(offset of ``key``'s row, its hash): its own, else a free one, else the least recently seen."""
        wanted = self._hash(key)
        victim, oldest = -1, math.inf
        for i in range(_PROBES):
            offset = _HEADER_SIZE + ((wanted + i) & (self._slots - 1)) * _ROW.size
            stored, _, seen = _ROW.unpack_from(self._map, offset)
            if stored == wanted:
                return offset, wanted
            if stored == 0:
                seen = -math.inf
            if seen < oldest:
                victim, oldest = offset, seen
        return victim, wanted

    def get(self, key: str) -> Level | None:
        offset, wanted = self._row(key)
        stored, tokens, seen = _ROW.unpack_from(self._map, offset)
        return (tokens, seen) if stored == wanted else None

    def put(self, key: str, level: Level) -> None:
        offset, wanted = self._row(key)
        _ROW.pack_into(self._map, offset, wanted, *level)

    def floor_state(self) -> tuple[float, bool, float]:
        checked, low, logged = _FLOOR.unpack_from(self._map, _FLOOR_AT)
        return checked, bool(low), logged

    def set_floor_state(self, checked: float, low: bool, logged: float) -> None:
        _FLOOR.pack_into(self._map, _FLOOR_AT, checked, float(low), logged)

    def count(self, reason: str) -> None:
        offset = _COUNTS_AT + REASONS.index(reason) * _COUNT.size
        with self.locked():
            _COUNT.pack_into(self._map, offset, _COUNT.unpack_from(self._map, offset)[0] + 1)

    def counts(self) -> dict[str, int]:
        return {reason: _COUNT.unpack_from(self._map, _COUNTS_AT + i * _COUNT.size)[0]
                for i, reason in enumerate(REASONS)}

    def changes(self, kind: str) -> int:
        """The serve's counter of ``kind`` changes: read without the lock (one aligned 8-byte word)."""
        return int(_COUNT.unpack_from(self._map, _CHANGES_AT + CHANGE_KINDS.index(kind) * _COUNT.size)[0])

    def note_change(self, kind: str) -> None:
        offset = _CHANGES_AT + CHANGE_KINDS.index(kind) * _COUNT.size
        with self.locked():
            _COUNT.pack_into(self._map, offset, _COUNT.unpack_from(self._map, offset)[0] + 1)


_shared: SharedTable | None = None
_shared_pid = 0  # the process that opened it: a forked worker opens its own (flock is per open file)
_shared_lock = threading.Lock()
_local_counts = LocalTable()  # the refusal counters of a process with no shared table


def shared_table() -> SharedTable | None:
    """This worker's view of its serve's table (opened once), or None outside ``serve``."""
    global _shared, _shared_pid
    path = os.environ.get(ENV_TABLE)
    if not path:
        return None
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            try:
                _shared, _shared_pid = SharedTable(path), os.getpid()
            except (OSError, ValueError) as exc:
                logger.warning("cannot open the shared rate-limit table %s (%s): this worker keeps its own, "
                               "so the budget of unauthenticated requests is per worker", path, exc)
                os.environ.pop(ENV_TABLE, None)
                return None
        return _shared


def _default_table() -> Table:
    return shared_table() or LocalTable()


def count_refusal(reason: str) -> None:
    (shared_table() or _local_counts).count(reason)


def refusal_counts() -> dict[str, int]:
    """429s given so far, per reason: the whole serve's, or this process's outside ``serve``."""
    return (shared_table() or _local_counts).counts()


def note_change(kind: str = "access") -> None:
    """Tell the other workers of this ``serve`` that a token was revoked, a policy changed or the
    mount table moved (``access``), or a Transit key changed (``keys``), so they drop those caches
    before their next request (:class:`ChangeWatch`).

    Without it a worker honoured a token revoked through another for up to ``cache_ttl``, did not
    know a mount enabled through another for up to a second, and encrypted with a rotated key's
    old version for up to ``refresh_interval``, where Vault's clients expect each at once.  Outside
    ``serve`` (one process) there is nothing to tell.
    """
    table = shared_table()
    if table is not None:
        table.note_change(kind)


class ChangeWatch:
    """One worker's view of its serve's change counters: :meth:`moved` names each kind once per change."""

    def __init__(self) -> None:
        self._table = shared_table()
        self._seen = [self._table.changes(k) if self._table is not None else 0 for k in CHANGE_KINDS]

    def moved(self) -> tuple[str, ...]:
        """The kinds changed since the last call (empty: nothing)."""
        if self._table is None:
            return ()
        now = [self._table.changes(k) for k in CHANGE_KINDS]
        if now == self._seen:
            return ()
        moved = tuple(k for k, before, after in zip(CHANGE_KINDS, self._seen, now, strict=True) if before != after)
        self._seen = now
        return moved


@contextmanager
def serve_table() -> Iterator[str]:
    """A shared table for the workers ``serve`` is about to start: its path is in the environment they
    inherit while the block runs, and the file is removed after."""
    path = SharedTable.create()
    os.environ[ENV_TABLE] = path
    try:
        yield path
    finally:
        os.environ.pop(ENV_TABLE, None)
        Path(path).unlink(missing_ok=True)


class SourceBuckets:
    """A token bucket per source address: ``rate`` tokens a second, at most ``burst`` saved.

    ``reason`` names the budget (one of :data:`REASONS`): the refusals it
    causes are counted under it, and buckets of different budgets never
    mix in a shared table.
    """

    def __init__(self, rate: float, burst: int, *, reason: str = REASONS[0],
                 clock: Callable[[], float] = time.monotonic, table: Table | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rate-limit reason {reason!r}")
        self.rate = rate
        self.burst = float(burst)
        self.reason = reason
        self._clock = clock
        self._table: Table = table if table is not None else _default_table()

    def _key(self, source: str) -> str:
        return f"{self.reason}\0{source}"

    def _level(self, source: str, now: float) -> float:
        tokens, seen = self._table.get(self._key(source)) or (self.burst, now)
        return min(self.burst, tokens + max(0.0, now - seen) * self.rate)

    def _spend(self, source: str) -> bool:
        with self._table.locked():
            now = self._clock()
            level = self._level(source, now)
            allowed = level >= 1.0
            self._table.put(self._key(source), (level - 1.0 if allowed else level, now))
        return allowed

    def take(self, source: str) -> bool:
        """Spend one token of ``source``'s bucket; False (nothing spent, a refusal counted) when it is empty."""
        allowed = self._spend(source)
        if not allowed:
            count_refusal(self.reason)
        return allowed

    def spend(self, source: str) -> None:
        """Spend a token for a failure that is answered anyway (a failed login): never counted as a refusal."""
        self._spend(source)

    def empty(self, source: str) -> bool:
        """Whether ``source`` has no token left (nothing spent).  Every caller answers 429 when it is,
        so an empty bucket is counted as a refusal."""
        with self._table.locked():
            empty = self._level(source, self._clock()) < 1.0
        if empty:
            count_refusal(self.reason)
        return empty

    def retry_after(self, source: str) -> int:
        """Whole seconds until ``source`` has a token again (at least 1)."""
        with self._table.locked():
            missing = 1.0 - self._level(source, self._clock())
        return max(1, math.ceil(missing / self.rate))


@dataclass
class FreeSpaceFloor:
    """Whether the store's file system is below the configured free-space floor (checked once a second
    for the whole serve, logged once a minute)."""

    directory: str | None
    floor_bytes: int
    floor_share: float
    table: Table = field(default_factory=_default_table, repr=False)

    def low(self) -> bool:
        if self.directory is None or (self.floor_bytes == 0 and self.floor_share == 0):
            return False
        now = time.monotonic()
        checked, low, _ = self.table.floor_state()  # a fresh answer needs no lock (a flock per write before)
        if now - checked < 1.0:
            return low
        log: tuple[int, int] | None = None
        with self.table.locked():
            checked, low, logged = self.table.floor_state()
            if now - checked < 1.0:
                return low
            try:
                usage = shutil.disk_usage(self.directory)
            except OSError:
                return low
            floor = max(self.floor_bytes, int(usage.total * self.floor_share))
            low = usage.free < floor
            if low and now - logged >= 60:
                logged, log = now, (usage.free, floor)
            self.table.set_floor_state(now, low, logged)
        if log is not None:
            logger.error("free space on %s is %d bytes, below the floor of %d ([server] min_free_space): "
                         "refusing writes and unauthenticated requests with 503 until space is freed",
                         self.directory, *log)
        return low


class RefusalCollector:
    """``nebula_credential_http_rate_limited_total{reason}`` for ``/metrics``: read from the serve's
    shared table, so any worker answers the whole serve's count."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        from ..metrics import RATE_LIMIT_METRIC

        family = CounterMetricFamily(RATE_LIMIT_METRIC.name.removesuffix("_total"), RATE_LIMIT_METRIC.help,
                                     labels=list(RATE_LIMIT_METRIC.labels))
        for reason, value in refusal_counts().items():
            family.add_metric([reason], value)
        yield family


@dataclass
class Guards:
    """A worker's guards, built from ``[server]`` and the store URL (their state is the serve's, see above)."""

    buckets: SourceBuckets
    floor: FreeSpaceFloor
    audit_path_chars: int

    @classmethod
    def from_config(cls, server: ServerConfig, directory: str | None) -> Guards:
        """``directory`` is the store's (a SQLite file's folder); None for a store whose disk is not ours."""
        floor_bytes, floor_share = parse_free_space(server.min_free_space)
        return cls(SourceBuckets(server.unauthenticated_rate, server.unauthenticated_burst),
                   FreeSpaceFloor(directory, floor_bytes, floor_share), server.audit_path_chars)


#: Paths served without a token and never audited (probes, the scrape); never refused by the early
#: check, which only moves forward the 429 of a request that would spend: a flood from a load
#: balancer's or a scraper's address (a proxy in front) must not take the server out of rotation.
OPEN_PATHS = frozenset({"/v1/sys/health", "/v1/sys/internal/specs/openapi", "/healthz", "/metrics"})


async def refuse_spent_source(scope: Any, send: Any) -> bool:
    """Answer 429 before any work when a request without a token comes from a source whose budget is
    spent; True when it did.

    The endpoint and the unrouted handler spend the budget and answer 429
    themselves; this check (the first step of the request path,
    :class:`~.dispatch.VaultRequestPath`) only moves that answer in front of
    path normalisation and routing, which cost milliseconds on a 65 kB path,
    so a flood past its budget costs next to nothing and an authorised
    client keeps its share of the worker.  It needs ``app.state.guards``,
    which the first audited request sets; before that it lets everything
    through.

    Under ``serve`` (``app.state.refusal_delay``, set to :data:`REFUSAL_DELAY`
    by :func:`~.run.app_from_env`; an app built in-process answers at
    once) the 429 is held back a quarter of a second (a tarpit): a
    client that waits for each answer, as a flooding tool on a fixed
    number of connections does, then sends at most four requests a second
    per connection once refused, instead of taking the worker's every turn from
    an authorised client (``wrk -c16`` on a 65 kB path: the authorised
    reader kept ~1/17 of the worker without it).  A sleeping request holds
    no thread and a few kilobytes; a client that honours ``Retry-After``
    never notices.
    """
    state = getattr(scope.get("app"), "state", None)
    guard: Guards | None = getattr(state, "guards", None)
    if guard is None or scope.get("path") in OPEN_PATHS or _has_token(scope):
        return False
    source = scope["client"][0] if scope.get("client") else ""
    if not guard.buckets.empty(source):
        return False
    await hold_back(state)
    await _too_many(send, guard.buckets.retry_after(source))
    return True


async def hold_back(state: Any) -> None:
    """Wait ``state.refusal_delay`` seconds (set under ``serve`` only) before a 429 past the budget."""
    delay: float = getattr(state, "refusal_delay", 0.0)
    if delay:
        await anyio.sleep(delay)


def _has_token(scope: Any) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"x-vault-token" and value:
            return True
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return True
    return False


async def _too_many(send: Any, retry_after: int) -> None:
    body = b'{"errors":["too many unauthenticated or denied requests from this address"]}'
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})
