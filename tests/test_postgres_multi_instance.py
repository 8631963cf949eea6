"""Several instances on one PostgreSQL database, each its own OS process (as on
separate hosts): daemons racing to rotate while an application writes, and a
re-encryption worker killed in the middle of a pass."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.models import KeyStatus

from .fixtures_postgres import PostgresCluster
from .helpers import cli_env, free_port

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file counts waiting sessions cluster-wide: the worker's own cluster, not the shared one."""
    return private_postgres_cluster


class Actor:
    """A process (a ``tests.pg_actor`` role, or the real CLI) whose stdout lines are
    collected as they come."""

    def __init__(
        self, role: str, url: str, stop: Path, env: dict[str, str],
        argv: list[str] | None = None,
    ) -> None:
        self.role = role
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "tests.pg_actor", role, url, str(stop)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"{self.role} never printed the line; stderr: {self.stderr()}")

    def finish(self, timeout: float = 120) -> dict[str, object]:
        self.proc.wait(timeout)
        self._reader.join(10)
        assert self.proc.returncode == 0, f"{self.role} failed: {self.stderr()}"
        done = [json.loads(x) for x in self.lines if x.startswith("{")]
        return next(d for d in done if d.get("event") == "done")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


@pytest.fixture
def deployment(
    postgres_store_url_factory: Callable[[], str], tmp_path: Path, key_file: Path
) -> Iterator[tuple[str, dict[str, str], list[Actor]]]:
    url = postgres_store_url_factory()
    nc.open(url, create=True).close()
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))
    actors: list[Actor] = []
    yield url, env, actors
    for a in actors:
        a.kill()


def _seed(url: str, n: int) -> dict[str, dict[str, object]]:
    values: dict[str, dict[str, object]] = {
        f"cred-{i:04}": {"id": f"cred-{i:04}", "write": 0} for i in range(n)
    }
    with nc.open(url) as v:
        v.put_many(((cid, val, "production", None) for cid, val in values.items()), batch_size=100)
    return values


def _passes(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(json.loads(resp.read())["passes"])
    except (OSError, ValueError, KeyError):
        return -1


def _wait_for_passes(port: int, n: int, *, blocked_ok: bool = False, timeout: float = 30) -> None:
    """Until the daemon on ``port`` completed ``n`` passes (or, blocked_ok, is in one)."""
    deadline = time.monotonic() + timeout
    start = _passes(port)
    while time.monotonic() < deadline:
        now = _passes(port)
        if now >= n:
            return
        if blocked_ok and now == start and time.monotonic() > deadline - timeout + 2.5:
            return  # its pass is stuck behind the lock we hold: it started one
        time.sleep(0.05)
    raise AssertionError(f"daemon on port {port} did not reach {n} passes")


def _pending(url: str) -> tuple[int, int]:
    """(key versions, credentials not under the active one), read by a fresh process view."""
    with nc.open(url) as v:
        return len(v.keys.list()), v.pending()[1]


def test_two_daemons_and_a_writer_during_rotation(
    deployment: tuple[str, dict[str, str], list[Actor]],
    tmp_path: Path,
    postgres_cluster: PostgresCluster,
) -> None:
    """Two real `nebula-credential daemon` processes find the same rotation due while an
    application keeps writing: one rotation, every row re-encrypted once, no lost write."""
    url, env, actors = deployment
    values = _seed(url, 200)
    schema = url.rsplit("%3D", 1)[1]
    config = tmp_path / "nebula.toml"
    config.write_text(
        '[rotation]\nstrategy = "periodic"\ninterval = "1h"\n'
        '[keys]\nrefresh_interval = "1s"\n[reencryption]\nbatch_size = 25\n'
    )
    stop = tmp_path / "stop"
    writer = Actor("writer", url, stop, env)
    actors.append(writer)
    ports = [free_port(), free_port()]
    daemons = [
        Actor("daemon", url, stop, env, argv=[
            sys.executable, "-m", "nebula_credential", "--db", url, "--config", str(config),
            "daemon", "--interval", "1s", "--metrics-addr", f"127.0.0.1:{port}",
        ])
        for port in ports
    ]
    actors.extend(daemons)
    writer.wait_for(lambda line: line.startswith("put "))  # the app is writing already
    for port in ports:  # both daemons up and past a pass in which nothing was due
        _wait_for_passes(port, 1)

    import psycopg

    # Hold the keyring's advisory lock (the key the store uses), then make v1 due:
    # whichever daemon gets the rotation lease blocks inside rotate(), and the
    # other finds the rotation due at the same time -- a real race, decided in the DB.
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as blocker:
        blocker.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"{schema}:keyring:default",)
        )
        postgres_cluster.admin(
            f'UPDATE "{schema}".key_versions SET created_at = created_at - 7200 WHERE version = 1'
        )
        for port in ports:  # each daemon has started a pass since v1 became due
            _wait_for_passes(port, _passes(port) + 1, blocked_ok=True)
        waiting = postgres_cluster.admin(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
            "AND application_name = 'nebula-credential'"
        )
        assert int(str(waiting[0][0])) == 1  # one rotator waits; the other stood aside
        blocker.execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"{schema}:keyring:default",)
        )
    deadline = time.monotonic() + 60
    while _pending(url)[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # the app keeps writing across the rotation and the passes
    stop.touch()
    writer.finish()
    while _pending(url) != (2, 0) and time.monotonic() < deadline:
        time.sleep(0.2)  # rows the app wrote with a cached v1 are picked up by the next pass
    for d in daemons:
        d.proc.send_signal(signal.SIGTERM)
    for d in daemons:
        d.proc.wait(60)
        assert d.proc.returncode == 0, d.stderr()

    with nc.open(url) as v:
        # exactly one rotation, recorded once in the audit trail
        versions = v.keys.list()
        assert [kv.version for kv in versions] == [1, 2]
        assert versions[1].status is KeyStatus.ACTIVE
        # v1 is valid, or already in grace once the daemons saw nothing reference it
        assert versions[0].status in (KeyStatus.VALID, KeyStatus.GRACE)
        assert sum(1 for r in v.audit.rows() if r.action == "key.rotate") == 1
        # the chain is intact and explains everything but the test's own backdating of v1
        verdict = v.audit.verify()
        assert len(verdict.unexplained) == 1 and "v1: created_at" in verdict.unexplained[0], verdict
        # every credential re-encrypted: all under v2
        assert v.keys.credential_counts() == {2: len(values)}
        # zero lost updates: each credential holds the last value the app committed
        last: dict[str, int] = {}
        for line in writer.lines:
            if line.startswith("put "):
                _, cid, n = line.split()
                last[cid] = int(n)
        assert last, "the writer never wrote"
        for cid in values:
            assert v.get(cid) == {"id": cid, "write": last.get(cid, 0)}
        # re-encrypted once: rows the app never touched moved exactly one revision
        untouched = [r for r in v.list() if r.id not in last]
        assert len(untouched) == len(values) - len(last) > 100
        assert {r.revision for r in untouched} == {2}


def test_killing_one_of_two_workers_mid_batch(
    deployment: tuple[str, dict[str, str], list[Actor]],
    tmp_path: Path,
    postgres_cluster: PostgresCluster,
) -> None:
    url, env, actors = deployment
    values = _seed(url, 120)
    with nc.open(url) as v:
        v.keys.rotate(reason="test")
    stop = tmp_path / "stop"
    slow = {**env, "NEBULA_TEST_SLOW_DECRYPT": "0.01"}  # a batch of 10 holds its locks ~0.1 s
    doomed = Actor("worker", url + "&application_name=doomed", stop, slow)
    survivor = Actor("worker", url + "&application_name=survivor", stop, slow)
    actors.extend([doomed, survivor])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it is inside a batch transaction
        held = postgres_cluster.admin(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'doomed' "
            "AND state = 'idle in transaction' AND xact_start < now() - interval '20 ms'"
        )
        if int(str(held[0][0])):
            break
        time.sleep(0.005)
    else:
        raise AssertionError("the doomed worker was never seen inside a batch")
    doomed.proc.send_signal(signal.SIGKILL)  # its row locks go with its session
    doomed.proc.wait(30)
    survived = survivor.finish()
    assert survived["ok"] is True
    with nc.open(url) as v:
        left = v.pending()[1]
        final = v.reencrypt(batch_size=50)  # the next pass finishes whatever is left
        assert final.ok and final.reencrypted == left
        assert v.keys.credential_counts() == {2: len(values)}
        for cid, value in values.items():
            assert v.get(cid) == value
        # the killed batch was rolled back, nothing applied twice: one revision per row
        assert {r.revision for r in v.list()} == {2}
        assert v.audit.verify().ok
