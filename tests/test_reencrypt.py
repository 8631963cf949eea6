"""The re-encryption engine through the library, on every store kind (``vault`` fixture)."""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections.abc import Iterator

import pytest

import nebula_credential as nc
from nebula_credential.exceptions import ConfigError, NebulaCredentialError
from nebula_credential.reencrypt import run_pass, scope_order

SCOPES = ("development", "other", "production", "user", "zeta")


def _fill(vault: nc.Vault, n: int) -> dict[str, object]:
    values: dict[str, object] = {f"c{i:05d}": {"i": i, "pad": "x" * 40} for i in range(n)}
    vault.put_many(
        (cid, v, SCOPES[i % len(SCOPES)], None) for i, (cid, v) in enumerate(values.items())
    )
    return values


def _stale(vault: nc.Vault) -> int:
    return vault.pending()[1]


def _events(vault: nc.Vault, action: str) -> list[dict[str, object]]:
    return [
        {"credential_id": r.credential_id, "version": r.key_version, "outcome": r.outcome,
         **json.loads(r.details)}
        for r in vault.audit.rows() if r.action == action
    ]


def _corrupt(vault: nc.Vault, cid: str, *, version: int | None = None) -> bytes:
    """Flip a ciphertext byte (or rename the key version) of one stored row via CAS."""
    kr = vault.keyring_name
    with vault.store.transaction() as tx:
        row = tx.get_credential(kr, cid)
        assert row is not None
        blob = bytearray(row.envelope)
        if version is None:
            blob[-1] ^= 0x01
            v = row.key_version
        else:
            blob[4:8] = version.to_bytes(4, "big")
            v = version
        assert tx.cas_update_envelopes(kr, [(cid, row.revision, v, bytes(blob))]) == 1
    return bytes(blob)


def test_scope_order() -> None:
    assert scope_order(["b", "user", "a", "production"], ["production", "user", "development"]) == [
        "production", "user", "a", "b"]
    assert scope_order(["x"], []) == ["x"]
    assert scope_order(["a", "b"], ["b", "b"]) == ["b", "a"]


def test_pass_moves_every_row_once_and_audits(vault: nc.Vault) -> None:
    values = _fill(vault, 230)
    vault.keys.rotate()
    result = vault.reencrypt(batch_size=40)
    assert result.ok and not result.stopped
    assert (result.total, result.reencrypted, result.conflicts) == (230, 230, 0)
    assert sum(result.by_scope.values()) == 230
    assert vault.keys.credential_counts() == {2: 230}
    assert {r.revision for r in vault.list()} == {2}  # each row written exactly once
    for cid, value in values.items():
        assert vault.get(cid) == value
    (start,) = _events(vault, "reencrypt.start")
    (finish,) = _events(vault, "reencrypt.finish")
    assert start["pending"] == 230 and start["version"] == 2
    assert start["scopes"] == ["production", "user", "development", "other", "zeta"]
    assert (finish["reencrypted"], finish["failed"], finish["conflicts"]) == (230, 0, 0)
    assert finish["outcome"] == "ok"
    assert vault.audit.verify().ok
    again = vault.reencrypt()  # nothing stale: a no-op that still records its run
    assert (again.total, again.reencrypted) == (0, 0)
    assert {r.revision for r in vault.list()} == {2}


def test_several_old_versions_and_a_second_rotation(vault: nc.Vault) -> None:
    values = _fill(vault, 60)
    vault.keys.rotate()
    more = {f"d{i}": i for i in range(40)}
    for cid, v in more.items():
        vault.put(cid, v, scope="production")
    vault.keys.rotate()
    result = vault.reencrypt(batch_size=16)
    assert result.ok and result.reencrypted == 100
    assert vault.keys.credential_counts() == {3: 100}
    for cid, value in {**values, **more}.items():
        assert vault.get(cid) == value


def test_priority_order_is_honoured(vault: nc.Vault) -> None:
    _fill(vault, 100)
    vault.keys.rotate()
    seen: list[str] = []
    vault.reencrypt(batch_size=7, progress=lambda scope, n: seen.append(scope))
    order = list(dict.fromkeys(seen))
    assert order == ["production", "user", "development", "other", "zeta"]
    # every batch of a scope finishes before the next scope starts
    assert seen == sorted(seen, key=order.index)

    vault.keys.rotate()
    seen.clear()
    vault.reencrypt(batch_size=7, priority=["zeta", "development"],
                    progress=lambda scope, n: seen.append(scope))
    assert list(dict.fromkeys(seen)) == ["zeta", "development", "other", "production", "user"]


def test_corrupt_row_is_reported_skipped_and_never_rewritten(vault: nc.Vault) -> None:
    values = _fill(vault, 50)
    vault.keys.rotate()
    bad = _corrupt(vault, "c00007")
    before = next(r for r in vault.list() if r.id == "c00007")
    result = vault.reencrypt(batch_size=10)
    assert not result.ok
    assert [(f.id, f.key_version) for f in result.failures] == [("c00007", 1)]
    assert "DecryptionError" in result.failures[0].reason
    assert result.reencrypted == 49
    after = next(r for r in vault.list() if r.id == "c00007")
    assert (after.envelope, after.revision, after.key_version) == (bad, before.revision, 1)
    for cid, value in values.items():
        if cid != "c00007":
            assert vault.get(cid) == value
    (event,) = _events(vault, "reencrypt.failed")
    assert (event["credential_id"], event["outcome"], event["version"]) == ("c00007", "error", 1)
    assert "DecryptionError" in str(event["reason"])
    (finish,) = _events(vault, "reencrypt.finish")
    assert finish["failed"] == 1 and finish["outcome"] == "warning"
    assert vault.audit.verify().ok


def test_missing_key_version_is_reported(vault: nc.Vault) -> None:
    _fill(vault, 20)
    vault.keys.rotate()
    _corrupt(vault, "c00003", version=9)
    result = vault.reencrypt(batch_size=6)
    assert [f.id for f in result.failures] == ["c00003"]
    assert "KeyNotFoundError" in result.failures[0].reason
    assert vault.keys.credential_counts() == {2: 19, 9: 1}


def test_revoked_key_rows_are_reported_not_rewritten(vault: nc.Vault) -> None:
    values = _fill(vault, 30)
    vault.keys.rotate()
    vault.keys.revoke(1)
    before = {r.id: (r.envelope, r.revision) for r in vault.list()}
    result = vault.reencrypt(batch_size=8)
    assert sorted(f.id for f in result.failures) == sorted(values)
    assert all("revoked" in f.reason for f in result.failures)
    assert result.reencrypted == 0
    assert {r.id: (r.envelope, r.revision) for r in vault.list()} == before
    assert _events(vault, "reencrypt.failed") == []  # one summary per pass, not one event per row
    blocked = _events(vault, "reencrypt.blocked")  # one per scope holding such rows
    assert {b["version"] for b in blocked} == {1} and {b["status"] for b in blocked} == {"revoked"}
    assert sum(int(str(b["credentials"])) for b in blocked) == 30
    assert len(blocked) == len({r.scope for r in vault.list()})
    vault.reencrypt(batch_size=8)
    assert len(_events(vault, "reencrypt.blocked")) == 2 * len(blocked)
    vault.keys.reinstate(1)
    again = vault.reencrypt(batch_size=8)
    assert again.ok and again.reencrypted == 30
    for cid, value in values.items():
        assert vault.get(cid) == value


def test_stop_then_resume_redoes_nothing(vault: nc.Vault) -> None:
    values = _fill(vault, 120)
    vault.keys.rotate()
    batches: list[int] = []
    first = vault.reencrypt(batch_size=25, progress=lambda s, n: batches.append(n),
                            should_stop=lambda: len(batches) >= 2)
    done = sum(batches)
    assert first.stopped and first.reencrypted == done and 0 < done < 120
    status = vault.status()["reencryption"]
    assert status == {"pending": 120 - done, "total": 120, "progress": round(done / 120, 6)}
    second = vault.reencrypt(batch_size=25)
    assert second.total == 120 - done and second.reencrypted == 120 - done
    assert not second.stopped
    assert {r.revision for r in vault.list()} == {2}  # no row re-encrypted twice
    assert vault.status()["reencryption"] == {"pending": 0, "total": 120, "progress": 1.0}
    for cid, value in values.items():
        assert vault.get(cid) == value


def test_cas_update_counts_only_rows_whose_revision_held(vault: nc.Vault) -> None:
    """executemany sums rowcount: the stale-revision row counts 0 and keeps the newer value."""
    _fill(vault, 3)
    vault.keys.rotate()
    rows = list(vault.list())
    vault.put("c00001", {"newer": True}, scope=rows[1].scope)
    kr = vault.keyring_name
    updates = [(r.id, r.revision, r.key_version, r.envelope) for r in rows]
    with vault.store.transaction() as tx:
        assert tx.cas_update_envelopes(kr, updates) == 2
        assert tx.cas_update_envelopes(kr, []) == 0
    assert vault.get("c00001") == {"newer": True}


def test_rate_limit_paces_rows(vault: nc.Vault) -> None:
    import time

    _fill(vault, 60)
    vault.keys.rotate()
    start = time.monotonic()
    result = vault.reencrypt(batch_size=10, rate_limit=200.0)
    assert result.reencrypted == 60
    assert time.monotonic() - start >= 0.25  # 60 rows at 200 rows/s: 0.3 s


def test_bad_arguments_are_refused(vault: nc.Vault) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        run_pass(vault.keys, batch_size=0)
    with pytest.raises(ConfigError, match="workers"):
        run_pass(vault.keys, workers=0)


def test_extra_workers_refused_on_sqlite(tmp_path: object, key_file: object) -> None:
    v = nc.open(f"sqlite:///{tmp_path}/w.db", create=True)
    try:
        with pytest.raises(ConfigError, match=r"SKIP LOCKED.*--workers 1"):
            v.reencrypt(workers=2)
        assert isinstance(ConfigError("x", "y"), NebulaCredentialError)
    finally:
        v.close()


def test_workers_share_the_work_without_overlap(vault: nc.Vault) -> None:
    if not vault.store.supports_skip_locked:
        pytest.skip("parallel workers need SKIP LOCKED (PostgreSQL); SQLite refuses them")
    values = _fill(vault, 400)
    vault.keys.rotate()
    _corrupt(vault, "c00011")
    result = vault.reencrypt(batch_size=15, workers=4)
    assert result.workers == 4
    assert result.reencrypted == 399 and result.conflicts == 0
    assert [f.id for f in result.failures] == ["c00011"]  # reported once, by one worker
    revisions = {r.id: r.revision for r in vault.list()}
    assert revisions.pop("c00011") == 2  # the corrupting write; never rewritten
    assert set(revisions.values()) == {2}  # none processed twice, none skipped
    for cid, value in values.items():
        if cid != "c00011":
            assert vault.get(cid) == value


# ---- concurrent application traffic --------------------------------------------
@pytest.fixture
def second_vault(vault: nc.Vault) -> Iterator[nc.Vault]:
    """Another handle on the same store: the application's own connection(s)."""
    other = nc.open(vault.store.url, provider=vault.provider)
    try:
        yield other
    finally:
        other.store.close()


def test_writers_and_readers_during_the_pass(vault: nc.Vault, second_vault: nc.Vault) -> None:
    n = 600
    _fill(vault, n)
    vault.keys.rotate()
    ids = [f"c{i:05d}" for i in range(n)]
    committed: dict[str, int] = {}  # id -> last value whose put() returned
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    app = second_vault

    counter = itertools.count(1)  # global: later writes always carry larger numbers

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                cid = rng.choice(ids)
                with lock:
                    value = next(counter)  # serialise puts per id so "last written" is well defined
                    app.put(cid, {"w": value}, scope=SCOPES[int(cid[1:]) % len(SCOPES)])
                    committed[cid] = value
        except BaseException as exc:
            errors.append(exc)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                cid = rng.choice(ids)
                with lock:
                    floor = committed.get(cid)
                value = app.get(cid)
                if floor is None:
                    assert value == {"i": int(cid[1:]), "pad": "x" * 40} or "w" in value
                else:  # never older than what was committed before the read began
                    assert value["w"] >= floor, (cid, value, floor)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in (3, 4)]
    for t in threads:
        t.start()
    try:
        results = [vault.reencrypt(batch_size=20, rate_limit=1500.0) for _ in range(2)]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert all(r.ok for r in results)
    assert committed, "the writers made no progress during the pass"
    final = vault.reencrypt()
    assert final.ok
    assert vault.keys.credential_counts() == {2: n}
    for cid in ids:
        value = vault.get(cid)
        if cid in committed:
            assert value == {"w": committed[cid]}, cid  # the newest write won: zero lost updates
        else:
            assert value == {"i": int(cid[1:]), "pad": "x" * 40}


def test_instance_with_a_stale_cache_never_moves_rows_back(vault: nc.Vault) -> None:
    """A second instance that cached v1 as active before another rotated must not
    're-encrypt' v2 rows back under v1 (seen as a double move with two daemons)."""
    other = nc.open(vault.store.url, clock=vault.clock)
    try:
        other.put("warm", {"x": 0})  # other's cache: v1 active, fresh for refresh_interval
        _fill(vault, 20)
        vault.keys.rotate()
        vault.reencrypt()
        revisions = {r.id: r.revision for r in vault.list()}
        result = other.reencrypt()  # the stale instance's pass
        assert result.active_version == 2 and result.reencrypted == 0
        assert vault.keys.credential_counts() == {2: 21}
        assert {r.id: r.revision for r in vault.list()} == revisions
    finally:
        other.close()
