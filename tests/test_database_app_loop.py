"""An application on a psycopg pool through static-role rotations: alternating users keep it whole.

The application keeps the credentials it last read; when opening a connection
fails it re-reads ``static_creds`` and tries once more.  Four worker threads
query through a pool of four connections recycled every second (so new
connections are opened all the time, as under churn) while the main thread
rotates the role.  Figures: queries that failed, and "hard" connection
failures, where even freshly read credentials did not log in (the moment
running applications hold no working password).  Printed with ``-s``; the
figures of a 20-rotation run are in docs/database.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine

from .fixtures_dbengine import APP_DB, DbTarget


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def real_vault(store_url: str, key_file: Any) -> Iterator[nc.Vault]:
    """On the real clock: grace periods are measured in seconds of wall time here."""
    v = nc.open(store_url, create=True)
    try:
        yield v
    finally:
        v.close()


@dataclass
class Figures:
    rotations: int = 0
    queries: int = 0
    failed_queries: int = 0
    refused: int = 0  # connection attempts refused with the credentials the application held
    reread: int = 0
    hard_connect_failures: int = 0


def run_loop(vault: nc.Vault, store_url: str, target: DbTarget, strategy: str, rotations: int,
             grace: float, pause: float, *, read_each_connect: bool = False) -> Figures:
    admin = DatabaseEngine(vault, "database")
    admin.write_connection("pg", target.connection_fields())
    fields: dict[str, Any] = {"db_name": "pg", "username": target.app_user, "rotation_period": "24h"}
    if strategy == "alternating":
        fields.update(rotation_strategy="alternating", grace_period=grace)
    admin.write_static_role("app", fields)
    app_vault = nc.open(store_url)  # the application: another Vault on the store, as another process
    app = DatabaseEngine(app_vault, "database")
    figures = Figures()
    lock = threading.Lock()
    cached: dict[str, Any] = dict(app.static_creds("app"))

    def reread() -> dict[str, Any]:
        with lock:
            figures.reread += 1
            cached.update(app.static_creds("app"))
            return dict(cached)

    class AppConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:  # type: ignore[override]
            if read_each_connect:
                creds = reread()
            else:
                with lock:
                    creds = dict(cached)
            try:
                return super().connect(conninfo, user=creds["username"], password=creds["password"], **kwargs)
            except psycopg.OperationalError:
                with lock:
                    figures.refused += 1
                creds = reread()  # the connection failed: read static-creds again, try once more
                try:
                    return super().connect(conninfo, user=creds["username"], password=creds["password"], **kwargs)
                except psycopg.OperationalError:
                    with lock:
                        figures.hard_connect_failures += 1
                    raise

    stop = threading.Event()
    conninfo = f"host=127.0.0.1 port={target.cluster.port} dbname={APP_DB} connect_timeout=5"
    query = f'SELECT count(*) FROM "{target.schema}".items'

    def worker(pool: ConnectionPool[Any]) -> None:
        while not stop.is_set():
            try:
                with pool.connection(timeout=5) as conn:
                    conn.execute(query).fetchone()
                with lock:
                    figures.queries += 1
            except Exception:
                with lock:
                    figures.failed_queries += 1
            time.sleep(0.005)

    with ConnectionPool(conninfo, connection_class=AppConnection, min_size=4, max_size=4, max_lifetime=1.0,
                        open=True, timeout=5) as pool:
        pool.wait(timeout=10)
        threads = [threading.Thread(target=worker, args=(pool,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(rotations):
                admin.rotate_role("app")
                figures.rotations += 1
                time.sleep(grace + 0.3 if strategy == "alternating" else pause)
                admin.run_due()  # the scheduler: retires the previous user once its grace is over
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
    app_vault.close()
    print(f"\n{strategy} (static-creds read {'at each connection' if read_each_connect else 'on failure'}): "
          f"{figures}")
    return figures


def test_alternating_rotations_fail_no_query(real_vault: nc.Vault, store_url: str, db_target: DbTarget) -> None:
    figures = run_loop(real_vault, store_url, db_target, "alternating", rotations=4, grace=1.0, pause=0)
    assert figures.rotations == 4 and figures.queries > 100
    assert figures.failed_queries == 0 and figures.hard_connect_failures == 0


def test_plain_rotations_report_failures(real_vault: nc.Vault, store_url: str, db_target: DbTarget) -> None:
    figures = run_loop(real_vault, store_url, db_target, "plain", rotations=20, grace=0, pause=0.3)
    assert figures.rotations == 20 and figures.queries > 100
    assert figures.reread > 0  # the old password stopped working under the application's feet


def test_alternating_with_reads_at_each_connection_is_never_refused(real_vault: nc.Vault, store_url: str,
                                                                   db_target: DbTarget) -> None:
    figures = run_loop(real_vault, store_url, db_target, "alternating", rotations=4, grace=1.0, pause=0,
                       read_each_connect=True)
    assert figures.failed_queries == 0 and figures.refused == 0 and figures.hard_connect_failures == 0


@pytest.mark.slow
@pytest.mark.parametrize("read_each_connect", [False, True])
def test_twenty_plain_rotations(real_vault: nc.Vault, store_url: str, db_target: DbTarget,
                                read_each_connect: bool) -> None:
    figures = run_loop(real_vault, store_url, db_target, "plain", rotations=20, grace=0, pause=2.3,
                       read_each_connect=read_each_connect)
    assert figures.rotations == 20


@pytest.mark.slow
@pytest.mark.parametrize("read_each_connect", [False, True])
def test_twenty_alternating_rotations_with_two_second_grace(real_vault: nc.Vault, store_url: str,
                                                            db_target: DbTarget, read_each_connect: bool) -> None:
    figures = run_loop(real_vault, store_url, db_target, "alternating", rotations=20, grace=2.0, pause=0,
                       read_each_connect=read_each_connect)
    assert figures.rotations == 20
    assert figures.failed_queries == 0 and figures.hard_connect_failures == 0
