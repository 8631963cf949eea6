"""Group commit of KV writes: several writes and the pending request audit events in one transaction.

Each write of a group runs in its own savepoint, in order, so its answer is
the one it would have had alone; a refused member takes back only its own
statements; a group that fails as a whole leaves nothing and runs each
member alone; a process killed in the middle of a group leaves the store as
it was before the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import nebula_credential as nc
from nebula_credential.audit import Event
from nebula_credential.exceptions import (
    CheckAndSetError,
    CheckAndSetRequiredError,
    CommitOutcomeUnknownError,
    ConcurrencyError,
    InvalidInputError,
    StoreError,
)
from nebula_credential.history import KVSettings, VersionInfo
from nebula_credential.server._backend import Backend
from nebula_credential.server.app import create_app
from nebula_credential.store import VersionRow
from nebula_credential.vault import DEFAULT_SCOPE, GroupCommit, Vault, VersionPut

ROOT = Path(__file__).resolve().parents[1]


def _event(n: int) -> Event:
    return Event("server.request", None, None, None, "ok", {"path": f"p/{n}"})


def _script(vault: Vault, prefix: str) -> list[VersionPut]:
    """Writes whose answers depend on the ones before them: versions, check-and-set, cas_required, a bad id."""
    def put(path: str, n: int, cas: int | None) -> VersionPut:
        return VersionPut(vault, f"{prefix}/{path}", {"n": n}, DEFAULT_SCOPE, cas)

    return [
        put("a", 1, 0),       # version 1
        put("a", 2, 0),       # refused: a has version 1 now
        put("a", 3, 1),       # version 2
        put("a", 4, None),    # version 3
        put("b", 5, None),    # version 1 of another path
        put("c", 6, None),    # refused: c requires check-and-set (set below)
        put("c", 7, 0),       # refused: c has version 1
        put("c", 8, 1),       # version 2
        VersionPut(vault, "", {"n": 9}, DEFAULT_SCOPE, None),  # a bad id: refused before any statement
        put("b", 10, 1),      # version 2
    ]


def _shape(answer: VersionInfo | Exception) -> tuple[str, int]:
    return (type(answer).__name__, answer.version if isinstance(answer, VersionInfo) else 0)


def test_a_group_answers_each_write_as_it_would_have_been_answered_alone(vault: Vault) -> None:
    alone_script = _script(vault, "alone")
    group_script = _script(vault, "group")
    for prefix in ("alone", "group"):
        vault.put_version(f"{prefix}/c", {"seed": True}, cas=0)
        vault.set_settings(f"{prefix}/c", KVSettings(cas_required=True))
    alone: list[VersionInfo | Exception] = []
    for put in alone_script:
        try:
            alone.append(vault.put_version(put.credential_id, put.value, scope=put.scope, cas=put.cas))
        except Exception as exc:
            alone.append(exc)
    group = vault.put_versions(group_script, [_event(1), _event(2)])
    assert group.events_error is None
    assert [_shape(a) for a in group.puts] == [_shape(a) for a in alone]
    assert [_shape(a) for a in group.puts] == [
        ("VersionInfo", 1), ("CheckAndSetError", 0), ("VersionInfo", 2), ("VersionInfo", 3), ("VersionInfo", 1),
        ("CheckAndSetRequiredError", 0), ("CheckAndSetError", 0), ("VersionInfo", 2), ("InvalidInputError", 0),
        ("VersionInfo", 2)]
    for n, version in ((1, 1), (3, 2), (4, 3)):
        assert vault.get("group/a", version=version) == {"n": n}
    assert vault.get("group/b") == {"n": 10} and vault.versions("group/a").current_version == 3
    assert vault.get("group/c") == {"n": 8} and vault.get("group/c", version=1) == {"seed": True}
    result = vault.audit.verify()
    assert result.ok, result
    last = list(vault.audit.rows())[-2:]
    assert [(r.action, r.credential_id) for r in last] == [("server.request", None)] * 2


def test_cas_required_and_refusals_take_back_only_their_own_statements(vault: Vault) -> None:
    vault.set_kv_config(KVSettings(cas_required=True))
    group = vault.put_versions([
        VersionPut(vault, "r/x", {"n": 1}, DEFAULT_SCOPE, None),   # refused: cas required
        VersionPut(vault, "r/x", {"n": 2}, DEFAULT_SCOPE, 0),      # version 1
        VersionPut(vault, "r/x", {"n": 3}, DEFAULT_SCOPE, 5),      # refused: the current version is 1
        VersionPut(vault, "r/y", {"n": 4}, DEFAULT_SCOPE, 0),      # version 1
    ])
    assert isinstance(group.puts[0], CheckAndSetRequiredError)
    assert isinstance(group.puts[2], CheckAndSetError)
    assert [_shape(a)[1] for a in group.puts] == [0, 1, 0, 1]
    assert vault.get("r/x") == {"n": 2} and vault.get("r/y") == {"n": 4}
    assert [v.version for v in vault.versions("r/x").versions] == [1]


def test_a_group_of_one_refused_write_leaves_nothing_of_it_and_keeps_the_events(vault: Vault) -> None:
    """A group of one write takes no savepoint (issue 27): refused after its row was written (a
    check-and-set that no longer matches), the transaction is rolled back whole and the events are
    written alone; the answers are those of a group with savepoints."""
    vault.put_version("one/a", {"n": 1})
    vault.set_kv_config(KVSettings(cas_required=True))
    for put, error in ((VersionPut(vault, "one/a", {"n": 2}, DEFAULT_SCOPE, 5), CheckAndSetError),
                       (VersionPut(vault, "one/a", {"n": 3}, DEFAULT_SCOPE, None), CheckAndSetRequiredError),
                       (VersionPut(vault, "one/b", {"n": 4}, DEFAULT_SCOPE, 1), CheckAndSetError)):
        group = vault.put_versions([put], [_event(7)])
        assert isinstance(group.puts[0], error) and group.events_error is None
    assert vault.get("one/a") == {"n": 1} and vault.head("one/a").revision == 1  # type: ignore[union-attr]
    assert [v.version for v in vault.versions("one/a").versions] == [1] and vault.head("one/b") is None
    assert [json.loads(e.details)["path"] for e in vault.audit_events(limit=10, action="server.request")] == ["p/7"] * 3
    assert vault.audit.verify().ok
    group = vault.put_versions([VersionPut(vault, "one/a", {"n": 5}, DEFAULT_SCOPE, 1)], [_event(8)])
    assert _shape(group.puts[0]) == ("VersionInfo", 2) and vault.get("one/a") == {"n": 5}


def test_a_lone_write_on_sqlite_sends_no_savepoint_and_reads_the_latest_version_in_its_returning(
        sq: Vault) -> None:
    """Issue 27: on SQLite a group of one KV write is two statements shorter than before (SAVEPOINT and
    RELEASE) and its checked write returns the latest version number (no SELECT of its own)."""
    for n in range(11):
        sq.put_version("t/a", {"n": n})
    conn = sq.store._conn()  # type: ignore[attr-defined]  # this thread's connection
    sent: list[str] = []
    conn.set_trace_callback(lambda sql: sent.append(" ".join(sql.split()[:3]).upper()))
    try:
        group = sq.put_versions([VersionPut(sq, "t/a", {"n": 11}, DEFAULT_SCOPE, 11)])
    finally:
        conn.set_trace_callback(None)
    assert _shape(group.puts[0]) == ("VersionInfo", 12)
    # the row keeps its scope and key version: UPDATE of the other columns (no rewrite of their index entry)
    assert sent == ["BEGIN IMMEDIATE", "SELECT VALUE FROM", "SELECT KEYRING, ID,", "UPDATE CREDENTIALS SET",
                    "UPDATE CREDENTIAL_VERSIONS SET", "INSERT INTO CREDENTIAL_VERSIONS", "DELETE FROM CREDENTIAL_VERSIONS",
                    "COMMIT"]
    assert sq.get("t/a") == {"n": 11} and sq.get("t/a", version=11) == {"n": 10}
    assert [v.version for v in sq.versions("t/a").versions] == list(range(3, 13))
    # a new key version or a new scope: the upsert, which moves the row in the index
    first = sq.keys.active_version().version
    sq.keys.rotate()
    sq.set_settings("t/a", KVSettings(custom_metadata={"scope": "other"}), scope="other")
    conn.set_trace_callback(lambda sql: sent.append(" ".join(sql.split()[:3]).upper()))
    try:
        sent.clear()
        sq.put_versions([VersionPut(sq, "t/a", {"n": 12}, "other", None)])
        rewritten = [s for s in sent if s.endswith("CREDENTIALS SET") or s.endswith("INTO CREDENTIALS")]
    finally:
        conn.set_trace_callback(None)
    assert rewritten == ["INSERT INTO CREDENTIALS"]
    assert [(r.id, r.scope) for r in sq.list(key_version=first + 1)] == [("t/a", "other")]
    assert [r.id for r in sq.list(key_version=first)] == [] and sq.get("t/a") == {"n": 12}
    assert sq.store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # type: ignore[attr-defined]


def test_a_group_that_fails_whole_runs_each_write_and_the_events_alone(vault: Vault,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = vault.audit.record_many
    calls: list[int] = []

    def failing_once(tx: Any, events: Any) -> int:
        calls.append(len(events))
        if len(calls) == 1:
            raise StoreError("the group's audit append failed")
        return real(tx, events)

    monkeypatch.setattr(vault.audit, "record_many", failing_once)
    group = vault.put_versions([VersionPut(vault, "f/a", {"n": 1}, DEFAULT_SCOPE, 0),
                                VersionPut(vault, "f/a", {"n": 2}, DEFAULT_SCOPE, 0),
                                VersionPut(vault, "f/b", {"n": 3}, DEFAULT_SCOPE, None)], [_event(1)])
    assert [_shape(a) for a in group.puts] == [("VersionInfo", 1), ("CheckAndSetError", 0), ("VersionInfo", 1)]
    assert group.events_error is None and calls == [1, 1]  # the group's try, then the events alone
    assert vault.get("f/a") == {"n": 1} and vault.get("f/b") == {"n": 3}
    assert vault.audit.verify().ok


def test_events_that_cannot_be_written_fail_only_the_events(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(tx: Any, events: Any) -> int:
        raise StoreError("no audit")

    monkeypatch.setattr(vault.audit, "record_many", failing)
    group = vault.put_versions([VersionPut(vault, "e/a", {"n": 1}, DEFAULT_SCOPE, None)], [_event(1)])
    assert isinstance(group.puts[0], VersionInfo) and isinstance(group.events_error, StoreError)


def test_a_write_whose_key_version_was_retired_runs_again_alone(vault: Vault,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = Vault._write_in
    refused: list[str] = []

    def retired_once(self: Vault, tx: Any, credential_id: str, *args: Any) -> Any:
        if credential_id == "k/b" and not refused:
            refused.append(credential_id)
            return None  # as put_credential_checked answers for a retired key version: nothing written
        return real(self, tx, credential_id, *args)

    monkeypatch.setattr(Vault, "_write_in", retired_once)
    group = vault.put_versions([VersionPut(vault, "k/a", {"n": 1}, DEFAULT_SCOPE, None),
                                VersionPut(vault, "k/b", {"n": 2}, DEFAULT_SCOPE, 0),
                                VersionPut(vault, "k/c", {"n": 3}, DEFAULT_SCOPE, None)])
    assert refused == ["k/b"] and [_shape(a) for a in group.puts] == [("VersionInfo", 1)] * 3
    assert vault.get("k/b") == {"n": 2}


# ---- the server's group commit -------------------------------------------------------------
@pytest.fixture
def sq(tmp_path: Path, key_file: Path) -> Any:
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True)
    try:
        yield v
    finally:
        v.close()


def test_a_concurrent_burst_is_grouped_and_every_answer_is_right(vault: Vault,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: every write of the burst in one stream of groups, with the events; PostgreSQL: one path's
    writers grouped, other paths concurrently."""
    sq = vault
    backend: Backend = create_app(sq).state.backend
    sq.set_kv_config(KVSettings(max_versions=100))
    sizes: list[int] = []
    real = sq.put_versions

    def counted(puts: Any, events: Any = ()) -> GroupCommit:
        sizes.append(len(puts))
        return real(puts, events)

    monkeypatch.setattr(sq, "put_versions", counted)

    async def main() -> list[Any]:
        one = [backend.put_version(sq, "burst/one", {"n": i}, scope=DEFAULT_SCOPE, cas=None) for i in range(40)]
        cas = [backend.put_version(sq, "burst/cas", {"n": i}, scope=DEFAULT_SCOPE, cas=0) for i in range(20)]
        many = [backend.put_version(sq, f"burst/{i}", {"i": i}, scope=DEFAULT_SCOPE, cas=None) for i in range(60)]
        events = [backend.audit("server.request", keyring=None, outcome="ok", path=f"p/{i}") for i in range(50)]
        first = await asyncio.gather(*one, *cas, *many, *events, return_exceptions=True)
        # the second wave: events of the first ride with the writes of the second
        later = [backend.put_version(sq, "burst/one", {"n": 40 + i}, scope=DEFAULT_SCOPE, cas=None) for i in range(5)]
        more = [backend.audit("server.request", keyring=None, outcome="ok", path=f"q/{i}") for i in range(5)]
        return [*first, *await asyncio.gather(*later, *more, return_exceptions=True)]

    answers = asyncio.run(main())
    one, cas, many = answers[:40], answers[40:60], answers[60:120]
    assert all(a is None for a in answers[120:170]) and all(a is None for a in answers[175:])
    assert sorted(a.version for a in one) == list(range(1, 41))  # each its own version, none lost
    for n, answer in enumerate(one):
        assert sq.get("burst/one", version=answer.version) == {"n": n}
    assert sorted(a.version for a in answers[170:175]) == list(range(41, 46))
    assert sum(isinstance(a, VersionInfo) for a in cas) == 1
    assert sum(isinstance(a, CheckAndSetError) for a in cas) == 19  # one winner, the others told so
    assert all(isinstance(a, VersionInfo) and a.version == 1 for a in many)
    assert max(sizes) > 1  # grouped
    if sq.single_writer:
        assert sum(sizes) == 125  # every write in exactly one group
    result = sq.audit.verify()
    assert result.ok, result
    paths = [r for r in sq.audit.rows() if r.action == "server.request"]
    assert len(paths) == 55


def test_a_failing_member_fails_only_itself_through_the_server(sq: Vault) -> None:
    backend: Backend = create_app(sq).state.backend

    async def main() -> tuple[Any, ...]:
        return await asyncio.gather(
            backend.put_version(sq, "m/a", {"n": 1}, scope=DEFAULT_SCOPE, cas=3),  # no version 3
            backend.put_version(sq, "", {"n": 2}, scope=DEFAULT_SCOPE, cas=None),  # bad id
            backend.put_version(sq, "m/a", {"n": 3}, scope=DEFAULT_SCOPE, cas=None),
            backend.audit("server.request", keyring=None, outcome="ok", path="m"),
            return_exceptions=True)

    bad_cas, bad_id, ok, event = asyncio.run(main())
    assert isinstance(bad_cas, CheckAndSetError) and isinstance(bad_id, InvalidInputError)
    assert isinstance(ok, VersionInfo) and ok.version == 1 and event is None
    assert sq.get("m/a") == {"n": 3}


CHILD = textwrap.dedent("""
    import os, sys
    import nebula_credential as nc
    from nebula_credential.audit import Event
    from nebula_credential.vault import DEFAULT_SCOPE, Vault, VersionPut

    v = nc.open(sys.argv[1])
    real = Vault._write_in
    calls = []

    def dying(self, tx, credential_id, *args):
        calls.append(credential_id)
        if len(calls) == 4:
            os._exit(9)  # killed in the middle of the group, three writes into its transaction
        return real(self, tx, credential_id, *args)

    Vault._write_in = dying
    v.put_versions([VersionPut(v, f"crash/{i}", {"i": i}, DEFAULT_SCOPE, None) for i in range(3)]
                   + [VersionPut(v, "kept", {"n": 2}, DEFAULT_SCOPE, None)] * 3,
                   [Event("server.request", None, None, None, "ok", {"path": "crash"})])
""")


def test_a_process_killed_mid_group_leaves_the_store_as_before_the_group(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with nc.open(url, create=True) as v:
        v.put_version("kept", {"n": 1})
        events_before = sum(1 for _ in v.audit.rows())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", CHILD, url], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    with nc.open(url) as v:
        assert v.get("kept") == {"n": 1} and v.versions("kept").current_version == 1
        for i in range(3):
            with pytest.raises(nc.CredentialNotFoundError):
                v.get(f"crash/{i}")
        assert sum(1 for _ in v.audit.rows()) == events_before
        assert v.audit.verify().ok
        assert v.put_version("kept", {"n": 3}).version == 2  # and the store takes writes again


def test_savepoints_nest_and_each_takes_back_only_its_own_statements(vault: Vault) -> None:
    with vault.store.transaction() as tx:
        tx.set_meta("sp:outer", "1")
        with tx.savepoint():
            tx.set_meta("sp:a", "1")
            with pytest.raises(KeyError), tx.savepoint():
                tx.set_meta("sp:b", "1")
                raise KeyError("refused")
            tx.set_meta("sp:c", "1")
        with pytest.raises(KeyError), tx.savepoint():
            tx.set_meta("sp:d", "1")
            raise KeyError("refused")
        tx.set_meta("sp:e", "1")
    with vault.store.read() as tx:
        assert {k: tx.get_meta(f"sp:{k}") for k in ["outer", "a", "b", "c", "d", "e"]} == {
            "outer": "1", "a": "1", "b": None, "c": "1", "d": None, "e": "1"}


def _duplicate_version(vault: Vault, credential_id: str) -> VersionRow:
    """Version 1 of an id that has it already: the insert breaks the table's key (sent deferred on PostgreSQL)."""
    return VersionRow(vault.keyring_name, credential_id, 1, DEFAULT_SCOPE, 1, None, vault.clock(), None, False)


def test_a_deferred_statement_that_fails_fails_its_transaction(vault: Vault) -> None:
    vault.put_version("d/a", {"n": 1})
    with pytest.raises(ConcurrencyError), vault.store.transaction() as tx:
        tx.set_meta("deferred:before", "1")
        tx.add_version(_duplicate_version(vault, "d/a"))  # on PostgreSQL it fails at COMMIT
    with vault.store.read() as tx:
        assert tx.get_meta("deferred:before") is None  # nothing of the transaction was committed
    assert vault.versions("d/a").current_version == 1


def test_a_deferred_statement_that_fails_in_a_savepoint_is_that_parts_error(vault: Vault) -> None:
    vault.put_version("d/b", {"n": 1})
    with vault.store.transaction() as tx:
        tx.set_meta("deferred:kept", "1")
        # SQLite raises its own error inside a transaction (translated when the transaction ends)
        with pytest.raises((ConcurrencyError, sqlite3.IntegrityError)), tx.savepoint():
            tx.set_meta("deferred:gone", "1")
            tx.add_version(_duplicate_version(vault, "d/b"))  # on PostgreSQL it fails at RELEASE
        tx.set_meta("deferred:after", "1")  # the transaction goes on
    with vault.store.read() as tx:
        assert [tx.get_meta(f"deferred:{k}") for k in ("kept", "gone", "after")] == ["1", None, "1"]


class _CountingConnection:
    """A psycopg connection that counts round trips: a statement outside a pipeline, or a whole pipeline."""

    def __init__(self, conn: Any, trips: list[str]) -> None:
        self._conn = conn
        self._trips = trips
        self._piped = False

    def execute(self, sql: str, params: Any = None) -> Any:
        if not self._piped:
            self._trips.append(sql.split()[0])
        return self._conn.execute(sql, params)

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[None]:
        self._trips.append("pipeline")
        self._piped = True
        try:
            with self._conn.pipeline():
                yield
        finally:
            self._piped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_write_on_postgresql_is_three_round_trips_after_begin(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    if vault.single_writer:
        pytest.skip("PostgreSQL only: SQLite has no round trips")
    from nebula_credential.store.postgres import PostgresTx

    for n in range(12):  # past max_versions: the write archives, adds and prunes
        vault.put_version("rt/a", {"n": n})
    trips: list[str] = []
    real_init = PostgresTx.__init__

    def counting(self: PostgresTx, conn: Any, url: str) -> None:
        real_init(self, cast(Any, _CountingConnection(conn, trips)), url)

    monkeypatch.setattr(PostgresTx, "__init__", counting)
    assert vault.put_version("rt/a", {"n": 12}, cas=12).version == 13
    # the row lock with the settings; the checked write with the latest version; archive, add, prune and COMMIT
    assert len(trips) == 3, trips
    monkeypatch.setattr(PostgresTx, "__init__", real_init)
    assert vault.get("rt/a") == {"n": 12} and vault.get("rt/a", version=12) == {"n": 11}
    assert [v.version for v in vault.versions("rt/a").versions] == list(range(4, 14))


def test_a_group_whose_commit_outcome_is_unknown_is_not_run_again(vault: Vault,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = vault.audit.record_many

    def lost(tx: Any, events: Any) -> int:
        real(tx, events)
        raise CommitOutcomeUnknownError("connection lost during COMMIT")

    monkeypatch.setattr(vault.audit, "record_many", lost)
    group = vault.put_versions([VersionPut(vault, "u/a", {"n": 1}, DEFAULT_SCOPE, None),
                                VersionPut(vault, "", {"n": 2}, DEFAULT_SCOPE, None)], [_event(1)])
    assert isinstance(group.puts[0], CommitOutcomeUnknownError)  # told, never written a second time
    assert isinstance(group.puts[1], InvalidInputError)  # refused before the group: its own answer
    assert isinstance(group.events_error, CommitOutcomeUnknownError)
    monkeypatch.setattr(vault.audit, "record_many", real)
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("u/a")  # (here the failure was raised before COMMIT: nothing applied)


def test_an_audit_batch_on_postgresql_is_two_round_trips_after_begin(vault: Vault,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: the chain's lock went alone, then the tail, the rows and the head each in their own round
    trip; now the lock goes with the tail, and the rows and the head with the COMMIT."""
    if vault.single_writer:
        pytest.skip("PostgreSQL only: SQLite has no round trips")
    from nebula_credential.store.postgres import PostgresTx

    vault.record_events([_event(0)])  # the audit key unwrapped
    trips: list[str] = []
    real_init = PostgresTx.__init__

    def counting(self: PostgresTx, conn: Any, url: str) -> None:
        real_init(self, cast(Any, _CountingConnection(conn, trips)), url)

    monkeypatch.setattr(PostgresTx, "__init__", counting)
    vault.record_events([_event(i) for i in range(1, 6)])
    assert trips == ["pipeline", "pipeline"], trips
    monkeypatch.setattr(PostgresTx, "__init__", real_init)
    assert vault.audit.verify().ok
    assert [json.loads(r.details)["path"] for r in list(vault.audit.rows())[-5:]] == [f"p/{i}" for i in range(1, 6)]


def test_statements_deferred_before_an_executemany_run_before_it(vault: Vault) -> None:
    """A batch (executemany) after deferred statements sends them first, in order, in one pipeline."""
    with vault.store.transaction() as tx:
        tx._defer("INSERT INTO meta (name, value) VALUES (?, ?)", ("order:a", "inserted"))  # type: ignore[attr-defined]
        tx._many(  # type: ignore[attr-defined]
            "UPDATE meta SET value = ? WHERE name = ?", [("updated", "order:a"), ("none", "order:missing")])
    with vault.store.read() as tx:
        assert tx.get_meta("order:a") == "updated"
