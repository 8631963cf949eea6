"""Reads on the event loop (SQLite, local key) and the writer queue in front of SQLite's lock.

The server runs a store read on its loop instead of hopping to a thread;
a call that turns out to write is stopped before its ``BEGIN`` and run
again on a worker, so nothing a read used to write is lost (the access
counters, a failed decrypt's audit event).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.access import AccessCounter, access_totals
from nebula_credential.server._backend import Backend
from nebula_credential.server.app import create_app
from nebula_credential.store.sqlite import WriteNeedsWorker, reads_only


@pytest.fixture
def sq(tmp_path: Path, key_file: Path) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True)
    try:
        yield v
    finally:
        v.close()


def test_reads_only_refuses_a_write_before_it_begins_and_only_on_its_thread(sq: nc.Vault) -> None:
    sq.put("a", {"v": 1})
    with reads_only():
        assert sq.get("a") == {"v": 1}  # reads go on
        with pytest.raises(WriteNeedsWorker):
            sq.put("b", {"v": 2})
        other: list[object] = []
        t = threading.Thread(target=lambda: other.append(sq.put("c", {"v": 3})))
        t.start()
        t.join()
        assert other  # another thread writes as usual
    sq.put("b", {"v": 2})  # and this one again once outside
    assert sq.get("b") == {"v": 2} and sq.get("c") == {"v": 3}


def test_a_refused_flush_keeps_the_access_counts(sq: nc.Vault) -> None:
    counter = AccessCounter(sq.store, sq.clock, block=2, max_age=3600)
    with reads_only():
        counter.record("default", 1, True)
        with pytest.raises(WriteNeedsWorker):
            counter.record("default", 1, True)  # the block is full: its flush would write
    assert access_totals(sq.store, "default") == (0, 0)
    counter.flush()
    assert access_totals(sq.store, "default") == (2, 0)  # nothing was lost


def test_backend_read_runs_on_the_loop_and_a_writing_call_on_a_worker(sq: nc.Vault) -> None:
    backend: Backend = create_app(sq).state.backend
    assert backend.inline_reads
    loop_thread: list[int] = []

    def reading() -> int:
        loop_thread.append(threading.get_ident())
        return 7

    def writing() -> str:
        sq.put("w", {"v": 1})
        return threading.current_thread().name

    async def main() -> tuple[int, str, int]:
        here = threading.get_ident()
        return await backend.read(reading), await backend.read(writing), here

    value, writer, here = asyncio.run(main())
    assert value == 7 and loop_thread == [here]
    assert writer != threading.current_thread().name  # the write ran on a worker
    assert sq.get("w") == {"v": 1}


def test_kv_reads_over_http_count_their_accesses(sq: nc.Vault) -> None:
    sq.access.block = 3  # a flush every third read, which the loop must hand to a worker
    app = create_app(sq)
    token, _ = app.state.backend.tokens.create(["root"])
    headers = {"X-Vault-Token": token}
    with TestClient(app) as client:
        client.post("/v1/secret/data/app", json={"data": {"k": "v"}}, headers=headers).raise_for_status()
        sq.access.flush()
        before = access_totals(sq.store, sq.keyring_name)[0]
        for _ in range(7):
            r = client.get("/v1/secret/data/app", headers=headers)
            assert r.status_code == 200 and r.json()["data"]["data"] == {"k": "v"}
    sq.access.flush()
    # every read counted at least once (a read whose flush was handed over is counted again there)
    assert access_totals(sq.store, sq.keyring_name)[0] - before >= 7


def test_writers_of_two_stores_on_one_file_queue_without_losing_a_write(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    a = nc.open(url, create=True)
    b = nc.open(url)
    try:
        def burst(v: nc.Vault, tag: str) -> None:
            for i in range(40):
                v.put_version("one", {"by": tag, "i": i})

        threads = [threading.Thread(target=burst, args=(v, t)) for v, t in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a.versions("one").current_version == 80
    finally:
        a.close()
        b.close()


def test_writer_free_only_when_no_writer_holds_the_queue(sq: nc.Vault) -> None:
    store = sq.store
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction():
            entered.set()
            leave.wait(10)

    with store.writer_free() as free:  # nobody writes: held at once, and a write in it begins at once
        assert free
        sq.put("x", 1)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert entered.wait(10)
        with store.writer_free() as free:
            assert not free  # never waits for the other writer
    finally:
        leave.set()
        t.join()
    with store.writer_free() as free:
        assert free


def test_backend_write_short_runs_on_the_loop_or_queues_behind_a_writer(sq: nc.Vault) -> None:
    backend: Backend = create_app(sq).state.backend
    entered, leave = threading.Event(), threading.Event()

    def where() -> int:
        sq.put_version("p", {"at": threading.get_ident()})
        return threading.get_ident()

    def hold() -> None:
        with sq.store.transaction():
            entered.set()
            leave.wait(10)

    async def main() -> tuple[int, int, int]:
        here = threading.get_ident()
        free = await backend.write_short(where)
        t = threading.Thread(target=hold)
        t.start()
        assert entered.wait(10)
        asyncio.get_running_loop().call_later(0.2, leave.set)
        busy = await backend.write_short(where)  # the queue is held: a worker waits for it, not the loop
        t.join()
        return here, free, busy

    here, free, busy = asyncio.run(main())
    assert free == here and busy != here
    assert sq.versions("p").current_version == 2


def test_bodies_parse_the_same_by_the_fast_path() -> None:
    """orjson turns an integer past 64 bits into a float: such a body is parsed again by json."""
    from nebula_credential.server import _json
    from nebula_credential.server.errors import HTTPError

    big = 123456789012345678901234567890
    assert _json.loads(b'{"data": {"n": %d}}' % big) == {"data": {"n": big}}
    assert _json.loads(b'{"data": {"n": 18446744073709551615, "f": 1.5e300}}') == {
        "data": {"n": 18446744073709551615, "f": 1.5e300}}
    deep_and_out_of_range = b'{"options": {"cas": 99999999999999999999}, "x": ' + b"[" * 600 + b"]" * 600 + b"}"
    with pytest.raises(HTTPError, match="nested deeper than 512"):  # the original path's first refusal
        _json.loads(deep_and_out_of_range)


@pytest.mark.parametrize(("body", "field"), [
    (b'{"options": {"cas": 9223372036854775808}}', "options.cas"),
    (b'{"batch_input": [{"plaintext": "x"}, {"key_version": -9223372036854775809}]}', "batch_input.1.key_version"),
    (b'{"a": [[1, 2], [3, [4, 99999999999999999999]]]}', "a.1.1.1"),
    (b'{"n": 18446744073709551616}', "n"),  # past 64 bits: orjson's float, parsed again by json
])
def test_a_number_out_of_range_is_named_by_its_field(body: bytes, field: str) -> None:
    """The field path of a refused number is spelled out only on refusal (issue 27: building it for
    every value was ~1.2 ms of a 1,000-item batch); it still names the exact field."""
    from nebula_credential.server import _json
    from nebula_credential.server.errors import HTTPError

    with pytest.raises(HTTPError, match=rf"^{field}: number out of range"):
        _json.loads(body)
    payload = b'{"data": %s, "batch_input": [{"plaintext": "x", "context": ""}]}' % body
    assert _json.loads(payload)["data"] == _json.loads(b'{"data": %s}' % body)["data"]  # payload: as given
