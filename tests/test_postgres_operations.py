"""Operational behaviour on a real PostgreSQL: dropped connections, a server restart
in the middle of a re-encryption pass, an unreachable server, the CLI pointed at it."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.exceptions import StoreUnavailableError, TransientStoreError
from nebula_credential.providers.base import RetryPolicy
from nebula_credential.store import StoreTx, open_store
from nebula_credential.store.postgres import PostgresStore

from .fixtures_postgres import PostgresCluster
from .helpers import FakeClock, cli_env, free_port, run_cli

NOW = datetime(2026, 1, 1, tzinfo=UTC)

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file restarts the server and terminates the store's sessions: the worker's own cluster, not the shared one."""
    return private_postgres_cluster


@pytest.fixture
def pg_url(postgres_store_url_factory: Callable[[], str]) -> str:
    return postgres_store_url_factory()


@pytest.fixture
def pg_vault(pg_url: str, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(pg_url, create=True, clock=clock)
    try:
        yield v
    finally:
        v.close()


def test_dropped_idle_connections_are_replaced(
    pg_url: str, postgres_cluster: PostgresCluster
) -> None:
    store = open_store(pg_url)
    try:
        with store.transaction() as tx:
            tx.set_meta("k", "1")
        assert postgres_cluster.terminate_backends() >= 1
        with store.read() as tx:  # the pool notices the dead connection and reconnects
            assert tx.get_meta("k") == "1"
    finally:
        store.close()


def test_connection_lost_mid_transaction_rolls_back(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        with (
            pytest.raises(StoreUnavailableError, match="rolled back") as info,
            store.transaction() as tx,
        ):
            tx.put_credential("kr", "half", "production", 1, b"e", {}, NOW)
            tx._exec("SELECT pg_terminate_backend(pg_backend_pid())")  # type: ignore[attr-defined]
        assert isinstance(info.value, TransientStoreError)
        with store.read() as tx:
            assert tx.get_credential("kr", "half") is None
    finally:
        store.close()


def test_run_reruns_the_whole_transaction_after_a_lost_connection(pg_url: str) -> None:
    store = open_store(pg_url)
    attempts: list[int] = []

    def body(tx: StoreTx) -> int:
        attempts.append(1)
        revision = tx.put_credential("kr", "once", "production", 1, b"e", {}, NOW)
        if len(attempts) == 1:  # the server drops us after the write, before COMMIT
            tx._exec("SELECT pg_terminate_backend(pg_backend_pid())")  # type: ignore[attr-defined]
        return revision

    try:
        assert store.run(body) == 1  # revision 1: the first attempt left nothing behind
        assert len(attempts) == 2
        with store.read() as tx:
            row = tx.get_credential("kr", "once")
        assert row is not None and row.revision == 1
    finally:
        store.close()


def _child_writes(url_store: PostgresStore) -> None:
    for i in range(100):
        with url_store.transaction() as tx:
            tx.set_meta("child", f"{os.getpid()}:{i}")
    url_store.close()


def test_forked_child_gets_its_own_connections(pg_url: str) -> None:
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    try:
        with store.transaction() as tx:
            tx.set_meta("parent", "1")  # the parent's pool now holds a live connection
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_child_writes, args=(store,))
        child.start()
        for i in range(100):  # at the same time as the child: sharing a socket would garble both
            with store.transaction() as tx:
                tx.set_meta("parent", str(i))
        child.join(60)
        assert child.exitcode == 0
        with store.read() as tx:  # the parent's sessions survived the child's use and exit
            assert tx.get_meta("parent") == "99"
            assert tx.get_meta("child") == f"{child.pid}:99"
    finally:
        store.close()


def test_unreachable_server_gives_a_clear_error_without_the_password() -> None:
    url = f"postgresql://app:sekret-pw@127.0.0.1:{free_port()}/creds"
    store = PostgresStore(url, connect_timeout=0.5, retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.migrate()
    finally:
        store.close()
    message = str(info.value)
    assert "sekret-pw" not in message
    assert "postgresql://app:***@127.0.0.1" in message
    assert "within 0.5s" in message
    assert "refused" in message.lower()


def _fill(vault: nc.Vault, n: int) -> dict[str, dict[str, int]]:
    values = {f"cred-{i:03}": {"n": i} for i in range(n)}
    scopes = ("production", "user", "development")
    vault.put_many((cid, v, scopes[v["n"] % 3], None) for cid, v in values.items())
    return values


def _assert_all_moved(vault: nc.Vault, values: dict[str, dict[str, int]]) -> None:
    active = vault.keys.active_version().version
    assert vault.keys.credential_counts() == {active: len(values)}
    for cid, value in values.items():
        assert vault.get(cid) == value


def test_server_restart_during_reencryption(
    pg_vault: nc.Vault, postgres_cluster: PostgresCluster
) -> None:
    values = _fill(pg_vault, 90)
    pg_vault.keys.rotate()
    batches: list[int] = []

    def restart_after_first_batch(scope: str, n: int) -> None:
        batches.append(n)
        if len(batches) == 1:
            postgres_cluster.restart()

    try:
        result = pg_vault.reencrypt(batch_size=10, progress=restart_after_first_batch)
        resumed = True
    except StoreUnavailableError:
        resumed = False  # failing cleanly is also allowed; the next pass must finish
    assert len(batches) >= 1
    if resumed:
        assert result.ok and result.reencrypted == 90
    second = pg_vault.reencrypt(batch_size=10)
    assert second.ok
    _assert_all_moved(pg_vault, values)
    assert pg_vault.audit.verify().ok


def test_server_restart_while_a_pass_is_running(
    pg_vault: nc.Vault, postgres_cluster: PostgresCluster
) -> None:
    """The server goes down and comes back while batches are in flight (not in between)."""
    values = _fill(pg_vault, 90)
    pg_vault.keys.rotate()
    first_batch = threading.Event()
    restarter = threading.Thread(
        target=lambda: first_batch.wait(30) and postgres_cluster.restart()
    )
    restarter.start()
    try:
        result = pg_vault.reencrypt(
            batch_size=5, rate_limit=150, progress=lambda scope, n: first_batch.set()
        )
        assert result.ok and result.reencrypted == 90  # the batches were re-run
    except StoreUnavailableError:
        pass  # an outage longer than the retries stops the pass cleanly
    finally:
        restarter.join(60)
    assert pg_vault.reencrypt(batch_size=5).ok
    _assert_all_moved(pg_vault, values)
    assert pg_vault.audit.verify().ok


def test_connections_killed_repeatedly_during_reencryption(
    pg_vault: nc.Vault, postgres_cluster: PostgresCluster
) -> None:
    values = _fill(pg_vault, 120)
    pg_vault.keys.rotate()
    stop = threading.Event()
    killed: list[int] = []

    def chaos() -> None:  # a burst of dropped connections while the pass runs
        for _ in range(10):
            if stop.wait(0.03):
                return
            killed.append(postgres_cluster.terminate_backends())

    t = threading.Thread(target=chaos)
    t.start()
    failures = 0
    try:
        for _ in range(20):  # each pass may die on a killed connection; none half-writes
            try:
                # rate-limited so the burst lands inside the pass, often mid-transaction
                result = pg_vault.reencrypt(batch_size=5, rate_limit=300)
                if result.ok and pg_vault.pending()[1] == 0:
                    break
            except StoreUnavailableError:
                failures += 1
    finally:
        stop.set()
        t.join(30)
    assert sum(killed) > 0
    final = pg_vault.reencrypt(batch_size=5)
    assert final.ok
    _assert_all_moved(pg_vault, values)


def test_cli_against_postgres(pg_url: str, tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=pg_url,
                  NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))

    def cli(*args: str, input: str | None = None) -> str:
        proc = run_cli(*args, cwd=tmp_path, env=env, input=input)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    cli("init")
    cli("put", "github", "--scope", "production", "--value", '{"token": "t1"}')
    cli("keys", "rotate")
    cli("reencrypt")
    got = json.loads(cli("--json", "get", "github"))
    assert got["value"] == {"token": "t1"} and got["key_version"] == 2
    status = json.loads(cli("--json", "status"))
    assert status["active_version"] == 2
    assert status["reencryption"]["pending"] == 0


def test_missing_driver_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from nebula_credential.store import open_store\n"
        "from nebula_credential.exceptions import MissingDependencyError\n"
        "try:\n"
        "    open_store('postgresql://app@127.0.0.1:1/db')\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert "nebula-credential[postgres]" in proc.stdout, proc.stderr
    assert "'psycopg'" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEBULA_SOAK") != "1", reason="soak: set NEBULA_SOAK=1")
def test_soak_restarts_and_kills_across_many_rotations(
    pg_vault: nc.Vault, postgres_cluster: PostgresCluster
) -> None:
    values = _fill(pg_vault, 1500)
    for round_ in range(10):
        pg_vault.keys.rotate(reason=f"soak {round_}")
        calls = 0

        def disrupt(scope: str, n: int) -> None:
            nonlocal calls
            calls += 1
            if calls % 7 == 0:
                postgres_cluster.terminate_backends()
            if calls == 20:
                postgres_cluster.restart()

        for _ in range(5):
            try:
                if pg_vault.reencrypt(batch_size=25, progress=disrupt).ok:
                    break
            except StoreUnavailableError:
                continue
        assert pg_vault.reencrypt(batch_size=100).ok
        _assert_all_moved(pg_vault, values)
    assert pg_vault.audit.verify().ok
