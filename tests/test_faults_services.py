"""Faults with real services: the KMS endpoint vanishes mid-pass and mid root rotation;
PostgreSQL is stopped immediately (``pg_ctl stop -m immediate``) under concurrent writers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import CommitOutcomeUnknownError, NebulaCredentialError, ProviderUnavailableError
from nebula_credential.rootkeys import rotate_root_key

from .fixtures_hsm_kms import MotoKms
from .fixtures_postgres import PostgresCluster
from .fixtures_transit import OpenBao
from .helpers import FakeClock, cli_env
from .test_provider_aws_kms import RestartableMoto
from .test_provider_aws_kms import restartable_moto as restartable_moto

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file stops and restarts the server: the worker's own cluster, not the shared one."""
    return private_postgres_cluster


def kms_vault(moto: RestartableMoto, path: Path, clock: FakeClock, settings: dict[str, Any] | None = None,
              ) -> tuple[nc.Vault, KeyManagementConfig]:
    kms = MotoKms(f"http://127.0.0.1:{moto.port}", moto.port)
    cfg = KeyManagementConfig.from_dict(
        {"provider": settings or kms.settings(max_attempts=3, connect_timeout=1, read_timeout=2)})
    return nc.open(f"sqlite:///{path}", config=cfg, create=True, clock=clock), cfg


def test_kms_gone_mid_reencryption_pass(restartable_moto: RestartableMoto, tmp_path: Path,
                                        clock: FakeClock) -> None:
    v, cfg = kms_vault(restartable_moto, tmp_path / "s.db", clock)
    values: dict[str, Any] = {}
    for version_rows in range(3):  # rows under v1 and v2, v3 active
        for i in range(40):
            cid = f"v{version_rows}-{i:02d}"
            values[cid] = {"i": i, "round": version_rows}
            v.put(cid, values[cid])
        if version_rows < 2:
            v.keys.rotate()
    v.close()
    fresh = nc.open(f"sqlite:///{tmp_path / 's.db'}", config=cfg, clock=clock)  # nothing cached
    batches: list[int] = []

    def stop_after_first_batch(scope: str, n: int) -> None:
        batches.append(n)
        if len(batches) == 1:
            restartable_moto.stop()  # injected: the KMS endpoint disappears

    with pytest.raises(ProviderUnavailableError, match="unreachable|unavailable") as err:
        fresh.reencrypt(batch_size=10, progress=stop_after_first_batch)
    assert "Traceback" not in str(err.value)
    rows = list(fresh.list())
    assert all(int.from_bytes(r.envelope[4:8], "big") == r.key_version for r in rows)  # nothing half-written
    moved = sum(1 for r in rows if r.key_version == 3)
    assert 40 + 10 <= moved < 120  # the committed batches stay
    restartable_moto.start()
    result = fresh.reencrypt(batch_size=10)  # the next pass finishes
    assert result.ok and result.reencrypted == 120 - moved
    assert {fresh.get(cid) == value for cid, value in values.items()} == {True}  # zero lost
    assert fresh.audit.verify().ok
    fresh.close()


def test_kms_gone_mid_root_rotation(restartable_moto: RestartableMoto, tmp_path: Path,
                                    clock: FakeClock) -> None:
    v, cfg = kms_vault(restartable_moto, tmp_path / "s.db", clock)
    values = {}
    for ring in ("a", "b", "c"):
        kr = v.keyring(ring)
        kr.keys.initialize()
        for i in range(5):
            values[(ring, f"c{i}")] = {"ring": ring, "i": i}
            kr.put(f"c{i}", values[(ring, f"c{i}")])
        kr.keys.rotate()
    sent: list[str] = []

    def count(request: Any, **_: Any) -> None:
        if b"ReEncrypt" in request.headers.get("X-Amz-Target", b""):
            sent.append(request.url)
            if len(sent) == 4:  # after keyring a's two DEKs and one of b's: the endpoint goes away
                restartable_moto.stop()

    v.provider._client.meta.events.register("before-send.kms", count)  # type: ignore[attr-defined]
    with pytest.raises(ProviderUnavailableError):
        rotate_root_key(v.store, v.provider, v.audit)
    v.provider._client.meta.events.unregister("before-send.kms", count)  # type: ignore[attr-defined]
    restartable_moto.start()
    v.close()
    with nc.open(f"sqlite:///{tmp_path / 's.db'}", config=cfg, clock=clock) as again:
        # every DEK still opens: the rewrapped ones under the new material, the rest under the old
        for (ring, cid), value in values.items():
            assert again.keyring(ring).get(cid) == value
        result = rotate_root_key(again.store, again.provider, again.audit)  # run again: finishes
        assert result.rewrapped == 7  # a, b, c: two each; default: one
        assert again.audit.verify().ok
    with nc.open(f"sqlite:///{tmp_path / 's.db'}", config=cfg, clock=clock) as fresh:
        assert all(fresh.keyring(ring).get(cid) == value for (ring, cid), value in values.items())


@pytest.fixture
def durable_pg_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh schema; synchronous_commit=on for our sessions (the shared cluster runs it off)."""
    schema = postgres_cluster.new_schema()
    options = quote(f"-csearch_path={schema} -csynchronous_commit=on", safe="")
    return f"{postgres_cluster.url()}?options={options}"


@pytest.fixture
def pg_writer(durable_pg_url: str, key_file: Path) -> Iterator[nc.Vault]:
    v = nc.open(durable_pg_url, create=True)
    try:
        yield v
    finally:
        v.close()


@dataclass
class Outage:
    acked_before: int = 0
    acked: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    failed: int = 0
    in_flight: int = 0


def stop_immediately_under_writers(vault: nc.Vault, cluster: PostgresCluster, writers: int = 4,
                                   before: int = 200, after: int = 100) -> Outage:
    """``pg_ctl stop -m immediate`` once ``before`` writes were acknowledged, start, wait for ``after`` more."""
    lock = threading.Lock()
    out = Outage(in_flight=writers)
    stop = threading.Event()
    restarted = threading.Event()
    after_restart = [0]

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            cid, value = f"w{n}-{i:05d}-{id(out)}", {"n": n, "i": i}
            i += 1
            try:
                vault.put(cid, value)
            except CommitOutcomeUnknownError:
                with lock:
                    out.unknown.add(cid)
                continue
            except NebulaCredentialError:
                with lock:
                    out.failed += 1
                continue
            with lock:
                out.acked[cid] = value
                if restarted.is_set():
                    after_restart[0] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    out.acked_before = stop_immediately_while(cluster, threads, stop, restarted, lambda: len(out.acked) >= before,
                                              lambda: after_restart[0] >= after, lambda: len(out.acked))
    return out


def stop_immediately_while(cluster: PostgresCluster, threads: list[threading.Thread], stop: threading.Event,
                           restarted: threading.Event, ready: Callable[[], bool], done: Callable[[], bool],
                           acked: Callable[[], int]) -> int:
    """Start ``threads``; once ``ready()``, ``pg_ctl stop -m immediate`` and start; stop them once ``done()``.

    Returns ``acked()`` read right after the stop (what was acknowledged before it)."""
    for t in threads:
        t.start()
    try:
        while not ready():
            stop.wait(0.01)
        cluster.stop("immediate")  # injected: every backend killed, no shutdown checkpoint
        before = acked()
        cluster.start()
        restarted.set()
        while not done():
            stop.wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        if not cluster.data.joinpath("postmaster.pid").exists():
            cluster.start()
    return before


def assert_nothing_lost(vault: nc.Vault, outages: list[Outage]) -> None:
    stored = {row.id: vault.get(row.id) for row in vault.list()}  # every stored row decrypts
    acked = {k: v for o in outages for k, v in o.acked.items()}
    unknown = {k for o in outages for k in o.unknown}
    lost = [cid for cid in acked if stored.get(cid) != acked[cid]]
    print(f"pg immediate stop x{len(outages)}: {len(acked)} acknowledged, "
          f"{sum(o.in_flight for o in outages)} writers in flight at the stops, "
          f"{sum(o.failed for o in outages)} refused with an error, {len(unknown)} outcome unknown, "
          f"{len(lost)} lost")
    assert lost == [], f"{len(lost)} acknowledged write(s) lost"
    assert set(stored) - set(acked) <= unknown  # nothing unacknowledged appears, except outcome-unknown commits
    assert vault.audit.verify().ok


def test_postgres_stopped_immediately_during_writes(pg_writer: nc.Vault, postgres_cluster: PostgresCluster) -> None:
    """Injected: ``pg_ctl stop -m immediate`` while 4 writer threads commit; then start again."""
    outage = stop_immediately_under_writers(pg_writer, postgres_cluster)
    assert outage.acked_before >= 200
    assert_nothing_lost(pg_writer, [outage])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEBULA_SOAK") != "1", reason="soak: NEBULA_SOAK=1 (make soak)")
def test_postgres_stopped_immediately_soak(pg_writer: nc.Vault, postgres_cluster: PostgresCluster) -> None:
    outages = [stop_immediately_under_writers(pg_writer, postgres_cluster, writers=8, before=300)
               for _ in range(10)]
    assert_nothing_lost(pg_writer, outages)


def unseal_key(bao: OpenBao) -> str:
    """The dev server prints its one unseal key at start (bao.log in its folder)."""
    for _ in range(200):  # the banner may be written a little after the API answers
        found = re.search(r"Unseal Key: (\S+)", (bao.folder / "bao.log").read_text(errors="replace"))
        if found is not None:
            return found.group(1)
        time.sleep(0.05)
    pytest.skip("the OpenBao dev server did not print an unseal key")


def test_openbao_sealed_mid_reencryption_pass(openbao: OpenBao, tmp_path: Path, clock: FakeClock) -> None:
    key = unseal_key(openbao)
    cfg = KeyManagementConfig.from_dict({"provider": openbao.settings()})
    url = f"sqlite:///{tmp_path / 's.db'}"
    values: dict[str, Any] = {}
    with nc.open(url, config=cfg, create=True, clock=clock) as v:
        for rnd in range(3):  # rows under v1 and v2, v3 active
            for i in range(30):
                values[f"r{rnd}-{i:02d}"] = {"i": i, "round": rnd}
                v.put(f"r{rnd}-{i:02d}", values[f"r{rnd}-{i:02d}"])
            if rnd < 2:
                v.keys.rotate()
    admin = openbao.client()
    fresh = nc.open(url, config=cfg, clock=clock)  # nothing cached
    sealed: list[int] = []

    def seal_after_first_batch(scope: str, n: int) -> None:
        if not sealed:
            admin.sys.seal()  # injected: the Transit server is sealed
            sealed.append(n)

    try:
        with pytest.raises(ProviderUnavailableError):
            fresh.reencrypt(batch_size=10, progress=seal_after_first_batch)
        rows = list(fresh.list())
        assert all(int.from_bytes(r.envelope[4:8], "big") == r.key_version for r in rows)
        moved = sum(1 for r in rows if r.key_version == 3)
        assert 30 + 10 <= moved < 90
    finally:
        admin.sys.submit_unseal_key(key)
    assert not admin.sys.is_sealed()
    result = fresh.reencrypt(batch_size=10)
    assert result.ok and result.reencrypted == 90 - moved
    assert all(fresh.get(cid) == value for cid, value in values.items())
    assert fresh.audit.verify().ok
    fresh.close()


def test_postgres_stopped_immediately_under_writer_processes(pg_writer: nc.Vault, durable_pg_url: str,
                                                             postgres_cluster: PostgresCluster, tmp_path: Path,
                                                             key_file: Path) -> None:
    """Injected: ``pg_ctl stop -m immediate`` under 3 application processes (their own pools), then start."""
    stop = tmp_path / "stop"
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))
    logs = [(tmp_path / f"p{n}.log").open("w") for n in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fault_writer", durable_pg_url, str(stop), f"p{n}"],
                              stdout=subprocess.PIPE, stderr=logs[n], text=True, env=env,
                              cwd=Path(__file__).parents[1])
             for n in range(3)]
    lines: list[list[str]] = [[] for _ in procs]
    readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stdout)) for p, out in zip(procs, lines)]
    for r in readers:
        r.start()

    def acks() -> int:
        return sum(1 for out in lines for line in list(out) if line.startswith("ack "))

    def all_writing() -> bool:  # each process is past nc.open() (a slow start must not meet the stop)
        return all(any(line.startswith("ack ") for line in list(out)) for out in lines)

    try:
        while acks() < 150 or not all_writing():
            time.sleep(0.01)
        postgres_cluster.stop("immediate")
        before = acks()
        postgres_cluster.start()
        while acks() < before + 150:
            time.sleep(0.01)
    finally:
        stop.touch()
        for p in procs:
            p.wait(120)
        for r in readers:
            r.join(10)
        if not postgres_cluster.data.joinpath("postmaster.pid").exists():
            postgres_cluster.start()
    acked = {line.split()[1] for out in lines for line in out if line.startswith("ack ")}
    unknown = {line.split()[1] for out in lines for line in out if line.startswith("unknown ")}
    stored = {row.id: pg_writer.get(row.id) for row in pg_writer.list()}
    lost = sorted(acked - set(stored))
    refused = sum(1 for out in lines for line in out if line.startswith("err"))
    print(f"pg immediate stop under 3 processes: {len(acked)} acknowledged ({before} before the stop), "
          f"{refused} refused, {len(unknown)} outcome unknown, {len(lost)} lost")
    assert lost == []
    assert set(stored) - acked <= unknown
    assert all(stored[cid] == {"tag": cid.split("-")[0], "n": int(cid.split("-")[1])} for cid in acked)
    for log in logs:
        log.close()
    assert [p.returncode for p in procs] == [0, 0, 0], [(tmp_path / f"p{n}.log").read_text()[-2000:] for n in range(3)]
