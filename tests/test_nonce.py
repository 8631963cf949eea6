"""The buffered nonce source: no nonce handed out twice, across threads and across fork."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import nebula_credential as nc
from nebula_credential import _nonce


def test_nonces_are_12_bytes_and_refill_past_a_batch() -> None:
    drawn = [_nonce.nonce() for _ in range(3 * _nonce.BATCH + 7)]
    assert {len(n) for n in drawn} == {_nonce.NONCE_SIZE}
    assert len(set(drawn)) == len(drawn)


def test_threads_never_share_a_nonce() -> None:
    per_thread, threads = 10_000, 8
    results: list[list[bytes]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def draw(out: list[bytes]) -> None:
        start.wait()  # all threads draw at once, so refills race each other
        for _ in range(per_thread):
            out.append(_nonce.nonce())

    workers = [threading.Thread(target=draw, args=(out,)) for out in results]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    every = [n for out in results for n in out]
    assert len(every) == per_thread * threads
    assert len(set(every)) == len(every)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_its_parents_buffer() -> None:
    _nonce.nonce()  # the pool now holds a batch the child inherits
    assert _nonce._pool, "the parent must hold buffered nonces when it forks"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw, send, exit without running pytest's teardown
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "wb") as out:
                out.write(b"".join(_nonce.nonce() for _ in range(2 * _nonce.BATCH)))
        finally:
            os._exit(0)
    os.close(write_fd)
    parent = [_nonce.nonce() for _ in range(2 * _nonce.BATCH)]
    with os.fdopen(read_fd, "rb") as src:
        raw = src.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = [raw[i:i + _nonce.NONCE_SIZE] for i in range(0, len(raw), _nonce.NONCE_SIZE)]
    assert len(child) == 2 * _nonce.BATCH
    assert not set(parent) & set(child)
    assert len(set(parent + child)) == len(parent) + len(child)


def test_envelopes_use_the_pool_and_still_round_trip() -> None:
    km = nc.KeyManager.ephemeral()
    blobs = [km.encrypt(b"x", b"ctx") for _ in range(_nonce.BATCH + 3)]
    assert len({b[8:20] for b in blobs}) == len(blobs)
    assert all(km.decrypt(b, b"ctx") == b"x" for b in blobs)
