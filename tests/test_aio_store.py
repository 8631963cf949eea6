"""The store conformance tests, run again on the asyncio bridge's PostgreSQL store.

``BridgedPostgresStore`` is ``PostgresStore`` with psycopg's async pool
behind it; here its statements are awaited on an event loop in another
thread (the portal) while the unchanged sync tests drive it, so every
store rule is checked through the async driver too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nebula_credential._bridge import greenlet_spawn
from nebula_credential.store import Store
from nebula_credential.store._async_postgres import BridgedPostgresStore

from .aio_adapter import Portal, portal_fixture  # noqa: F401 - fixture
from .test_store_conformance import (  # noqa: F401 - collected again on the bridged store
    test_bulk_upsert_list_count_delete,
    test_encryption_counter_adds_up,
    test_failed_transaction_leaves_nothing,
    test_fetch_for_reencryption_pages_by_scope_and_version,
    test_lease_take_renew_expire_release,
    test_meta_upsert,
    test_nested_transaction_joins_the_outer_one,
    test_one_active_version_per_keyring_is_enforced_by_the_database,
    test_put_bumps_revision_and_cas_refuses_a_stale_one,
    test_run_returns_the_result,
    test_version_roundtrip_and_status_cas,
)


def _opened(url: str) -> BridgedPostgresStore:
    store = BridgedPostgresStore(url)
    store.migrate()
    return store


@pytest.fixture
def store(postgres_store_url_factory: Callable[[], str], portal: Portal) -> Iterator[Store]:
    url = postgres_store_url_factory()
    s = portal.call(greenlet_spawn(lambda: _opened(url)))
    try:
        yield s
    finally:
        portal.call(greenlet_spawn(s.close))


def test_the_bridged_store_really_is_async(store: Store) -> None:
    assert isinstance(store, BridgedPostgresStore)
    with store.read() as tx:
        assert tx.get_meta("nothing") is None
    assert store.pool_stats()["pool_size"] >= 1
