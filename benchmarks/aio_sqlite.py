"""How the asyncio API should meet SQLite: the options, measured (``docs/asyncio.md``).

32 tasks on one loop read random ids while 4 tasks write, for a fixed time;
for each option: read ops/s, read p99, and the loop's longest stall (a
probe task asking to wake every 2 ms):

* ``4 threads`` (what ``nc.aopen`` does): each operation runs whole on a
  pool of 4 threads, each owning a connection;
* ``dedicated thread``: the same on one thread owning the only connection;
* ``to_thread``: the sync API through ``asyncio.to_thread`` (default
  executor, one connection per worker thread);
* ``on the loop``: the sync API called directly in the coroutine (what
  not to do: every SQLite call, and every wait for its write lock, stalls
  the loop).

Also printed: the cost of one hop to a thread and back, which a
statement-level bridge (greenlet + connection thread, as on PostgreSQL)
would pay 4-5 times per ``get``.

Run: ``python -m benchmarks.aio_sqlite [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import nebula_credential as nc  # noqa: E402

from .aio_get import ROWS, Row, _tasks  # noqa: E402

Op = Callable[..., Awaitable[object]]


async def _probe(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.002)
        worst[0] = max(worst[0], time.perf_counter() - before - 0.002)


async def _load(name: str, get: Op, put: Op, seconds: float) -> tuple[Row, float]:
    """32 readers (measured as in aio_get) beside 4 writers, with the stall probe running."""
    deadline = time.perf_counter() + seconds

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            await put(f"cred-{rng.randrange(ROWS):05d}", {"w": n})
            await asyncio.sleep(0)

    stop, worst = asyncio.Event(), [0.0]
    probe = asyncio.create_task(_probe(stop, worst))
    row, *_ = await asyncio.gather(_tasks(name, get, seconds), *(writer(100 + i) for i in range(4)))
    stop.set()
    await probe
    return row, worst[0] * 1000


async def _hop_cost(n: int = 2000) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(pool, int)
        return (time.perf_counter() - start) / n * 1e6


async def main_async(url: str, seconds: float) -> str:
    avault = await nc.aopen(url)
    dedicated = await nc.aopen(url, threads=1)
    sync = nc.open(url)

    async def inline_get(cid: str) -> object:
        return sync.get(cid)

    async def inline_put(cid: str, value: object) -> object:
        return sync.put(cid, value)

    try:
        results = [
            await _load("4 threads (nc.aopen)", avault.get, avault.put, seconds),
            await _load("dedicated thread", dedicated.get, dedicated.put, seconds),
            await _load("to_thread", lambda c: asyncio.to_thread(sync.get, c),
                        lambda c, v: asyncio.to_thread(sync.put, c, v), seconds),
            await _load("on the loop", inline_get, inline_put, seconds),
        ]
        hop = await _hop_cost()
    finally:
        sync.close()
        await avault.close()
        await dedicated.close()
    lines = ["| option (32 readers + 4 writers) | get ops/s | p99 ms | max loop stall ms |", "|---|---:|---:|---:|"]
    lines += [f"| {row.name} | {row.ops:,.0f} | {row.p99_ms:.2f} | {stall:.1f} |" for row, stall in results]
    return "\n".join(lines) + f"\n\nOne hop to a thread and back: {hop:.0f} us."


def report(seconds: float = 2.0) -> str:
    """The markdown table, on a throwaway SQLite store."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NEBULA_CREDENTIAL_MASTER_KEY_FILE"] = str(Path(tmp) / "master.key")  # a new store, a new key
        url = f"sqlite:///{tmp}/bench.db"
        with nc.open(url, create=True) as seed:
            seed.put_many((f"cred-{i:05d}", {"token": "x" * 200, "i": i}, "production", None) for i in range(ROWS))
        return asyncio.run(main_async(url, seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aio_sqlite", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(report(args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
