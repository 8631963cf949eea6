"""The table the workers of one ``serve`` share for rate limits, the free-space floor and 429 counts.

Several processes map one file; a bucket spent in one is spent in all, and
its size is fixed whatever the number of addresses.  The flood against a
real two-worker ``serve`` is in ``test_server_ratelimit_workers.py``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.server import ratelimit
from nebula_credential.server.app import create_app
from nebula_credential.server.ratelimit import (
    ENV_TABLE,
    FreeSpaceFloor,
    Guards,
    SharedTable,
    SourceBuckets,
    refusal_counts,
    serve_table,
)


@pytest.fixture()
def table_file() -> Iterator[str]:
    path = SharedTable.create()
    yield path
    Path(path).unlink(missing_ok=True)


def test_a_bucket_spent_through_one_view_is_spent_in_the_other(table_file: str) -> None:
    now = [100.0]
    first = SourceBuckets(1.0, 3, clock=lambda: now[0], table=SharedTable(table_file))
    second = SourceBuckets(1.0, 3, clock=lambda: now[0], table=SharedTable(table_file))
    assert first.take("10.0.0.1") and second.take("10.0.0.1") and first.take("10.0.0.1")
    assert not second.take("10.0.0.1") and second.empty("10.0.0.1") and first.empty("10.0.0.1")
    assert second.take("10.0.0.2")  # another address, its own budget
    login = SourceBuckets(1.0, 3, reason="login_source", clock=lambda: now[0], table=SharedTable(table_file))
    assert login.take("10.0.0.1")  # another budget never shares a bucket
    now[0] += 1.0
    assert first.take("10.0.0.1") and not second.take("10.0.0.1")


def _drain(path: str, source: str, tries: int, out: Any) -> None:
    buckets = SourceBuckets(0.001, 50, table=SharedTable(path))
    out.put(sum(buckets.take(source) for _ in range(tries)))


def test_processes_racing_for_one_bucket_get_its_burst_together(table_file: str) -> None:
    """Four processes take as fast as they can: together they get the burst, not four times it."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_drain, args=(table_file, "192.0.2.7", 5_000, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    got = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert sum(got) == 50, got


def test_the_table_has_a_fixed_size_and_forgets_the_least_recently_seen(tmp_path: Path) -> None:
    path = SharedTable.create(slots=16)
    try:
        size = os.path.getsize(path)
        now = [0.0]
        buckets = SourceBuckets(0.001, 1, clock=lambda: now[0], table=SharedTable(path))
        assert buckets.take("first") and not buckets.take("first")
        for i in range(200):  # many addresses: the file does not grow, old rows are reused
            now[0] += 0.001
            buckets.take(f"198.51.100.{i}")
        assert os.path.getsize(path) == size
        assert buckets.take("first")  # forgotten: a full burst again, as an evicted address was before
    finally:
        Path(path).unlink()


def test_a_file_that_is_not_a_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a rate-limit table"):
        SharedTable(str(other))
    monkeypatch.setattr(ratelimit, "_shared", None)
    monkeypatch.setenv(ENV_TABLE, str(other))
    assert ratelimit.shared_table() is None  # the worker keeps its own and says so
    assert "per worker" in caplog.text


def test_refusals_and_the_floor_check_are_the_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ratelimit, "_shared", None)
    with serve_table() as path:
        assert os.environ[ENV_TABLE] == path and os.stat(path).st_mode & 0o077 == 0
        before = refusal_counts()
        buckets = SourceBuckets(0.001, 1)
        buckets.take("a")
        assert not buckets.take("a") and buckets.empty("a")
        buckets.spend("a")  # a failure answered anyway is not a refusal
        other_worker = SharedTable(path)
        assert other_worker.counts()["unauthenticated_or_denied"] == before["unauthenticated_or_denied"] + 2
        checks = []
        real = ratelimit.shutil.disk_usage

        def counted(folder: str) -> Any:
            checks.append(folder)
            return real(folder)

        monkeypatch.setattr(ratelimit.shutil, "disk_usage", counted)
        first = FreeSpaceFloor(str(tmp_path), 2**62, 0.0)
        second = FreeSpaceFloor(str(tmp_path), 2**62, 0.0, table=other_worker)
        assert first.low() and second.low()
        assert len(checks) == 1  # one check a second for the whole serve
        ratelimit._shared.close()  # type: ignore[union-attr]
        monkeypatch.setattr(ratelimit, "_shared", None)
    assert not Path(path).exists() and ENV_TABLE not in os.environ


def _drain_inherited(source: str, tries: int, out: Any) -> None:
    buckets = SourceBuckets(0.001, 50)  # the table named by the environment, as a worker opens it
    out.put(sum(buckets.take(source) for _ in range(tries)))


def test_a_forked_worker_opens_the_table_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock is per open file: a worker forked after its parent opened the table must not reuse
    the parent's descriptor, or the workers' locks would not exclude each other."""
    monkeypatch.setattr(ratelimit, "_shared", None)
    with serve_table():
        parent = ratelimit.shared_table()
        assert parent is not None
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        procs = [context.Process(target=_drain_inherited, args=("203.0.113.9", 20_000, out)) for _ in range(4)]
        for proc in procs:
            proc.start()
        got = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert sum(got) == 50, got
        parent.close()
        monkeypatch.setattr(ratelimit, "_shared", None)


@pytest.mark.parametrize("token", ["", "hvs.CAESIUnknownUnknownUnknownUnknown"])
@pytest.mark.parametrize("path", ["/v1/x/nothing", "/v1/secret/data/x"])
def test_a_refusal_past_the_budget_waits_under_serve(tmp_path: Path, key_file: Path, token: str, path: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``serve`` (``app.state.refusal_delay``) every 429 past a source's budget is held back, with
    a token or without, routed or not; answers within the budget are not (a flood on a fixed number of
    connections left an authorised reader ~1/17 of the worker before)."""
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(ratelimit.anyio, "sleep", sleep)  # the module both callers use
    vault = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True)
    try:
        app = create_app(vault)
        app.state.guards = Guards.from_config(
            dataclasses.replace(vault.config.server, unauthenticated_rate=0.001, unauthenticated_burst=3), None)
        app.state.refusal_delay = ratelimit.REFUSAL_DELAY
        headers = {"X-Vault-Token": token} if token else {}
        with TestClient(app) as client:
            statuses = [client.get(path, headers=headers).status_code for _ in range(6)]
        assert statuses[3:] == [429] * 3 and 429 not in statuses[:3]
        assert waited == [ratelimit.REFUSAL_DELAY] * 3
    finally:
        vault.close()


def test_a_fresh_floor_answer_takes_no_lock(tmp_path: Path) -> None:
    """Within a second of the last check the floor's answer is read without the table's lock (a flock
    under ``serve``, taken by every write before); a due check takes it."""
    from nebula_credential.server.ratelimit import FreeSpaceFloor, LocalTable

    table = LocalTable()
    floor = FreeSpaceFloor(str(tmp_path), 1, 0.0, table)
    assert floor.low() is False  # the first check: under the lock
    taken: list[int] = []
    locked = table.locked

    def counting() -> Any:
        taken.append(1)
        return locked()

    table.locked = counting  # type: ignore[method-assign]
    assert [floor.low() for _ in range(5)] == [False] * 5
    assert taken == []
    checked, low, logged = table.floor_state()
    table.set_floor_state(checked - 2.0, low, logged)  # the check is due again
    assert floor.low() is False and taken == [1]
