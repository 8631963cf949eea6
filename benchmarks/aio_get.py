"""``get`` on PostgreSQL: the asyncio API beside the sync API in threads and via ``asyncio.to_thread``.

Three contenders, each with 32 concurrent callers reading random ids of a
seeded store for a fixed time, measured round-robin (one repetition of
each, then the next) so a burst of load from elsewhere hits all alike:

* ``async``: 32 tasks on one event loop awaiting ``AsyncVault.get``;
* ``threads``: 32 threads calling ``Vault.get``;
* ``to_thread``: 32 tasks awaiting ``asyncio.to_thread(vault.get, ...)``
  (the default executor, as an application would write it);
* ``psycopg-async floor``: no vault at all, 32 tasks running the three
  statements a ``get`` sent before ``Store.read_one`` (BEGIN REPEATABLE
  READ, the SELECT, COMMIT; a ``get`` now sends the SELECT alone, in
  autocommit) on a psycopg ``AsyncConnectionPool`` of the same size: the
  most an asyncio API over psycopg could reach with a transaction per read.

Every contender uses the store's default pool (10 connections).  Reported:
ops/s and p50/p99 latency (median over repetitions), and the longest
stretch the async API's own code held the loop.

Run: ``python -m benchmarks.aio_get [--seconds 3] [--reps 3] [--url postgresql://...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import nebula_credential as nc  # noqa: E402
from nebula_credential import _bridge  # noqa: E402

from ._pg import throwaway_cluster  # noqa: E402

CONCURRENCY = 32
ROWS = 1000


@dataclass
class Row:
    name: str
    ops: float
    p50_ms: float
    p99_ms: float


def _summary(name: str, latencies: list[float], seconds: float) -> Row:
    latencies.sort()
    return Row(name, len(latencies) / seconds, latencies[len(latencies) // 2] * 1000,
               latencies[int(len(latencies) * 0.99)] * 1000)


def bench_threads(vault: nc.Vault, seconds: float) -> Row:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        # at least one get each: on a loaded machine a worker may start after a short run's deadline
        while (start := time.perf_counter()) < deadline or not mine:
            vault.get(f"cred-{rng.randrange(ROWS):05d}")
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CONCURRENCY)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary("threads", latencies, time.perf_counter() - begin)


async def _tasks(name: str, get: Callable[[str], Awaitable[object]], seconds: float) -> Row:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def work(seed: int) -> None:
        rng = random.Random(seed)
        done = 0
        while (start := time.perf_counter()) < deadline or not done:  # at least one get each, as above
            await get(f"cred-{rng.randrange(ROWS):05d}")
            latencies.append(time.perf_counter() - start)
            done += 1
            await asyncio.sleep(0)  # a caller that never suspends (SQLite on the loop) must still take turns

    begin = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(CONCURRENCY)))
    return _summary(name, latencies, time.perf_counter() - begin)


def _floor(url: str) -> tuple[Callable[[str], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from psycopg_pool import AsyncConnectionPool

    pool: AsyncConnectionPool = AsyncConnectionPool(url, min_size=10, max_size=10, kwargs={"autocommit": True},
                                                    open=False)

    async def get(cid: str) -> object:
        async with pool.connection() as conn:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute("SELECT envelope FROM credentials WHERE keyring = %s AND id = %s",
                                     ("default", cid))
            row = await cur.fetchone()
            await conn.execute("COMMIT")
            return row

    async def opened() -> None:
        await pool.open(wait=True)

    return get, opened


def run(url: str, seconds: float, reps: int, *, uvloop: bool = False) -> tuple[list[Row], _bridge.SegmentStats]:
    with nc.open(url, create=True) as seed:
        seed.put_many((f"cred-{i:05d}", {"token": "x" * 200, "i": i}, "production", None) for i in range(ROWS))
    stretches = _bridge.SegmentStats()
    samples: dict[str, list[Row]] = {"async": [], "threads": [], "to_thread": [], "psycopg-async floor": []}

    async def main() -> None:
        avault = await nc.aopen(url)
        sync = nc.open(url)
        floor_get, floor_open = _floor(url)
        await floor_open()
        try:
            await asyncio.gather(*(avault.get(f"cred-{i:05d}") for i in range(50)))  # warm pools and keys
            sync.get("cred-00000")
            gc.collect()
            gc.freeze()
            for _ in range(reps):
                _bridge.segments = stretches
                samples["async"].append(await _tasks("async", avault.get, seconds))
                _bridge.segments = None
                samples["threads"].append(await asyncio.to_thread(bench_threads, sync, seconds))
                samples["to_thread"].append(
                    await _tasks("to_thread", lambda cid: asyncio.to_thread(sync.get, cid), seconds))
                samples["psycopg-async floor"].append(await _tasks("psycopg-async floor", floor_get, seconds))
        finally:
            gc.unfreeze()
            sync.close()
            await avault.close()

    if uvloop:
        import uvloop as uv  # the loop uvicorn and granian run applications on

        uv.run(main())
    else:
        asyncio.run(main())
    rows = [
        Row(name, statistics.median(r.ops for r in rs), statistics.median(r.p50_ms for r in rs),
            statistics.median(r.p99_ms for r in rs))
        for name, rs in samples.items()
    ]
    return rows, stretches


def table(rows: list[Row]) -> str:
    base = next(r for r in rows if r.name == "to_thread").ops
    lines = ["| contender (32 concurrent) | get ops/s | p50 ms | p99 ms | vs to_thread |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.ops:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.ops / base:.2f}x |")
    return "\n".join(lines)


def report(seconds: float = 3.0, reps: int = 3, url: str | None = None, *, uvloop: bool = False) -> str:
    """The markdown table and the loop figure (a throwaway cluster unless ``url``)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NEBULA_CREDENTIAL_MASTER_KEY_FILE"] = str(Path(tmp) / "master.key")  # a new store, a new key
        cluster = None
        if url is None:
            cluster = throwaway_cluster(tmp)
            url = cluster.url(schema=cluster.new_schema())
        try:
            rows, stretches = run(url, seconds, reps, uvloop=uvloop)
        finally:
            if cluster is not None:
                cluster.stop("immediate")
    return (f"{table(rows)}\n\nLongest stretch of the async API's sync code on the loop: "
            f"{stretches.max_wall * 1000:.2f} ms wall, {stretches.max_cpu * 1000:.2f} ms CPU "
            f"over {stretches.count:,} stretches.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aio_get", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per contender and repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--url", help="an empty PostgreSQL store (default: a throwaway cluster)")
    parser.add_argument("--uvloop", action="store_true", help="run the loop on uvloop (as uvicorn/granian do)")
    args = parser.parse_args(argv)
    print(report(args.seconds, args.reps, args.url, uvloop=args.uvloop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
