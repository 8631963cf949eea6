"""Store-level semantics, the same on every backend (``store_url`` runs each test on
SQLite and on a real PostgreSQL), plus the PostgreSQL-only coordination primitives."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nebula_credential.exceptions import ConcurrencyError, StoreError
from nebula_credential.models import KeyStatus, KeyVersion
from nebula_credential.store import (
    SCHEMA_VERSION,
    AuditRow,
    CredentialsTx,
    KeysTx,
    MetaTx,
    OperationsTx,
    ServerTx,
    Store,
    StoreTx,
    open_store,
    read_file_copy,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def kv(version: int, status: KeyStatus = KeyStatus.ACTIVE, keyring: str = "kr") -> KeyVersion:
    return KeyVersion(
        keyring=keyring, version=version, status=status, created_at=NOW, provider="local",
        wrapped_key=bytes([version]) * 40, expires_at=NOW + timedelta(days=90),
        status_changed_at=NOW, reason="test",
    )


def put(
    store: Store, cid: str, *, version: int = 1, scope: str = "production", kr: str = "kr"
) -> int:
    with store.transaction() as tx:
        return tx.put_credential(kr, cid, scope, version, b"env-" + cid.encode(), {"m": cid}, NOW)


# ---- schema ------------------------------------------------------------------
def test_migrations_are_idempotent(store_url: str) -> None:
    for _ in range(3):
        s = open_store(store_url)
        try:
            assert s.migrate() == SCHEMA_VERSION
            with s.read() as tx:
                assert tx.schema_version() == SCHEMA_VERSION
                rows = tx._exec("SELECT COUNT(*) FROM schema_version").fetchone()  # type: ignore[attr-defined]
                assert rows[0] == SCHEMA_VERSION  # one row per migration, none applied twice
        finally:
            s.close()


def test_concurrent_first_migrations_apply_once(store_url: str) -> None:
    stores = [open_store(store_url, migrate=False) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(s: Store) -> None:
        barrier.wait()
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        with stores[0].read() as tx:
            assert tx.schema_version() == SCHEMA_VERSION
            assert tx._exec("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION  # type: ignore[attr-defined]
    finally:
        for s in stores:
            s.close()


def test_newer_schema_is_refused(store: Store, store_url: str) -> None:
    with store.transaction() as tx:
        tx._exec(  # type: ignore[attr-defined]
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            (SCHEMA_VERSION + 1, 0.0),
        )
    with pytest.raises(StoreError, match="newer than this library"):
        open_store(store_url)


# ---- meta and key versions ---------------------------------------------------
def test_meta_upsert(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.get_meta("x") is None
        tx.set_meta("x", "1")
        tx.set_meta("x", "2")
    with store.read() as tx:
        assert tx.get_meta("x") == "2"


def test_version_roundtrip_and_status_cas(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_version(kv(1))
    later = NOW + timedelta(hours=1)
    with store.transaction() as tx:
        assert tx.set_status("kr", 1, KeyStatus.VALID, KeyStatus.REVOKED, later) is False
        assert tx.set_status("kr", 1, KeyStatus.ACTIVE, KeyStatus.VALID, later) is True
        assert tx.set_status("kr", 1, KeyStatus.VALID, KeyStatus.REVOKED, later) is True
    with store.read() as tx:
        got = tx.get_version("kr", 1)
        assert got is not None
        assert got.status is KeyStatus.REVOKED
        assert got.revoked_at == later
        assert got.wrapped_key == bytes([1]) * 40
        assert got.expires_at == NOW + timedelta(days=90)
        assert tx.keyrings() == ["kr"]
    with store.transaction() as tx:
        assert tx.set_status("kr", 1, KeyStatus.REVOKED, KeyStatus.DESTROYED, later)
    with store.read() as tx:
        gone = tx.get_version("kr", 1)
        assert gone is not None and gone.wrapped_key is None and gone.destroyed_at == later


def test_one_active_version_per_keyring_is_enforced_by_the_database(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_version(kv(1))
        tx.insert_version(kv(1, keyring="other"))  # another keyring has its own active
    with pytest.raises((ConcurrencyError, sqlite3.IntegrityError)), store.transaction() as tx:
        # a direct insert, no lock_keyring, no application check: only the index stops it
        tx._exec(  # type: ignore[attr-defined]
            "INSERT INTO key_versions (keyring, version, status, provider, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            ("kr", 2, "active", "local", 0.0),
        )
    with store.read() as tx:
        assert [v.version for v in tx.list_versions("kr")] == [1]


def test_encryption_counter_adds_up(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_version(kv(1))
    with store.transaction() as tx:
        assert tx.add_encryptions("kr", 1, 4096) == 4096
        assert tx.add_encryptions("kr", 1, 4096) == 8192
    with store.transaction() as tx:
        tx.set_wrapped_key("kr", 1, b"rewrapped", "root-2")
    with store.read() as tx:
        v = tx.get_version("kr", 1)
        assert v is not None and v.encryptions == 8192
        assert v.wrapped_key == b"rewrapped" and v.root_key_id == "root-2"


# ---- credentials -------------------------------------------------------------
def test_put_bumps_revision_and_cas_refuses_a_stale_one(store: Store) -> None:
    assert put(store, "a") == 1
    assert put(store, "a") == 2
    with store.transaction() as tx:
        # revision 1 is stale: an application write happened since it was read
        assert tx.cas_update_envelopes("kr", [("a", 1, 2, b"stale")]) == 0
        assert tx.cas_update_envelopes("kr", [("a", 2, 2, b"fresh"), ("missing", 1, 2, b"x")]) == 1
    with store.read() as tx:
        row = tx.get_credential("kr", "a")
    assert row is not None
    assert (row.envelope, row.key_version, row.revision) == (b"fresh", 2, 3)
    assert row.metadata == {"m": "a"}


def test_bulk_upsert_list_count_delete(store: Store) -> None:
    rows = [(f"c{i:03}", "user" if i % 2 else "production", 1, b"e", {"i": i}) for i in range(25)]
    with store.transaction() as tx:
        tx.put_credentials("kr", rows, NOW)
        tx.put_credentials("kr", rows[:5], NOW)  # upsert: revision 2, no duplicates
    with store.read() as tx:
        assert tx.count_by_version("kr") == {1: 25}
        assert tx.scopes_for_version("kr", 1) == ["production", "user"]
        first = tx.list_credentials("kr", limit=10)
        second = tx.list_credentials("kr", after_id=first[-1].id, limit=10)
        assert [r.id for r in first + second] == [f"c{i:03}" for i in range(20)]
        assert tx.get_credential("kr", "c000").revision == 2  # type: ignore[union-attr]
        assert len(tx.list_credentials("kr", scope="user", key_version=1)) == 12
    assert len(list(store.iter_credentials("kr", page=7))) == 25
    with store.transaction() as tx:
        assert tx.delete_credential("kr", "c000") is True
        assert tx.delete_credential("kr", "c000") is False


def test_fetch_for_reencryption_pages_by_scope_and_version(store: Store) -> None:
    for i in range(6):
        put(store, f"p{i}", version=1, scope="production")
    put(store, "u0", version=1, scope="user")
    put(store, "n0", version=2, scope="production")
    with store.transaction() as tx:
        a = tx.fetch_for_reencryption("kr", 1, "production", None, 4)
        b = tx.fetch_for_reencryption("kr", 1, "production", a[-1].id, 4)
    assert [r.id for r in a + b] == [f"p{i}" for i in range(6)]


# ---- leases ----------------------------------------------------------------------
def test_lease_take_renew_expire_release(store: Store) -> None:
    def take(holder: str, at: datetime) -> bool:
        with store.transaction() as tx:
            return tx.acquire_lease("rotation", holder, 60, at)

    assert take("a", NOW)
    assert not take("b", NOW + timedelta(seconds=30))
    assert take("a", NOW + timedelta(seconds=50))  # renewal extends to +110 s
    assert not take("b", NOW + timedelta(seconds=100))
    assert take("b", NOW + timedelta(seconds=111))  # expired: taken over
    assert not take("a", NOW + timedelta(seconds=112))
    with store.transaction() as tx:
        tx.release_lease("rotation", "a")  # not the holder: no effect
    assert not take("a", NOW + timedelta(seconds=113))
    with store.transaction() as tx:
        tx.release_lease("rotation", "b")
    assert take("a", NOW + timedelta(seconds=114))


def test_concurrent_lease_contenders_get_one_winner(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    won: list[str] = []

    def contend(i: int) -> None:
        barrier.wait()
        with stores[i].transaction() as tx:
            if tx.acquire_lease("rotation", f"h{i}", 60, NOW):
                won.append(f"h{i}")

    _run_threads(contend, len(stores))
    for s in stores:
        s.close()
    assert len(won) == 1


# ---- audit chain -----------------------------------------------------------------
def test_concurrent_audit_appenders_never_fork_the_chain(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(3)]

    def append(i: int) -> None:
        for n in range(10):
            with stores[i].transaction() as tx:
                seq, prev = tx.audit_tail()
                tx.audit_append(AuditRow(seq + 1, 0.0, f"w{i}", "x", None, None, None, "ok",
                                         "{}", prev + bytes([n])))

    _run_threads(append, len(stores))
    with stores[0].read() as tx:
        rows = tx.audit_rows(0, 100)
    for s in stores:
        s.close()
    assert [r.seq for r in rows] == list(range(1, 31))
    for before, after in itertools.pairwise(rows):
        assert after.mac[:-1] == before.mac  # each event chained on the previous one


# ---- keyring lock --------------------------------------------------------------
def test_keyring_lock_serialises_rotations(store_url: str) -> None:
    """Read-check-insert under lock_keyring: concurrent rotators never collide."""
    stores = [open_store(store_url) for _ in range(4)]
    with stores[0].transaction() as tx:
        tx.insert_version(kv(1))
    errors: list[BaseException] = []

    def rotate(i: int) -> None:
        try:
            with stores[i].transaction() as tx:
                tx.lock_keyring("kr")
                versions = tx.list_versions("kr")
                active = next(v for v in versions if v.status is KeyStatus.ACTIVE)
                tx.set_status("kr", active.version, KeyStatus.ACTIVE, KeyStatus.VALID, NOW)
                tx.insert_version(kv(max(v.version for v in versions) + 1))
        except BaseException as exc:
            errors.append(exc)

    _run_threads(rotate, len(stores))
    with stores[0].read() as tx:
        versions = tx.list_versions("kr")
    for s in stores:
        s.close()
    assert errors == []
    assert [v.version for v in versions] == [1, 2, 3, 4, 5]
    assert [v.version for v in versions if v.status is KeyStatus.ACTIVE] == [5]


# ---- transactions ----------------------------------------------------------------
def test_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put_credential("kr", "half", "production", 1, b"e", {}, NOW)
        raise RuntimeError("boom")
    with store.read() as tx:
        assert tx.get_credential("kr", "half") is None


def test_nested_transaction_joins_the_outer_one(store: Store) -> None:
    with store.transaction() as outer:
        outer.put_credential("kr", "a", "production", 1, b"e", {}, NOW)
        with store.read() as inner:
            assert inner.get_credential("kr", "a") is not None


def test_run_returns_the_result(store: Store) -> None:
    def body(tx: StoreTx) -> int:
        return tx.put_credential("kr", "r", "production", 1, b"e", {}, NOW)

    assert store.run(body) == 1


def _run_threads(fn: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


# ---- PostgreSQL only: SKIP LOCKED ------------------------------------------------
def test_skip_locked_batches_are_disjoint_on_postgres(
    postgres_store_url_factory: Callable[[], str],
) -> None:
    url = postgres_store_url_factory()
    first, second = open_store(url), open_store(url)
    assert first.supports_skip_locked and second.supports_skip_locked
    try:
        for i in range(10):
            put(first, f"c{i}")
        holding = threading.Event()
        release = threading.Event()
        taken: dict[str, list[str]] = {}

        def worker_a() -> None:
            with first.transaction() as tx:
                rows = tx.fetch_for_reencryption("kr", 1, "production", None, 4, skip_locked=True)
                taken["a"] = [r.id for r in rows]
                holding.set()
                release.wait(30)

        t = threading.Thread(target=worker_a)
        t.start()
        assert holding.wait(30)
        with second.transaction() as tx:  # runs while worker a still holds its rows
            rows = tx.fetch_for_reencryption("kr", 1, "production", None, 100, skip_locked=True)
            taken["b"] = [r.id for r in rows]
            # without SKIP LOCKED the same rows are visible (a plain read is never blocked)
            plain = tx.fetch_for_reencryption("kr", 1, "production", None, 100)
        release.set()
        t.join(30)
        assert taken["a"] == ["c0", "c1", "c2", "c3"]
        assert taken["b"] == [f"c{i}" for i in range(4, 10)]
        assert len(plain) == 10
        with second.transaction() as tx:  # locks end with the transaction
            again = tx.fetch_for_reencryption("kr", 1, "production", None, 100, skip_locked=True)
        assert len(again) == 10
    finally:
        first.close()
        second.close()


def test_sqlite_does_not_claim_skip_locked(tmp_path: object) -> None:
    s = open_store(f"sqlite:///{tmp_path}/x.db")
    try:
        assert s.supports_skip_locked is False  # workers must not rely on it there
    finally:
        s.close()


def test_sqlite_connections_of_finished_threads_are_closed(tmp_path: Path) -> None:
    """An HTTP server answers each scrape on a new thread: those connections must not pile up."""
    from nebula_credential.store.sqlite import SqliteStore

    s = SqliteStore(f"sqlite:///{tmp_path / 'threads.db'}")
    s.migrate()
    try:
        def scrape() -> None:
            with s.read() as tx:
                tx.schema_version()

        for _ in range(50):
            t = threading.Thread(target=scrape)
            t.start()
            t.join()
        with s.read() as tx:
            assert tx.schema_version() == SCHEMA_VERSION
        assert len(s._all) <= 2
    finally:
        s.close()


def test_every_transaction_is_each_family_slice(store: Store) -> None:
    """Code that needs one table family (the server's tokens: ServerTx) can ask for that slice only."""
    with store.read() as tx:
        for slice_ in (MetaTx, KeysTx, CredentialsTx, OperationsTx, ServerTx):
            assert isinstance(tx, slice_)


def test_only_a_file_backed_store_copies_itself(store: Store, tmp_path: Path) -> None:
    put(store, "a")
    dest = tmp_path / "copy.db"
    dest.touch()
    if store.scheme != "sqlite":
        assert store.database_file() is None
        with pytest.raises(StoreError, match="not a file"):
            store.copy_to(dest)
        return
    assert store.database_file() is not None
    store.copy_to(dest)
    with read_file_copy(dest) as tx:  # read-only: the copy keeps the journal mode the copy gave it
        assert tx.get_credential("kr", "a") is not None and tx.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_an_in_memory_store_has_no_file_to_copy(tmp_path: Path) -> None:
    s = open_store("sqlite:///:memory:")
    try:
        assert s.database_file() is None
        with pytest.raises(StoreError, match="not a file"):
            s.copy_to(tmp_path / "copy.db")
    finally:
        s.close()


def test_a_file_that_is_no_store_is_refused_as_a_copy(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError), read_file_copy(junk) as tx:
        tx.schema_version()
    with pytest.raises(StoreError), read_file_copy(tmp_path / "missing.db") as tx:
        tx.schema_version()
