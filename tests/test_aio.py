"""The asyncio API: cross-API envelopes, single-flight unwrap, load with another process
rotating, cancellation, and the event loop never stalled by our code."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import nebula_credential as nc
from nebula_credential import _bridge
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import ConfigError

from .helpers import cli_env, provider_config
from .test_postgres_multi_instance import Actor

T = TypeVar("T")

FAST_REFRESH = KeyManagementConfig.from_dict({"keys": {"refresh_interval": "1s"}})
AUDITED = KeyManagementConfig.from_dict({"audit": {"credentials": True}})


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


class LagProbe:
    """A task that asks to wake every 2 ms and records how late it woke (the loop's stall).

    ``max_lag`` is wall time, which on a shared machine includes the time the
    OS gave our thread to other processes; ``max_cpu`` is the CPU time the
    loop's thread itself spent in that longest window (our code, all tasks).
    """

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.max_lag = 0.0
        self.max_cpu = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.period)
            lag = time.perf_counter() - before - self.period
            if lag > self.max_lag:
                self.max_lag, self.max_cpu = lag, time.thread_time() - cpu
            self.samples += 1

    def __enter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def unwraps(vault: nc.AsyncVault) -> int:
    return vault.provider.calls.get("unwrap", 0)


# ---- API surface ---------------------------------------------------------------
def test_names_are_exported() -> None:
    assert nc.aopen is nc.aio.aopen and nc.AsyncVault is nc.aio.AsyncVault
    assert {"aopen", "AsyncVault"} <= set(nc.__all__)


def test_envelopes_cross_between_the_apis(store_url: str, key_file: Path) -> None:
    sync = nc.open(store_url, create=True)
    try:
        sync.put("from-sync", {"token": "s"}, scope="production", metadata={"owner": "a"})

        async def body() -> None:
            async with await nc.aopen(store_url) as v:
                record = await v.get_record("from-sync")
                assert (record.value, record.scope, record.metadata) == ({"token": "s"}, "production", {"owner": "a"})
                assert await v.put("from-async", [1, "two"], scope="user") == 1
                await v.keys.rotate(reason="test")
                assert await v.put("from-async", [3], scope="user") == 2
                tenant = v.keyring("tenant-b")
                await tenant.keys.initialize()
                await tenant.put("t", "tenant value")

        run(body)
        assert sync.get("from-async") == [3]
        assert sync.get_record("from-async").key_version == 2
        assert sync.keyring("tenant-b").get("t") == "tenant value"
        # the AAD binding is the same: an async-written envelope moved to another id fails
        with sync.store.transaction() as tx:
            row = tx.get_credential("default", "from-async")
            other = tx.get_credential("default", "from-sync")
            assert row is not None and other is not None
            tx.cas_update_envelopes("default", [("from-sync", other.revision, row.key_version, row.envelope)])
        with pytest.raises(nc.DecryptionError):
            sync.get("from-sync")

        async def tampered() -> None:
            async with await nc.aopen(store_url) as v:
                with pytest.raises(nc.DecryptionError):
                    await v.get("from-sync")
                assert (await v.status())["active_version"] == 2

        run(tampered)
        assert sync.audit.verify().ok
    finally:
        sync.close()


def test_same_typed_errors(store_url: str, key_file: Path) -> None:
    async def body() -> None:
        with pytest.raises(nc.StoreError):
            await nc.aopen(store_url)  # not initialised
        async with await nc.aopen(store_url, create=True) as v:
            with pytest.raises(nc.CredentialNotFoundError):
                await v.get("missing")
            with pytest.raises(nc.CredentialNotFoundError):
                await v.delete("missing")
            with pytest.raises(ValueError, match="JSON"):
                await v.put("x", {1, 2})
            with pytest.raises(ValueError, match="credential id"):
                await v.put("", 1)
            with pytest.raises(nc.PolicyViolationError):
                await v.keys.revoke(1)  # the active version
            with pytest.raises(ConfigError, match="reencrypt"):
                await v.reencrypt(workers=2)

    run(body)


def test_unsupported_url_and_bad_threads_are_refused() -> None:
    with pytest.raises(nc.ConfigError):
        run(lambda: nc.aopen("mysql://x"))
    with pytest.raises(ValueError, match="threads"):
        run(lambda: nc.aopen("sqlite:///:memory:", threads=0))


def test_list_streams_pages_and_put_many_takes_async_iterables(store_url: str, key_file: Path) -> None:
    async def items() -> Any:
        for i in range(2500):
            yield (f"c{i:05d}", {"i": i}, "production" if i % 2 else "user", None)

    async def body() -> None:
        async with await nc.aopen(store_url, create=True) as v:
            assert await v.put_many(items(), batch_size=700) == 2500
            assert await v.put_many([("extra", 1, "user", {"m": 1})]) == 1
            ids = [r.id async for r in v.list()]
            assert len(ids) == 2501 and ids == sorted(ids)
            assert len([r async for r in v.list(scope="production")]) == 1250
            assert (await v.get("c01234")) == {"i": 1234}

    run(body)


def test_async_progress_callback_and_resume_after_stop(store_url: str, key_file: Path) -> None:
    async def body() -> None:
        async with await nc.aopen(store_url, create=True) as v:
            await v.put_many((f"c{i}", i, "production", None) for i in range(100))
            await v.keys.rotate()
            seen: list[int] = []

            async def progress(scope: str, rows: int) -> None:
                await asyncio.sleep(0)
                seen.append(rows)

            first = await v.reencrypt(batch_size=10, progress=progress, should_stop=lambda: len(seen) >= 3)
            assert first.stopped and first.reencrypted == 30 and seen == [10, 10, 10]
            second = await v.reencrypt(batch_size=10)
            assert second.reencrypted == 70 and (await v.keys.credential_counts()) == {2: 100}

    run(body)


def test_sync_use_of_the_bridged_store_on_the_loop_is_refused(postgres_store_url_factory: Callable[[], str],
                                                              key_file: Path) -> None:
    url = postgres_store_url_factory()

    async def body() -> None:
        async with await nc.aopen(url, create=True) as v:
            with pytest.raises(RuntimeError, match="AsyncVault"):
                v.sync.get("anything")  # would block (deadlock) the loop

    run(body)


def test_a_postgres_vault_refuses_another_event_loop(postgres_store_url_factory: Callable[[], str],
                                                    key_file: Path) -> None:
    url = postgres_store_url_factory()
    vault = run(lambda: nc.aopen(url, create=True))
    with pytest.raises(RuntimeError, match="another event loop"):
        run(lambda: vault.get("x"))


# ---- single flight -----------------------------------------------------------------
def test_thousand_tasks_cause_one_unwrap_per_version(store_url: str, key_file: Path) -> None:
    with nc.open(store_url, create=True) as sync:
        sync.put("v1", "one")
        sync.keys.rotate()
        sync.put("v2", "two")

    async def body() -> None:
        async with await nc.aopen(store_url) as v:
            before = unwraps(v)
            got = await asyncio.gather(*(v.get("v1" if i % 2 else "v2") for i in range(1000)))
            assert got.count("one") == 500 and got.count("two") == 500
            assert unwraps(v) - before == 2
            await asyncio.gather(*(v.put(f"n{i}", i) for i in range(50)))
            assert unwraps(v) - before == 2  # v2 is active and already open

    run(body)


# ---- load with another process rotating and re-encrypting -----------------------------
@pytest.mark.services
def test_load_while_another_process_rotates_and_reencrypts(
    postgres_store_url_factory: Callable[[], str], key_file: Path, tmp_path: Path
) -> None:
    url = postgres_store_url_factory()
    ids = [f"cred-{i:03d}" for i in range(400)]
    halves = (ids[:200], ids[200:])
    expected: dict[str, Any] = {}
    with nc.open(url, create=True, config=FAST_REFRESH) as sync:
        for cid in ids:
            expected[cid] = {"id": cid, "round": 0}
        sync.put_many((cid, value, "production", None) for cid, value in expected.items())
    stop = tmp_path / "stop"
    daemon = Actor("daemon", url, stop, cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file)))
    figures: dict[str, float] = {}
    stretches = _bridge.segments = _bridge.SegmentStats()

    async def body() -> None:
        async with await nc.aopen(url, config=FAST_REFRESH) as v:
            before = unwraps(v)
            versions_seen: set[int] = set()
            rounds = after_rotation = 0
            with LagProbe() as probe:
                while after_rotation < 3:
                    rounds += 1
                    writing, reading = halves[rounds % 2], halves[(rounds + 1) % 2]

                    async def read(cid: str) -> None:
                        record = await v.get_record(cid)
                        versions_seen.add(record.key_version)
                        assert record.value == expected[cid], cid

                    async def write(cid: str, n: int = rounds) -> None:
                        await v.put(cid, {"id": cid, "round": n}, scope="production")

                    await asyncio.gather(*(read(reading[i % 200]) for i in range(1000)),
                                         *(write(cid) for cid in writing))
                    expected.update({cid: {"id": cid, "round": rounds} for cid in writing})
                    if any('"rotated"' in line for line in daemon.lines):
                        after_rotation += 1
                    if rounds > 200:
                        raise AssertionError(f"the daemon never rotated: {daemon.stderr()}")
            stop.touch()
            await asyncio.to_thread(daemon.finish)
            await v.keys.refresh()
            for cid in ids:
                record = await v.get_record(cid)
                versions_seen.add(record.key_version)
                assert record.value == expected[cid]
            assert (await v.pending())[1] == 0
            versions = {kv.version for kv in await v.keys.list()}
            assert versions == {1, 2}
            # exactly one unwrap per version this process used
            assert unwraps(v) - before == len(versions_seen) == 2
            figures.update(rounds=rounds, lag=probe.max_lag * 1000, lag_cpu=probe.max_cpu * 1000,
                           samples=probe.samples)

    gc.freeze()  # as a latency-minded service does after start-up: no full collection of the import graph
    try:
        run(body)
    finally:
        gc.unfreeze()
        _bridge.segments = None
        stop.touch()
        daemon.kill()
    print(f"\naio load: {figures['rounds']:.0f} rounds of 1000 gets + 200 puts beside a rotating "
          f"process; probe lag max {figures['lag']:.1f} ms wall ({figures['lag_cpu']:.1f} ms of it on "
          f"the loop's CPU) over {figures['samples']:.0f} probes; longest stretch of our sync code "
          f"between awaits {stretches.max_wall * 1000:.2f} ms wall, {stretches.max_cpu * 1000:.2f} ms "
          f"CPU over {stretches.count} stretches (ended in {stretches.where})", file=sys.stderr)
    # figures are reported, not asserted tightly: the cores are shared with other processes
    assert stretches.count > 10_000 and stretches.max_cpu < 0.2


# ---- cancellation --------------------------------------------------------------------
def test_cancellation_at_random_points_leaves_the_store_consistent(store_url: str, key_file: Path) -> None:
    rng = random.Random(15)
    old = {f"c{i:03d}": {"old": i} for i in range(200)}
    new = {cid: {"new": i} for i, cid in enumerate(old)}

    async def body() -> None:
        async with await nc.aopen(store_url, create=True, config=AUDITED) as v:
            await v.put_many((cid, value, "production", None) for cid, value in old.items())
            await v.keys.rotate()

            async def cancel_later(task: asyncio.Task[Any], hops: int) -> None:
                for _ in range(hops):
                    await asyncio.sleep(0)
                task.cancel()

            puts = [asyncio.create_task(v.put(cid, value, scope="production")) for cid, value in new.items()]
            await asyncio.gather(*(cancel_later(t, rng.randrange(0, 600)) for t in puts))
            outcomes = await asyncio.gather(*puts, return_exceptions=True)
            cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
            assert all(isinstance(o, int | asyncio.CancelledError) for o in outcomes), outcomes
            for cid, outcome in zip(new, outcomes, strict=True):
                record = await v.get_record(cid)
                if isinstance(outcome, int):
                    assert (record.value, record.revision) == (new[cid], outcome)
                else:  # rolled back whole, or committed whole before the cancellation landed
                    assert (record.value, record.revision) in ((old[cid], 1), (new[cid], 2))
            await v.keys.rotate()
            batches = 0
            # the pass waits at batch 15 (of 20) until the cancellation is sent: on a loaded
            # machine the SQLite thread could otherwise finish the pass before it lands
            cancel_sent = asyncio.Event()

            async def progress(scope: str, rows: int) -> None:
                nonlocal batches
                batches += 1
                if batches >= 15:
                    await cancel_sent.wait()

            pass_task = asyncio.create_task(v.reencrypt(batch_size=10, progress=progress))
            while batches < 5:
                await asyncio.sleep(0)
            for _ in range(rng.randrange(0, 20)):
                await asyncio.sleep(0)
            pass_task.cancel()
            cancel_sent.set()
            with pytest.raises(asyncio.CancelledError):
                await pass_task
            stale = (await v.pending())[1]
            assert 0 < stale < 200
            resumed = await v.reencrypt(batch_size=10)
            assert resumed.reencrypted == stale and resumed.ok
            assert await v.keys.credential_counts() == {3: 200}
            for cid in new:
                assert (await v.get(cid)) in (old[cid], new[cid])
            verified = await v.run_sync(v.sync.audit.verify)
            assert verified.ok, verified
            if hasattr(v.store, "pool_stats"):  # PostgreSQL: no connection lost to a cancellation
                stats = v.store.pool_stats()
                assert stats["pool_available"] == stats["pool_size"] and not stats.get("requests_waiting")
            print(f"\ncancelled {cancelled} of 200 puts", file=sys.stderr)

    run(body)


# ---- the benchmarks run (tiny sizes; nothing timed is asserted) ---------------------
def test_aio_benchmarks_produce_their_rows(postgres_store_url_factory: Callable[[], str], key_file: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import aio_get, aio_sqlite

    rows, stretches = aio_get.run(postgres_store_url_factory(), 0.05, 1)
    assert [r.name for r in rows] == ["async", "threads", "to_thread", "psycopg-async floor"]
    assert all(r.ops > 0 for r in rows) and stretches.count > 0
    assert "| to_thread |" in aio_get.table(rows)
    assert aio_sqlite.report(0.05).count("\n| ") == 4


# ---- network providers: their calls never hold the loop -----------------------------
async def _two_versions(url: str, config: KeyManagementConfig) -> None:
    async with await nc.aopen(url, config=config, create=True) as first:
        await first.put("a", {"token": "v1"})
        await first.keys.rotate()
        await first.put("b", [2])


async def _thousand_gets(v: nc.AsyncVault) -> list[str]:
    """1,000 concurrent gets over two key versions; the threads the provider's calls ran on."""
    threads: list[str] = []
    v.provider.observer = lambda provider, op, seconds, ok: threads.append(threading.current_thread().name)
    before = unwraps(v)
    got = await asyncio.gather(*(v.get("a" if i % 2 else "b") for i in range(1000)))
    assert got.count({"token": "v1"}) == 500 and got.count([2]) == 500
    assert unwraps(v) - before == 2  # one unwrap per version
    return threads


@pytest.mark.services
def test_vault_transit_calls_run_in_the_provider_pool_once_per_version(
    postgres_store_url_factory: Callable[[], str], openbao: Any
) -> None:
    url = postgres_store_url_factory()
    config = provider_config(openbao.settings())

    async def body() -> None:
        await _two_versions(url, config)
        async with await nc.aopen(url, config=config) as v:
            threads = await _thousand_gets(v)  # one OpenBao decrypt per version for 1,000 tasks
            await v.keys.rotate()  # a datakey from OpenBao, also off the loop
            assert len(threads) == 3 and all(t.startswith("nebula-provider") for t in threads), threads

    run(body)


@pytest.mark.services
def test_azure_key_vault_is_awaited_on_the_loop_with_the_same_rules(
    postgres_store_url_factory: Callable[[], str], azure_vault: Any
) -> None:
    """Azure has an asyncio SDK: its wraps and unwraps are awaited on the loop (no thread),
    once per version, retried and typed exactly as the sync client's."""
    from nebula_credential.exceptions import ProviderUnavailableError

    url = postgres_store_url_factory()
    config = provider_config(azure_vault.settings())
    server = azure_vault.server

    async def body() -> None:
        await _two_versions(url, config)
        async with await nc.aopen(url, config=config) as v:
            calls = server.count("POST", "/unwrapkey")
            with LagProbe() as probe:
                threads = await _thousand_gets(v)
            assert server.count("POST", "/unwrapkey") - calls == 2
            assert threads == [threading.current_thread().name] * 2  # on the loop's thread: awaited, not offloaded
            assert probe.samples > 0  # the loop went on while Key Vault answered
        async with await nc.aopen(url, config=config) as v:
            server.fail_next(2)  # 503, 503, then the answer: the base class's bounded retry, sleeping on the loop
            calls = server.count("POST", "/unwrapkey")
            assert await v.get("a") == {"token": "v1"}
            assert server.count("POST", "/unwrapkey") - calls == 3
        async with await nc.aopen(url, config=config) as v:
            server.fail_next(50)
            try:
                with pytest.raises(ProviderUnavailableError, match="during unwrap after 6 attempts"):
                    await v.get("b")
            finally:
                server.fail_next(0)

    run(body)


@pytest.mark.services
def test_an_azure_provider_closed_by_its_owner_on_the_loop_thread(
    postgres_store_url_factory: Callable[[], str], azure_vault: Any
) -> None:
    """Closing it in sync code on the loop's thread neither raises nor skips the rest of its close;
    its asyncio clients are closed by a task on their loop (review: the bridge's RuntimeError)."""
    from nebula_credential.providers import azure_keyvault

    url = postgres_store_url_factory()
    provider = azure_keyvault.AzureKeyVaultProvider.from_config(azure_vault.settings(), create=True)

    async def body() -> None:
        v = await nc.aopen(url, provider=provider, create=True)
        await v.put("a", [1])  # version 1's data key was wrapped through the asyncio client
        clients = provider._aio
        assert clients is not None
        closing = [c.close for c in clients._crypto.values()]
        assert closing
        provider.close()  # the owner's sync close, on the loop's thread
        assert provider._aio is None and len(azure_keyvault._CLOSING) == 1
        for _ in range(100):
            if not azure_keyvault._CLOSING:
                break
            await asyncio.sleep(0.01)
        assert not azure_keyvault._CLOSING  # the scheduled close ran to its end
        await v.close()

    run(body)


# ---- the bridge's lock --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["greenlet", "threading"])
def test_key_manager_lock_excludes_tasks_and_survives_cancellation(kind: str) -> None:
    """Tasks share the loop's thread: a threading.RLock lets them all in, the bridge's lock does not."""

    async def body() -> int:
        lock = _bridge.GreenletRLock() if kind == "greenlet" else threading.RLock()
        inside: list[int] = []
        most = 0

        def critical(i: int) -> None:
            nonlocal most
            with lock, lock:  # reentrant
                inside.append(i)
                most = max(most, len(inside))
                _bridge.await_only(asyncio.sleep(0.001))
                inside.remove(i)

        tasks = [asyncio.create_task(_bridge.greenlet_spawn(lambda i=i: critical(i))) for i in range(40)]
        await asyncio.sleep(0.005)
        for t in tasks[5::7]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(_bridge.greenlet_spawn(lambda: critical(99)), 5)  # free again
        return most

    most = run(body)
    assert most == 1 if kind == "greenlet" else most > 1
