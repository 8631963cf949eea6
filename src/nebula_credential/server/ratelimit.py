"""What bounds the cost an unauthenticated client can put on the server.

Every refused request is audited, and an audit event is a store write: a
client without a token could fill the disk through 404s alone (~16 MB/s
before).  Two guards sit in front of that write:

* :class:`SourceBuckets`, a token bucket per source address for requests
  that are unauthenticated or denied (``[server] unauthenticated_rate`` per
  second, ``unauthenticated_burst`` at once).  Past it the answer is 429
  with ``Retry-After`` and no audit event; the 429s are counted by
  ``nebula_credential_http_requests_total{status="429"}``.  The table of
  addresses is bounded (oldest evicted), so a spread of addresses costs
  memory only up to :data:`MAX_SOURCES`.
* :class:`FreeSpaceFloor`: under ``[server] min_free_space`` free on the
  store's file system, writes and unauthenticated requests get 503 (and a
  log line, once a minute at most) while authenticated reads keep
  answering, so the last free bytes go to the audit events of reads.

Both are per worker process: with N workers the budget is N times the
configured one, still a bound.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ServerConfig, parse_free_space

logger = logging.getLogger("nebula_credential.server")

#: Source addresses tracked at once; the least recently seen is forgotten first.
MAX_SOURCES = 10_000


class SourceBuckets:
    """A token bucket per source address: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, source: str, now: float) -> float:
        tokens, seen = self._buckets.get(source, (self.burst, now))
        return min(self.burst, tokens + (now - seen) * self.rate)

    def take(self, source: str) -> bool:
        """Spend one token of ``source``'s bucket; False (and nothing spent) when it is empty."""
        now = self._clock()
        level = self._level(source, now)
        allowed = level >= 1.0
        self._buckets[source] = (level - 1.0 if allowed else level, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > MAX_SOURCES:
            self._buckets.popitem(last=False)
        return allowed

    def empty(self, source: str) -> bool:
        """Whether ``source`` has no token left (nothing spent)."""
        return self._level(source, self._clock()) < 1.0

    def retry_after(self, source: str) -> int:
        """Whole seconds until ``source`` has a token again (at least 1)."""
        missing = 1.0 - self._level(source, self._clock())
        return max(1, math.ceil(missing / self.rate))


@dataclass
class FreeSpaceFloor:
    """Whether the store's file system is below the configured free-space floor (checked once a second)."""

    directory: str | None
    floor_bytes: int
    floor_share: float
    _checked: float = -math.inf
    _low: bool = False
    _logged: float = -math.inf

    def low(self) -> bool:
        if self.directory is None or (self.floor_bytes == 0 and self.floor_share == 0):
            return False
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                usage = shutil.disk_usage(self.directory)
            except OSError:
                return self._low
            floor = max(self.floor_bytes, int(usage.total * self.floor_share))
            self._low = usage.free < floor
            if self._low and now - self._logged >= 60:
                self._logged = now
                logger.error("free space on %s is %d bytes, below the floor of %d ([server] min_free_space): "
                             "refusing writes and unauthenticated requests with 503 until space is freed",
                             self.directory, usage.free, floor)
        return self._low


@dataclass
class Guards:
    """One worker's guards, built from ``[server]`` and the store URL."""

    buckets: SourceBuckets
    floor: FreeSpaceFloor
    audit_path_chars: int

    @classmethod
    def from_config(cls, server: ServerConfig, directory: str | None) -> Guards:
        """``directory`` is the store's (a SQLite file's folder); None for a store whose disk is not ours."""
        floor_bytes, floor_share = parse_free_space(server.min_free_space)
        return cls(SourceBuckets(server.unauthenticated_rate, server.unauthenticated_burst),
                   FreeSpaceFloor(directory, floor_bytes, floor_share), server.audit_path_chars)


#: Paths served without a token (probes); never refused by the early check.
OPEN_PATHS = frozenset({"/v1/sys/health", "/v1/sys/internal/specs/openapi"})


class SourceBudgetMiddleware:
    """Answer 429 before any work when a request without a token comes from a source whose budget is spent.

    The endpoint and the unrouted handler spend the budget and answer 429
    themselves; this check only moves that answer in front of path
    normalisation and routing, which cost milliseconds on a 65 kB path, so
    a flood past its budget costs next to nothing and an authorised client
    keeps its share of the worker.  It needs ``app.state.guards``, which
    the first audited request sets; before that it lets everything through.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = getattr(scope.get("app"), "state", None)
            guard: Guards | None = getattr(state, "guards", None)
            if guard is not None and not _has_token(scope) and scope.get("path") not in OPEN_PATHS:
                source = scope["client"][0] if scope.get("client") else ""
                if guard.buckets.empty(source):
                    await _too_many(send, guard.buckets.retry_after(source))
                    return
        await self.app(scope, receive, send)


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
