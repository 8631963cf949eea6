"""A credential read on PostgreSQL is one statement in autocommit (``Store.read_one``),
through the sync and the async API, and still survives connections the server dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import nebula_credential as nc
from nebula_credential.exceptions import CredentialNotFoundError

from .fixtures_postgres import PostgresCluster
from .helpers import FakeClock

pytestmark = pytest.mark.services


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
