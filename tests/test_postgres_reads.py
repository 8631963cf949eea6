"""A credential read on PostgreSQL is one statement in autocommit (``Store.read_one``),
through the sync and the async API, and still survives connections the server dropped.

On the asyncio API the reads of concurrent tasks share that one statement
(``_ReadBatcher``): each reader still gets exactly its own answer or error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import nebula_credential as nc
from nebula_credential.exceptions import CredentialNotFoundError, NebulaCredentialError
from nebula_credential.history import KVSettings

from .fixtures_postgres import PostgresCluster
from .helpers import FakeClock

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file terminates the store's sessions: the worker's own cluster, not the shared one."""
    return private_postgres_cluster


@pytest.fixture
def pg_url(postgres_store_url_factory: Callable[[], str]) -> str:
    return postgres_store_url_factory()


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement psycopg sends, sync or async (a spy: the real call still runs)."""
    sent: list[str] = []
    sync_execute, async_execute = psycopg.Connection.execute, psycopg.AsyncConnection.execute

    def spy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0])
        return sync_execute(self, query, *args, **kwargs)

    async def aspy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0])
        return await async_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    monkeypatch.setattr(psycopg.AsyncConnection, "execute", aspy)
    return sent


@pytest.fixture
def pg_vault(pg_url: str, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(pg_url, create=True, clock=clock)
    try:
        v.put("github", {"token": "t1"})
        yield v
    finally:
        v.close()


def test_a_sync_get_is_one_statement(pg_vault: nc.Vault, statements: list[str]) -> None:
    pg_vault.get("github")  # keys loaded, counters settled
    statements.clear()
    assert pg_vault.get("github") == {"token": "t1"}
    assert statements == ["SELECT"]  # no BEGIN ISOLATION LEVEL REPEATABLE READ / COMMIT around it


def test_an_async_get_is_one_statement(pg_vault: nc.Vault, pg_url: str, statements: list[str]) -> None:
    async def main() -> list[str]:
        async with await nc.aopen(pg_url) as vault:
            await vault.get("github")
            statements.clear()
            assert await vault.get("github") == {"token": "t1"}
            return list(statements)

    assert asyncio.run(main()) == ["SELECT"]


def test_a_missing_credential_is_still_not_found(pg_vault: nc.Vault) -> None:
    with pytest.raises(CredentialNotFoundError):
        pg_vault.get("nope")


def test_read_one_joins_the_callers_transaction(pg_vault: nc.Vault) -> None:
    store, kr = pg_vault.store, pg_vault.keys.keyring
    with store.transaction() as tx:
        assert store.read_one(lambda inner: inner is tx)
        tx.delete_credential(kr, "github")
        # the uncommitted delete is visible only to a read joined to this transaction
        assert store.read_one(lambda inner: inner.get_credential(kr, "github")) is None
    with pytest.raises(CredentialNotFoundError):
        pg_vault.get("github")


def test_get_after_the_server_dropped_every_connection(
    pg_vault: nc.Vault, pg_url: str, postgres_cluster: PostgresCluster
) -> None:
    pg_vault.get("github")
    assert postgres_cluster.terminate_backends() >= 1
    assert pg_vault.get("github") == {"token": "t1"}  # the dead pooled connection is replaced

    async def main() -> None:
        async with await nc.aopen(pg_url) as vault:
            await vault.get("github")
            assert postgres_cluster.terminate_backends() >= 1
            assert await vault.get("github") == {"token": "t1"}

    asyncio.run(main())


def test_concurrent_async_gets_share_one_statement(pg_vault: nc.Vault, pg_url: str, statements: list[str]) -> None:
    pg_vault.put_many((f"c{i}", {"i": i}, "default", None) for i in range(40))

    async def main() -> list[Any]:
        async with await nc.aopen(pg_url) as vault:
            await vault.get("github")
            statements.clear()
            ids = [f"c{i}" for i in range(40)] + ["missing-1", "missing-2"]
            return await asyncio.gather(*(vault.get(cid) for cid in ids), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:40] == [{"i": i} for i in range(40)]
    assert all(isinstance(r, CredentialNotFoundError) for r in results[40:])
    assert statements.count("SELECT") == 1  # 42 reads, one round trip (beside it: the usage counters' flush)


def test_a_corrupt_row_fails_only_its_own_reader(pg_vault: nc.Vault, pg_url: str) -> None:
    pg_vault.put_many((f"c{i}", {"i": i}, "default", None) for i in range(10))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE credentials SET envelope = %s WHERE id = 'c3'", (b"garbage!",))
        conn.execute("UPDATE credentials SET metadata = 'not json' WHERE id = 'c7'")

    async def main() -> list[Any]:
        async with await nc.aopen(pg_url) as vault:
            return await asyncio.gather(*(vault.get(f"c{i}") for i in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[3], NebulaCredentialError) and isinstance(results[7], NebulaCredentialError)
    assert [r for i, r in enumerate(results) if i not in (3, 7)] == [{"i": i} for i in range(10) if i not in (3, 7)]


def test_a_cancelled_reader_leaves_the_others_their_answers(pg_vault: nc.Vault, pg_url: str) -> None:
    pg_vault.put_many((f"c{i}", {"i": i}, "default", None) for i in range(20))

    async def main() -> list[Any]:
        async with await nc.aopen(pg_url) as vault:
            await vault.get("github")
            tasks = [asyncio.ensure_future(vault.get(f"c{i}")) for i in range(20)]
            await asyncio.sleep(0)  # every reader has registered; the statement is not answered yet
            tasks[5].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert await vault.get("c5") == {"i": 5}  # nothing was left waiting or half-read
            return results

    results = asyncio.run(main())
    assert isinstance(results[5], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 5] == [{"i": i} for i in range(20) if i != 5]


def test_concurrent_gets_after_the_server_dropped_every_connection(
    pg_vault: nc.Vault, pg_url: str, postgres_cluster: PostgresCluster
) -> None:
    pg_vault.put_many((f"c{i}", {"i": i}, "default", None) for i in range(20))

    async def main() -> list[Any]:
        async with await nc.aopen(pg_url) as vault:
            await asyncio.gather(*(vault.get(f"c{i}") for i in range(20)))  # several pooled connections
            assert postgres_cluster.terminate_backends() >= 1
            # the shared statement fails on a dead connection; each reader retries alone
            return await asyncio.gather(*(vault.get(f"c{i}") for i in range(20)))

    assert asyncio.run(main()) == [{"i": i} for i in range(20)]


def test_no_free_connection_fails_a_batch_once_not_once_per_reader(pg_vault: nc.Vault, pg_url: str) -> None:
    """The pool gives the shared read no connection within connect_timeout: every reader gets the
    store's typed error from that one wait (before, each then waited again alone: twice the
    timeout, and one pool request per reader at the moment the pool had none to give)."""
    from nebula_credential._bridge import await_only, greenlet_spawn
    from nebula_credential.exceptions import StoreUnavailableError
    from nebula_credential.store._async_postgres import BridgedPostgresStore

    async def main() -> tuple[list[Any], dict[str, int]]:
        store = await greenlet_spawn(lambda: BridgedPostgresStore(pg_url, pool_size=1, connect_timeout=1.0))
        holding, release = asyncio.Event(), asyncio.Event()

        def hold() -> None:
            with store.transaction():  # the pool's only connection
                holding.set()
                await_only(release.wait())

        holder = asyncio.ensure_future(greenlet_spawn(hold))
        await holding.wait()
        before = store.pool_stats().get("requests_errors", 0)
        results = await asyncio.gather(
            *(greenlet_spawn(lambda i=i: store.read_credential("default", f"c{i}")) for i in range(5)),
            return_exceptions=True)
        errors = store.pool_stats().get("requests_errors", 0) - before
        release.set()
        await holder
        await greenlet_spawn(store.close)
        return results, {"errors": errors}

    results, stats = asyncio.run(main())
    assert all(isinstance(r, StoreUnavailableError) for r in results), results
    assert stats["errors"] == 1


def _history_the_old_way(vault: nc.Vault, cid: str) -> tuple[Any, list[Any]] | None:
    kr = vault.keys.keyring
    with vault.store.read() as tx:
        head = tx.get_credential(kr, cid)
        return None if head is None else (head, tx.version_rows(kr, cid))


def test_a_kv_read_is_one_statement_and_sees_what_two_did(pg_vault: nc.Vault, statements: list[str]) -> None:
    """Issue 27: a KV v2 read (``read_version``) was BEGIN, two SELECTs and COMMIT on PostgreSQL, four
    round trips; now one statement returns the current row and every version row."""
    for n in range(4):
        pg_vault.put_version("app", {"n": n})
    pg_vault.read_version("app")  # keys loaded, counters settled
    statements.clear()
    versions, current = pg_vault.read_version("app")
    assert statements == ["SELECT"]
    assert current is not None and current.value == {"n": 3} and versions.current_version == 4
    _, old = pg_vault.read_version("app", 2)
    assert old is not None and old.value == {"n": 1}
    pg_vault.delete_versions("app", [1])
    pg_vault.destroy_versions("app", [4])  # the current version destroyed: the head row keeps its place
    kr = pg_vault.keys.keyring
    assert pg_vault.store.read_one(lambda tx: tx.credential_history(kr, "app")) == _history_the_old_way(pg_vault, "app")
    assert pg_vault.read_version("app")[1] is None
    assert pg_vault.read_version("app", 3)[1].value == {"n": 2}  # type: ignore[union-attr]
    assert pg_vault.store.read_one(lambda tx: tx.credential_history(kr, "nope")) is None
    with pytest.raises(CredentialNotFoundError):
        pg_vault.read_version("nope")


def test_concurrent_async_kv_reads_share_one_statement_and_each_gets_its_own_answer(
        pg_vault: nc.Vault, pg_url: str, statements: list[str]) -> None:
    """Issue 27: a KV read of the current version joins the shared statement of its loop turn, as ``get``
    does; each reader's answer is the one ``read_kv`` gives alone (a given version still reads alone)."""
    for i in range(20):
        for n in range(i % 4 + 1):
            pg_vault.put_version(f"k{i}", {"i": i, "n": n})
    pg_vault.delete_versions("k5")  # the current version soft-deleted: metadata, no data
    pg_vault.destroy_versions("k6", [1])
    pg_vault.set_settings("meta-only", KVSettings(max_versions=3))  # settings, no version yet
    ids = [f"k{i}" for i in range(20)] + ["meta-only", "missing"]
    alone = []
    for cid in ids:
        try:
            alone.append(pg_vault.read_kv(cid))
        except CredentialNotFoundError as exc:
            alone.append(exc)

    async def main() -> tuple[list[Any], list[str], Any]:
        async with await nc.aopen(pg_url) as vault:
            await vault.read_kv("k1")
            statements.clear()
            shared = await asyncio.gather(*(vault.read_kv(cid) for cid in ids), return_exceptions=True)
            sent = list(statements)
            return shared, sent, await vault.read_kv("k3", 2)

    shared, sent, given = asyncio.run(main())
    assert sent.count("SELECT") == 1  # 22 reads, one round trip
    for cid, mine, theirs in zip(ids, shared, alone, strict=True):
        if isinstance(theirs, Exception):
            assert isinstance(mine, CredentialNotFoundError), cid
        else:
            assert mine == theirs, cid
    assert shared[3].record.value == {"i": 3, "n": 3} and shared[5].record is None and shared[5].info is not None
    assert shared[20].info is None and shared[20].current_version == 0 and shared[20].settings.max_versions == 3
    assert given.record.value == {"i": 3, "n": 1} and given.info.version == 2


def test_the_one_statement_history_is_the_two_statement_history_on_sqlite(tmp_path: Path, key_file: Path,
                                                                            clock: FakeClock) -> None:
    with nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True, clock=clock) as vault:
        kr = vault.keys.keyring
        vault.put("plain", {"a": 1})  # written without versions by the plain API
        for n in range(3):
            vault.put_version("kv", {"n": n})
        vault.destroy_versions("kv", [2])
        for cid in ("plain", "kv", "none"):
            assert vault.store.read_one(lambda tx, c=cid: tx.credential_history(kr, c)) == \
                _history_the_old_way(vault, cid)
        assert vault.read_version("kv")[1].value == {"n": 2}  # type: ignore[union-attr]
