"""Version history (Vault's KV v2 rules) through the library, the HTTP server and hvac; concurrent writers;
re-encryption, the destroy guard and migration with past versions."""

from __future__ import annotations

import asyncio
import importlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import hvac
import pytest
from hvac import exceptions

import nebula_credential as nc
from nebula_credential.envelope import credential_context, peek_version
from nebula_credential.exceptions import CheckAndSetError, CheckAndSetRequiredError, PolicyViolationError
from nebula_credential.history import KVSettings
from nebula_credential.store import SCHEMA_VERSION
from nebula_credential.store.tx import VersionsTx

from .helpers import FakeClock
from .server_proc import Server, sqlite_serve

WRITERS = 32


# ---- the library ---------------------------------------------------------------------------
def test_every_write_is_a_version_and_old_ones_stay_readable(vault: nc.Vault) -> None:
    for i in range(12):
        vault.put("svc/db", {"n": i})
    found = vault.versions("svc/db")
    assert found.current_version == 12
    assert [v.version for v in found.versions] == list(range(3, 13))  # Vault's default: 10 kept
    assert found.oldest_version == 3
    assert vault.get("svc/db") == {"n": 11}
    assert vault.get("svc/db", version=5) == {"n": 4}
    assert vault.get_record("svc/db", version=5).version == 5
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("svc/db", version=2)  # removed past max_versions, envelope and all
    with vault.store.read() as tx:
        assert tx.get_version_row(vault.keyring_name, "svc/db", 2) is None
        assert tx.version_header_mismatches(vault.keyring_name) == []  # the dialect's header SQL runs


def test_delete_undelete_destroy(vault: nc.Vault, clock: FakeClock) -> None:
    for i in range(3):
        vault.put("a", {"n": i})
    assert vault.delete_versions("a") == [3]
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("a")
    assert vault.get("a", version=2) == {"n": 1}
    assert vault.undelete("a", ["3"]) == [3]  # digit strings, as the CLI and the Go client send them
    assert vault.get("a") == {"n": 2}
    assert vault.destroy_versions("a", [1, 3]) == [1, 3]
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("a")
    assert vault.undelete("a", [3]) == []  # destroyed stays destroyed
    with vault.store.read() as tx:
        assert tx.get_version_row(vault.keyring_name, "a", 3).envelope is None  # type: ignore[union-attr]
        head = tx.get_credential(vault.keyring_name, "a")
        assert head is not None
    assert vault.decrypt_row(head) is None  # the current row's copy of version 3 is gone too
    infos = {v.version: v for v in vault.versions("a").versions}
    assert infos[1].destroyed and infos[3].destroyed and not infos[2].destroyed
    vault.put("a", {"n": 3})
    assert vault.versions("a").current_version == 4 and vault.get("a") == {"n": 3}
    vault.delete("a")  # every version goes with the credential
    with vault.store.read() as tx:
        assert tx.version_rows(vault.keyring_name, "a") == []


def test_a_kv_read_of_one_version_answers_as_the_whole_history_does(vault: nc.Vault) -> None:
    """Issue 27: ``read_kv`` reads one version's row, not every version of the history; every version
    (current, past, soft-deleted, destroyed, removed past max_versions, never written) answers as
    ``read_version`` (the whole history) does, and the SQL's one row as the generic derivation does."""
    for i in range(12):
        vault.put_version("h", {"n": i}, metadata={"kv": {"custom_metadata": {"team": "a"}}} if i == 3 else None)
    vault.delete_versions("h", [5])
    vault.destroy_versions("h", [7])
    kr = vault.keyring_name
    for step in ("all readable", "current deleted", "current destroyed"):
        for number in (None, 0, -1, 1, 2, 3, 5, 6, 7, 11, 12, 13):
            versions, record = vault.read_version("h", number)
            got = vault.read_kv("h", number)
            assert got.info == versions.get(number or versions.current_version), (step, number)
            assert got.settings == versions.settings and got.settings.custom_metadata == {"team": "a"}
            assert got.current_version == versions.current_version == 12
            assert got.record == record, (step, number)
            with vault.store.read() as tx:
                assert tx.credential_version(kr, "h", number or None) == VersionsTx.credential_version(
                    tx, kr, "h", number or None)
        assert vault.read_kv("h", 6).record is not None and vault.read_kv("h", 6).record.value == {"n": 5}
        if step == "all readable":
            assert vault.read_kv("h").record.value == {"n": 11}  # type: ignore[union-attr]
            vault.delete_versions("h", [12])
        elif step == "current deleted":
            assert vault.read_kv("h").record is None and vault.read_kv("h").info is not None
            vault.undelete("h", [12])
            vault.destroy_versions("h", [12])
    with pytest.raises(nc.CredentialNotFoundError):
        vault.read_kv("nothing")
    vault.set_settings("meta-only", KVSettings(max_versions=3))  # a path with settings and no version
    with vault.store.read() as tx:
        assert tx.credential_version(kr, "meta-only", None) == VersionsTx.credential_version(tx, kr, "meta-only", None)
    assert vault.read_kv("meta-only") == (None, vault.versions("meta-only").settings, 0, None)


def test_cas_and_settings(vault: nc.Vault, clock: FakeClock) -> None:
    assert vault.put_version("c", 1, cas=0).version == 1
    with pytest.raises(CheckAndSetError) as err:
        vault.put_version("c", 2, cas=0)
    assert err.value.counter == "version" and err.value.actual == 1
    assert vault.get("c") == 1  # the failed write left nothing behind
    vault.set_settings("c", KVSettings(max_versions=2, cas_required=True, delete_version_after=60,
                                       custom_metadata={"owner": "x"}))
    with pytest.raises(CheckAndSetRequiredError):
        vault.put("c", 3)
    for n in (1, 2, 3):
        vault.put_version("c", n * 10, cas=n)
    found = vault.versions("c")
    assert [v.version for v in found.versions] == [3, 4]
    assert found.settings.custom_metadata == {"owner": "x"} and found.settings.metadata_version == 1
    assert vault.get("c") == 30
    clock.advance(seconds=61)  # delete_version_after: versions written since read as deleted
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("c")
    vault.set_kv_config(KVSettings(max_versions=3))
    assert vault.kv_config().max_versions == 3


def test_metadata_before_data_is_no_version(vault: nc.Vault) -> None:
    vault.set_settings("m", KVSettings(max_versions=1, custom_metadata={"scope": "production"}), scope="production")
    assert vault.versions("m").current_version == 0
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("m")
    vault.put("m", {"v": 1}, scope="production")
    vault.put("m", {"v": 2}, scope="production")
    assert [v.version for v in vault.versions("m").versions] == [2]


def test_async_vault_shares_the_rules(store_url: str, key_file: Path) -> None:
    async def main() -> None:
        async with await nc.aopen(store_url, create=True) as av:
            await av.put("x", {"n": 1})
            await av.put("x", {"n": 2})
            assert await av.get("x", version=1) == {"n": 1}
            assert (await av.versions("x")).current_version == 2
            assert await av.delete_versions("x", [2]) == [2]
            assert await av.undelete("x", [2]) == [2]
            assert await av.destroy_versions("x", [1]) == [1]
            assert (await av.put_version("x", {"n": 3}, cas=2)).version == 3

    asyncio.run(main())


# ---- key lifecycle: re-encryption and the destroy guard ---------------------------------------
def test_reencryption_moves_every_version_and_the_guard_counts_them(vault: nc.Vault, clock: FakeClock) -> None:
    for i in range(10):
        for j in range(5):
            vault.put(f"r{j}", {"i": i, "j": j})
    vault.put("only-old-history", {"v": 0})
    old = vault.keys.active_version().version
    vault.keys.rotate()
    vault.put("only-old-history", {"v": 1})  # the current row is under the new key, version 1 is not
    result = vault.reencrypt()
    assert result.ok and result.versions_reencrypted == 5 * 9 + 1, result.failures  # past versions
    with vault.store.read() as tx:
        assert set(tx.versions_referenced(vault.keyring_name)) == {old + 1}
    for j in range(5):
        for i in range(10):
            assert vault.get(f"r{j}", version=i + 1) == {"i": i, "j": j}
    assert vault.get("only-old-history", version=1) == {"v": 0}


def test_destroy_guard_refuses_a_key_only_an_old_version_uses(keep1_vault: nc.Vault, clock: FakeClock) -> None:
    vault = keep1_vault
    vault.put("g", {"v": 1})
    old = vault.keys.active_version().version
    vault.keys.rotate()
    vault.put("g", {"v": 2})  # the current row is under the new key; version 1 is not
    vault.keys.revoke(old)
    clock.advance(days=400)
    with pytest.raises(PolicyViolationError, match="still used by 1"):
        vault.keys.destroy(old)
    vault.destroy_versions("g", [1])  # the envelope gone: nothing needs the key any more
    vault.keys.destroy(old)
    assert vault.get("g") == {"v": 2}


# ---- migration ------------------------------------------------------------------------------
def _write_v5_rows(v: nc.Vault, rows: dict[str, tuple[object, int, dict[str, object]]]) -> None:
    """Rows as release 5 wrote them: the credentials table only (id -> value, revision, metadata)."""
    kr = v.keyring_name
    with v.store.transaction() as tx:
        for cid, (value, revision, metadata) in rows.items():
            blob = v.keys.encrypt(json.dumps(value).encode(), credential_context(kr, cid, "default"))
            for _ in range(revision):  # each upsert moves the revision on by one
                tx.put_credential(kr, cid, "default", peek_version(blob), blob, metadata, v.clock())


def test_v5_store_migrates_and_keeps_its_data(store_url: str, key_file: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made by release 5's migrations (no version table) opens, migrates and keeps its data."""
    backend = "sqlite" if store_url.startswith("sqlite") else "postgres"
    module = importlib.import_module(f"nebula_credential.store.{backend}")
    with monkeypatch.context() as patched:
        patched.setattr(module, "MIGRATIONS", module.MIGRATIONS[:5])
        with nc.open(store_url, create=True) as v:
            with v.store.read() as tx:
                assert tx.schema_version() == 5 and not tx.has_table("credential_versions")
            _write_v5_rows(v, {"kept": ({"x": 2}, 2, {}),
                               "meta-only": (None, 1, {"kv": {"custom_metadata": {}, "placeholder": True}})})
    with nc.open(store_url) as v:  # every migration since, this one included
        with v.store.read() as tx:
            assert tx.schema_version() == SCHEMA_VERSION
        found = v.versions("kept")  # numbered by revision: a client's next cas still matches
        assert found.current_version == 2 and [x.version for x in found.versions] == [2]
        assert v.get("kept") == {"x": 2} and v.get("kept", version=2) == {"x": 2}
        assert v.versions("meta-only").current_version == 0  # a metadata-only placeholder has no version
        v.put_version("kept", {"x": 3}, cas=2)
        assert v.get("kept", version=2) == {"x": 2} and v.get("kept", version=3) == {"x": 3}


# ---- the HTTP server, hvac unmodified ---------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-kv-versions") as s:
        yield s


@pytest.fixture(scope="module")
def kv(server: Server) -> hvac.api.secrets_engines.KvV2:
    return server.hvac(server.token("root")).secrets.kv.v2


def test_hvac_every_kv_v2_call(kv: hvac.api.secrets_engines.KvV2) -> None:
    assert kv.create_or_update_secret("h/one", secret={"n": 1}, cas=0)["data"]["version"] == 1
    kv.create_or_update_secret("h/one", secret={"n": 2})
    with pytest.raises(exceptions.InvalidRequest, match="check-and-set parameter did not match"):
        kv.create_or_update_secret("h/one", secret={"n": 9}, cas=1)
    assert kv.read_secret_version("h/one", version=1, raise_on_deleted_version=True)["data"]["data"] == {"n": 1}
    kv.delete_latest_version_of_secret("h/one")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret_version("h/one", raise_on_deleted_version=True)
    kv.undelete_secret_versions("h/one", versions=[2])
    assert kv.read_secret_version("h/one", raise_on_deleted_version=True)["data"]["data"] == {"n": 2}
    kv.delete_secret_versions("h/one", versions=[1])
    kv.destroy_secret_versions("h/one", versions=[2])
    meta = kv.read_secret_metadata("h/one")["data"]
    assert meta["current_version"] == 2 and meta["oldest_version"] == 0
    assert meta["versions"]["1"]["deletion_time"] and meta["versions"]["2"]["destroyed"] is True
    kv.update_metadata("h/one", max_versions=3, cas_required=True, delete_version_after="1h",
                       custom_metadata={"team": "a"})
    meta = kv.read_secret_metadata("h/one")["data"]
    assert (meta["max_versions"], meta["cas_required"], meta["delete_version_after"], meta["custom_metadata"]) == (
        3, True, "1h0m0s", {"team": "a"})
    with pytest.raises(exceptions.InvalidRequest, match="check-and-set parameter required"):
        kv.create_or_update_secret("h/one", secret={"n": 3})
    written = kv.create_or_update_secret("h/one", secret={"n": 3}, cas=2)["data"]
    assert written["version"] == 3 and written["deletion_time"]  # delete_version_after: a time ahead
    kv.patch("h/one", {"m": 1})  # hvac reads the version and patches with its cas
    assert kv.read_secret_version("h/one", raise_on_deleted_version=True)["data"]["data"] == {"n": 3, "m": 1}
    assert kv.list_secrets("h")["data"]["keys"] == ["one"]
    kv.configure(max_versions=7, cas_required=False, delete_version_after="90s")
    config = kv.read_configuration()["data"]
    assert (config["max_versions"], config["cas_required"], config["delete_version_after"]) == (7, False, "1m30s")
    kv.configure(max_versions=0, cas_required=False, delete_version_after="0s")
    kv.delete_metadata_and_all_versions("h/one")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret_metadata("h/one")


def test_merge_patch_on_metadata_and_content_type(server: Server) -> None:
    with server.http(server.token("root")) as c:
        c.post("/v1/secret/data/p", json={"data": {"a": 1}})
        c.post("/v1/secret/metadata/p", json={"custom_metadata": {"k": "v", "j": "w"}})
        assert c.patch("/v1/secret/data/p", json={"data": {"b": 2}}).status_code == 415
        patched = c.patch("/v1/secret/metadata/p", json={"max_versions": 4, "custom_metadata": {"k": None}},
                          headers={"Content-Type": "application/merge-patch+json"})
        assert patched.status_code == 204
        meta = c.get("/v1/secret/metadata/p").json()["data"]
        assert meta["max_versions"] == 4 and meta["custom_metadata"] == {"j": "w"}
        assert meta["current_metadata_version"] == 2


# ---- concurrent writers ---------------------------------------------------------------------
def _writers(server: Server, paths: list[str], cas: bool) -> list[tuple[str, int, int, int]]:
    """WRITERS threads, each with its own connection, all released at once; (path, n, status, version)."""
    token = server.token("root")
    barrier = threading.Barrier(WRITERS)

    def one(n: int) -> tuple[str, int, int, int]:
        path = paths[n % len(paths)]
        with httpx.Client(base_url=server.url, headers={"X-Vault-Token": token}, timeout=60) as c:
            body: dict[str, object] = {"data": {"n": n}}
            if cas:
                body["options"] = {"cas": 0}
            barrier.wait()
            r = c.post(f"/v1/secret/data/{path}", json=body)
            return path, n, r.status_code, r.json()["data"]["version"] if r.status_code == 200 else 0

    with ThreadPoolExecutor(WRITERS) as pool:
        return list(pool.map(one, range(WRITERS)))


@pytest.mark.parametrize("spread", [1, WRITERS])
def test_concurrent_writers_without_cas_all_succeed(server: Server, spread: int) -> None:
    paths = [f"conc/{spread}/{i}" for i in range(spread)]
    results = _writers(server, paths, cas=False)
    assert [s for _, _, s, _ in results if s != 200] == []
    with server.http(server.token("root")) as c:
        for path in paths:
            mine = sorted((v, n) for p, n, _, v in results if p == path)
            assert [v for v, _ in mine] == list(range(1, len(mine) + 1))  # each its own version
            c.post(f"/v1/secret/metadata/{path}", json={"max_versions": WRITERS})
            for version, n in mine[-10:]:  # the default keeps 10; every kept one reads back its value
                got = c.get(f"/v1/secret/data/{path}?version={version}").json()["data"]["data"]
                assert got == {"n": n}


def test_concurrent_writers_on_a_thousand_paths(server: Server) -> None:
    token = server.token("root")
    barrier = threading.Barrier(WRITERS)

    def writer(w: int) -> list[int]:
        with httpx.Client(base_url=server.url, headers={"X-Vault-Token": token}, timeout=60) as c:
            barrier.wait()
            return [c.post(f"/v1/secret/data/k/{w}-{i}", json={"data": {"w": w, "i": i}}).status_code
                    for i in range(32)]

    with ThreadPoolExecutor(WRITERS) as pool:
        statuses = [s for batch in pool.map(writer, range(WRITERS)) for s in batch]
    assert len(statuses) == 1024 and set(statuses) == {200}
    with server.http(token) as c:
        assert len(c.request("LIST", "/v1/secret/metadata/k").json()["data"]["keys"]) == 1024
        assert c.get("/v1/secret/data/k/7-31?version=1").json()["data"]["data"] == {"w": 7, "i": 31}


def test_concurrent_writers_with_cas_one_winner_per_version(server: Server) -> None:
    results = _writers(server, ["conc/cas"], cas=True)
    statuses = sorted(s for _, _, s, _ in results)
    assert statuses == [200] + [400] * (WRITERS - 1)
    winner = next(n for _, n, s, _ in results if s == 200)
    with server.http(server.token("root")) as c:
        assert c.get("/v1/secret/data/conc/cas?version=1").json()["data"]["data"] == {"n": winner}
        # next round: every writer names version 1; again one winner
        barrier = threading.Barrier(8)

        def again(n: int) -> int:
            with httpx.Client(base_url=server.url, headers=dict(c.headers), timeout=60) as mine:
                barrier.wait()
                return mine.post("/v1/secret/data/conc/cas", json={"data": {"m": n}, "options": {"cas": 1}}
                                 ).status_code

        with ThreadPoolExecutor(8) as pool:
            assert sorted(pool.map(again, range(8))) == [200] + [400] * 7


def test_concurrent_writers_through_a_postgres_server(tmp_path: Path, postgres_store_url_factory: object) -> None:
    from .server_proc import serve

    url = postgres_store_url_factory()  # type: ignore[operator]
    with serve(tmp_path, url) as pg:
        one = _writers(pg, ["pg/one"], cas=False)
        assert [s for _, _, s, _ in one if s != 200] == []
        assert sorted(v for _, _, _, v in one) == list(range(1, WRITERS + 1))
        many = _writers(pg, [f"pg/many/{i}" for i in range(WRITERS)], cas=False)
        assert [s for _, _, s, _ in many if s != 200] == [] and {v for _, _, _, v in many} == {1}
        cas = _writers(pg, ["pg/cas"], cas=True)
        assert sorted(s for _, _, s, _ in cas) == [200] + [400] * (WRITERS - 1)
        with pg.http(pg.token("root")) as c:
            for _, n, _, version in sorted(one, key=lambda r: r[3])[-10:]:
                assert c.get(f"/v1/secret/data/pg/one?version={version}").json()["data"]["data"] == {"n": n}


def test_concurrent_writers_in_process_postgres(postgres_store_url_factory: object, key_file: Path) -> None:
    """The serialisation the HTTP test sees on SQLite, on PostgreSQL's row lock: threads of one process."""
    url = postgres_store_url_factory()  # type: ignore[operator]
    with nc.open(url, create=True) as v:
        with ThreadPoolExecutor(WRITERS) as pool:
            numbers = sorted(pool.map(lambda n: v.put_version("pg", {"n": n}).version, range(WRITERS)))
        assert numbers == list(range(1, WRITERS + 1))

        def cas0(n: int) -> bool:
            try:
                v.put_version("pg-cas", {"n": n}, cas=0)
                return True
            except CheckAndSetError:
                return False

        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(cas0, range(16))) == 1



# ---- backups, restore and doctor carry the history ----------------------------------------------
def test_backup_and_restore_carry_every_version(tmp_path: Path, key_file: Path, clock: FakeClock) -> None:
    from nebula_credential.backups import create_sqlite_backup
    from nebula_credential.restore import restore_backup, verify_backup

    with nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock) as live:
        for i in range(10):
            for j in range(3):
                live.put(f"b{j}", {"i": i})
        live.keys.rotate()
        live.reencrypt()
        create_sqlite_backup(live, tmp_path / "b.db", keep=timedelta(days=30))
        report = verify_backup(tmp_path / "b.db", live=live.store)
        assert report.ok, report.problems
        assert report.credentials == 30 and report.decrypted == 30  # 3 current rows, 27 past versions
        with sqlite3.connect(tmp_path / "b.db") as conn:  # bit rot in one past version of the copy
            blob = bytearray(conn.execute(
                "SELECT envelope FROM credential_versions WHERE id = 'b1' AND version = 4").fetchone()[0])
            blob[30] ^= 0x01
            conn.execute("UPDATE credential_versions SET envelope = ? WHERE id = 'b1' AND version = 4",
                         (bytes(blob),))
        bad = verify_backup(tmp_path / "b.db", live=live.store)
        assert not bad.ok and any("default/b1#v4" in p for p in bad.problems)
        create_sqlite_backup(live, tmp_path / "good.db", keep=timedelta(days=30))
        target = tmp_path / "restored.db"
        report, _ = restore_backup(tmp_path / "good.db", f"sqlite:///{target}", live=live.store)
        assert report.ok, report.problems
    with nc.open(f"sqlite:///{target}", clock=clock) as restored:
        for j in range(3):
            assert [restored.get(f"b{j}", version=n) for n in range(1, 11)] == [{"i": i} for i in range(10)]


def test_doctor_names_a_past_version_whose_column_lies(vault: nc.Vault) -> None:
    from nebula_credential.doctor import check_records

    vault.put("d", 1)
    vault.put("d", 2)
    with vault.store.transaction() as tx:
        assert tx.version_header_mismatches(vault.keyring_name) == []
        tx._exec("UPDATE credential_versions SET key_version = 7 WHERE id = 'd' AND version = 1")  # type: ignore[attr-defined]
    findings = check_records(vault.store)
    assert findings[0].problem and "version 1 of credential 'd'" in findings[0].message


def test_a_kv_read_and_a_get_on_sqlite_send_one_select_and_no_transaction(tmp_path: Path, key_file: Path) -> None:
    """Issue 27: a single SELECT reads one snapshot on its own, so ``read_one`` skips BEGIN and COMMIT
    on SQLite too (they were two of a KV read's four statements); the answers are unchanged."""
    with nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True) as vault:
        for n in range(3):
            vault.put_version("app", {"n": n})
        vault.put("plain", {"a": 1})
        vault.read_version("app"), vault.get("plain")  # keys loaded, counters settled
        sent: list[str] = []
        conn = vault.store._conn()  # type: ignore[attr-defined]  # this thread's connection
        conn.set_trace_callback(lambda sql: sent.append(sql.split()[0].upper()))
        try:
            versions, current = vault.read_version("app")
            value = vault.get("plain")
            read = vault.read_kv("app")
        finally:
            conn.set_trace_callback(None)
    assert sent == ["SELECT", "SELECT", "SELECT"]
    assert read.record == current and read.current_version == 3
    assert current is not None and current.value == {"n": 2} and versions.current_version == 3
    assert value == {"a": 1}
