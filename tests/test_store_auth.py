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


def test_purge_removes_cubbyholes_and_wrapped_answers_of_gone_tokens(store: Store) -> None:
    from nebula_credential.store import TokenRow

    live = TokenRow(accessor="live-acc", token_hash="h1", parent=None, policies=("p",), display_name="t", meta={},
                    created_at=1.0, expires_at=None, max_expires_at=None, ttl=60.0, renewable=True)
    store.run(lambda tx: tx.token_insert(live))
    for owner in ("live-acc", "gone-acc"):
        store.run(lambda tx, o=owner: tx.auth_put("cubbyhole", o, "k", "{}", 1.0))  # type: ignore[misc]
        store.run(lambda tx, o=owner: tx.auth_put("sys/wrapping", "wrap", o, "{}", 1.0, uses_left=1))  # type: ignore[misc]
    assert store.run(lambda tx: tx.auth_purge_expired(2.0)) == 2
    with store.transaction() as tx:
        assert tx.auth_names("cubbyhole", "live-acc", 2.0) == ["k"]
        assert tx.auth_names("cubbyhole", "gone-acc", 2.0) == []
        assert tx.auth_names("sys/wrapping", "wrap", 2.0) == ["live-acc"]


def test_auth_key_survives_root_rotation(vault: object, clock: object) -> None:
    """The secret-id hashing key is root-wrapped and rewrapped by rotation: hashes made before still match,
    and sealed cubbyhole values still open."""
    import nebula_credential as nc
    from nebula_credential.rootkeys import rotate_root_key
    from nebula_credential.rootwrapped import AUTH_SECRET_KEY
    from nebula_credential.server.authstore import AuthStore

    assert isinstance(vault, nc.Vault)
    store = AuthStore(vault.auth_tables(), vault.provider, vault.clock)
    digest = store.hash("a-secret-id")
    store.put_sealed("cubbyhole", "acc", "k", {"v": "sealed"})
    with vault.store.read() as tx:
        before = tx.get_meta(AUTH_SECRET_KEY.meta_key)
    assert before is not None and digest not in before
    rotate_root_key(vault.store, vault.provider, vault.audit)
    with vault.store.read() as tx:
        assert tx.get_meta(AUTH_SECRET_KEY.meta_key) != before
    fresh = AuthStore(vault.auth_tables(), vault.provider, vault.clock)
    assert fresh.hash("a-secret-id") == digest
    assert fresh.open_sealed("cubbyhole", "acc", "k", fresh.get("cubbyhole", "acc", "k")) == {"v": "sealed"}


def test_items_and_mounts_keep_their_mac(store: Store) -> None:
    """Schema v10: the MAC written with an item or a mount comes back with it, on every backend."""
    from nebula_credential.store import MountRow

    store.run(lambda tx: tx.auth_put("m", "role", "r", '{"p": 1}', 1.0, expires_at=9.0, uses_left=3, mac="ab12"))
    with store.read() as tx:
        assert tx.auth_get_signed("m", "role", "r", 2.0) == ('{"p": 1}', 9.0, 3, "ab12")
        assert tx.auth_list_signed() == [("m", "role", "r", '{"p": 1}', 9.0, "ab12")]
    assert store.run(lambda tx: tx.auth_spend_signed("m", "role", "r", 2.0)) == ('{"p": 1}', 9.0, 2, "ab12")
    store.run(lambda tx: tx.auth_put("m", "role", "old", "{}", 1.0))  # as written before v10: no MAC
    with store.read() as tx:
        assert tx.auth_get_signed("m", "role", "old", 2.0) == ("{}", None, None, "")
    row = MountRow(path="kv9", kind="secret", type="kv", description="", accessor="kv_9", uuid="u", options=None,
                   config={}, keyring="kv9/kv_9", created_at=1.5, mac="cd34")
    store.run(lambda tx: tx.mount_insert(row))
    with store.read() as tx:
        assert tx.mount_get("secret", "kv9") == row
