"""The auth items' table on every backend: a use is spent exactly once under concurrency, expiry holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from nebula_credential.store import Store, open_store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def test_put_get_list_delete(store: Store) -> None:
    store.run(lambda tx: tx.auth_put("auth/x", "role", "b", '{"v": 1}', 100.0))
    store.run(lambda tx: tx.auth_put("auth/x", "role", "a", '{"v": 2}', 100.0, expires_at=150.0))
    with store.transaction() as tx:
        assert tx.auth_names("auth/x", "role", 120.0) == ["a", "b"]
        assert tx.auth_names("auth/x", "role", 200.0) == ["b"]  # expired items are gone from lists
        assert tx.auth_get("auth/x", "role", "a", 120.0) == ('{"v": 2}', 150.0, None)
        assert tx.auth_get("auth/x", "role", "a", 151.0) is None
        assert tx.auth_get("auth/y", "role", "b", 120.0) is None  # another mount
    assert store.run(lambda tx: tx.auth_delete("auth/x", "role", "b"))
    assert store.run(lambda tx: tx.auth_delete_kind("auth/x", "role")) == 1


def test_limited_uses_are_spent_once(store: Store) -> None:
    store.run(lambda tx: tx.auth_put("m", "sid", "h", "{}", 1.0, uses_left=2))
    assert store.run(lambda tx: tx.auth_spend("m", "sid", "h", 2.0)) == "{}"
    assert store.run(lambda tx: tx.auth_spend("m", "sid", "h", 2.0)) == "{}"
    assert store.run(lambda tx: tx.auth_spend("m", "sid", "h", 2.0)) is None
    with store.transaction() as tx:
        assert tx.auth_get("m", "sid", "h", 2.0) is None  # the last use removed the row
    store.run(lambda tx: tx.auth_put("m", "sid", "u", "{}", 1.0))  # unlimited
    for _ in range(3):
        assert store.run(lambda tx: tx.auth_spend("m", "sid", "u", 2.0)) == "{}"
    store.run(lambda tx: tx.auth_put("m", "sid", "e", "{}", 1.0, expires_at=5.0, uses_left=3))
    assert store.run(lambda tx: tx.auth_spend("m", "sid", "e", 6.0)) is None  # expired


def test_concurrent_spends_of_one_use(store: Store) -> None:
    store.run(lambda tx: tx.auth_put("m", "sid", "once", '{"x": 1}', 1.0, uses_left=1))
    results: list[str | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def spend() -> None:
        start.wait()
        got = store.run(lambda tx: tx.auth_spend("m", "sid", "once", 2.0))
        with lock:
            results.append(got)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count('{"x": 1}') == 1


def test_purge_expired(store: Store) -> None:
    store.run(lambda tx: tx.auth_put("m", "w", "old", "{}", 1.0, expires_at=5.0))
    store.run(lambda tx: tx.auth_put("m", "w", "new", "{}", 1.0, expires_at=50.0))
    store.run(lambda tx: tx.auth_put("m", "w", "forever", "{}", 1.0))
    assert store.run(lambda tx: tx.auth_purge_expired(10.0)) == 1
    with store.transaction() as tx:
        assert tx.auth_names("m", "w", 10.0) == ["forever", "new"]
