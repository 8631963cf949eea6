"""The budget of unauthenticated and denied requests holds across the workers of one ``serve``.

Before: each granian worker kept its own token bucket per source address,
so with ``--workers 2`` a client flooding from one address got twice the
configured burst and rate (its connections land on whichever worker
accepts them first).  Now the buckets live in a small table all workers of
one ``serve`` map; the number of answers other than 429 to a flood from one
address stays within ``burst + rate x seconds`` (+1 for the token being
refilled when the flood starts).
"""

from __future__ import annotations

import concurrent.futures
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import cli_env
from .server_proc import Server, serve

RATE = 5.0
BURST = 40


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: Any) -> Iterator[Server]:
    folder: Path = tmp_path_factory.mktemp("ratelimit-workers")
    config = folder / "nebula.toml"
    config.write_text(f"[server]\nunauthenticated_rate = {RATE}\nunauthenticated_burst = {BURST}\n")
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(folder / "master.key"),
                  NEBULA_CREDENTIAL_CONFIG=str(config))
    with serve(folder, f"sqlite:///{folder / 'store.db'}", "--workers", "2", env=env) as server:
        server.root = server.token("root")
        yield server


def _get(server: Server, path: str, token: str) -> int:
    """One GET on a connection of its own (so the flood's connections spread over the workers): its status."""
    host, port = server.url.split("//")[1].rsplit(":", 1)
    auth = f"X-Vault-Token: {token}\r\n" if token else ""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode())
        head = sock.recv(64)
    return int(head.split(b" ", 2)[1])


def _flood(server: Server, seconds: float, path: str, token: str = "") -> tuple[int, int, float]:
    """(answers other than 429, 429s, elapsed) from 8 threads for ``seconds``, and on until 20 429s
    came back (at most 60 s: a machine loaded by other tests may need longer to spend the budget)."""
    started = time.monotonic()
    lock = threading.Lock()
    counts = [0, 0]

    def going() -> bool:
        elapsed = time.monotonic() - started
        return elapsed < seconds or (counts[1] < 20 and elapsed < 60)

    def one_thread(_: int) -> None:
        while going():
            status = _get(server, path, token)
            with lock:
                counts[status == 429] += 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one_thread, range(8)))
    return counts[0], counts[1], time.monotonic() - started


def _bound(elapsed: float) -> float:
    return BURST + RATE * elapsed + 1


def test_a_flood_without_a_token_gets_one_budget_across_two_workers(two_workers: Server) -> None:
    allowed, refused, elapsed = _flood(two_workers, 3.0, "/v1/x/" + "a" * 2000)
    assert refused > 0, ("the flood never reached the budget", allowed, elapsed)
    assert allowed <= _bound(elapsed), (allowed, refused, elapsed)
    time.sleep(BURST / RATE + 0.5)  # refilled for the next test


def test_the_refusals_are_counted_for_the_whole_serve(two_workers: Server) -> None:
    """Any worker's /metrics gives the serve's count of 429s, from a fixed set of reasons."""
    before = _refused_metric(two_workers)
    _, refused, _ = _flood(two_workers, 1.5, "/v1/nothing/here")
    assert refused > 0
    assert _get(two_workers, "/healthz", "") == 200  # probes and the scrape are not refused
    counts = [_refused_metric(two_workers) for _ in range(6)]  # new connections: both workers answer some
    assert all(c["unauthenticated_or_denied"] - before["unauthenticated_or_denied"] >= refused for c in counts)
    assert set(counts[0]) == {"unauthenticated_or_denied", "login_source", "login_user", "console_login"}
    time.sleep(BURST / RATE + 0.5)


def _refused_metric(server: Server) -> dict[str, float]:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    found = re.findall(r'^nebula_credential_http_rate_limited_total\{reason="(\w+)"\} (\S+)$',
                       body.decode(), re.MULTILINE)
    return {reason: float(value) for reason, value in found}


@pytest.mark.parametrize(("kind", "path", "status"), [
    ("denied", "/v1/secret/data/denied", 403),
    ("unknown", "/v1/secret/data/denied", 403),
    ("denied", "/v1/x/" + "a" * 2000, 404),  # unrouted with a valid token: audited, unbounded before
])
def test_a_flood_with_a_refused_token_gets_the_same_budget(two_workers: Server, kind: str, path: str,
                                                           status: int) -> None:
    """A token with no policy for the path (403, or 404 where nothing is routed) or no token the store
    knows: bucketed the same way, across the workers, though the early check (for requests without a
    token) lets them through."""
    token = two_workers.token("default") if kind == "denied" else "hvs.CAESIJunkJunkJunkJunkJunkJunk"
    assert _get(two_workers, path, token) == status
    allowed, refused, elapsed = _flood(two_workers, 2.0, path, token)
    assert refused > 0, (allowed, elapsed)
    assert allowed + 1 <= _bound(elapsed), (allowed, refused, elapsed)
    time.sleep(BURST / RATE + 0.5)
