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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.models import KeyStatus

from .fixtures_postgres import PostgresCluster
from .helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.services


class Actor:
    """A ``tests.pg_actor`` process whose stdout lines are collected as they come."""

    def __init__(self, role: str, url: str, stop: Path, env: dict[str, str]) -> None:
        self.role = role
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.pg_actor", role, url, str(stop)],
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


def test_two_daemons_and_a_writer_during_rotation(
    deployment: tuple[str, dict[str, str], list[Actor]], tmp_path: Path
) -> None:
    url, env, actors = deployment
    values = _seed(url, 200)
    stop = tmp_path / "stop"
    writer = Actor("writer", url, stop, env)
    actors.append(writer)
    writer.wait_for(lambda line: line.startswith("put "))  # the app is writing already
    daemons = [Actor("daemon", url, stop, env) for _ in range(2)]
    actors.extend(daemons)
    for d in daemons:
        d.wait_for(lambda line: "rotation-attempted" in line)
    time.sleep(1.5)  # writer keeps writing across the rotation and the passes
    stop.touch()
    writer.finish()
    summaries = [d.finish() for d in daemons]

    # exactly one rotation, recorded once in the audit trail
    assert sorted(bool(s["rotated"]) for s in summaries) == [False, True]
    with nc.open(url) as v:
        versions = v.keys.list()
        assert [(kv.version, kv.status) for kv in versions] == [
            (1, KeyStatus.VALID), (2, KeyStatus.ACTIVE),
        ]
        assert sum(1 for r in v.audit.rows() if r.action == "key.rotate") == 1
        assert v.audit.verify().ok
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
        assert len(untouched) == len(values) - len(last)
        assert {r.revision for r in untouched} == {2}
    assert sum(int(str(s["reencrypted"])) for s in summaries) >= len(untouched)


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
