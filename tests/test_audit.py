"""The audit chain: verifies after a mixed workload; every kind of tampering is caught at its sequence number."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.audit import canonical

from .helpers import FakeClock, cli_env, run_cli


def _workload(vault: nc.Vault, clock: FakeClock) -> None:
    cfg_audit = vault.keyring("tenant-b")
    cfg_audit.keys.initialize()
    for i in range(30):
        vault.put(f"c{i}", {"secret": f"s3cr3t-{i}"}, scope="production" if i % 2 else "user")
        cfg_audit.put(f"b{i}", {"v": i})
    vault.keys.rotate(reason="scheduled test")
    vault.reencrypt()
    vault.keys.rotate()
    vault.keys.revoke(1)
    vault.keys.reinstate(1)
    clock.advance(days=2)
    vault.maintain()
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("missing")


def _conn(vault: nc.Vault):  # type: ignore[no-untyped-def]
    return vault.store._conn()  # type: ignore[attr-defined]


def test_chain_verifies_after_mixed_workload_and_holds_no_secrets(vault: nc.Vault, clock: FakeClock) -> None:
    _workload(vault, clock)
    result = vault.audit.verify()
    assert result.ok and result.first_bad_seq is None and result.events >= 8
    dump = json.dumps([repr(r) for r in vault.audit.rows()])
    assert "s3cr3t" not in dump
    actions = [r.action for r in vault.audit.rows()]
    for expected in ("store.init", "key.create", "key.rotate", "key.revoke", "key.reinstate", "key.status"):
        assert expected in actions


def test_rotation_event_names_old_and_new_versions(vault: nc.Vault) -> None:
    vault.keys.rotate()
    vault.keys.rotate()
    rotations = [json.loads(r.details) | {"v": r.key_version} for r in vault.audit.rows() if r.action == "key.rotate"]
    assert [(d["old_version"], d["new_version"], d["v"]) for d in rotations] == [(1, 2, 2), (2, 3, 3)]


def test_actor_is_configurable_and_defaults_to_user_at_host(tmp_path: Path, key_file: Path) -> None:
    cfg = nc.KeyManagementConfig.from_dict({"audit": {"actor": "deploy-bot"}})
    with nc.open(f"sqlite:///{tmp_path / 'a.db'}", config=cfg, create=True) as v:
        assert {r.actor for r in v.audit.rows()} == {"deploy-bot"}
    with nc.open(f"sqlite:///{tmp_path / 'a.db'}") as v:
        v.keys.rotate()
        assert "@" in list(v.audit.rows())[-1].actor


@pytest.fixture
def sqlite_vault(tmp_path: Path, key_file: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    v = nc.open(f"sqlite:///{tmp_path / 't.db'}", create=True, clock=clock)
    _workload(v, clock)
    assert v.audit.verify().ok
    yield v
    v.close()


def test_edited_field_detected(sqlite_vault: nc.Vault) -> None:
    _conn(sqlite_vault).execute("UPDATE audit_events SET details = '{}' WHERE seq = 5")
    assert sqlite_vault.audit.verify().first_bad_seq == 5


def test_deleted_row_detected(sqlite_vault: nc.Vault) -> None:
    _conn(sqlite_vault).execute("DELETE FROM audit_events WHERE seq = 4")
    r = sqlite_vault.audit.verify()
    assert not r.ok and r.first_bad_seq == 4


def test_swapped_rows_detected(sqlite_vault: nc.Vault) -> None:
    conn = _conn(sqlite_vault)
    conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = 6")
    conn.execute("UPDATE audit_events SET seq = 6 WHERE seq = 7")
    conn.execute("UPDATE audit_events SET seq = 7 WHERE seq = -1")
    assert sqlite_vault.audit.verify().first_bad_seq == 6


def test_forged_row_with_plain_sha256_detected(sqlite_vault: nc.Vault) -> None:
    conn = _conn(sqlite_vault)
    seq, prev = conn.execute("SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    fields = (seq + 1, 1.0e9, "mallory", "key.reinstate", "default", 1, None, "ok", "{}")
    forged = hashlib.sha256(prev + canonical(*fields)).digest()
    conn.execute("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?)", (*fields, forged))
    assert sqlite_vault.audit.verify().first_bad_seq == seq + 1


def test_forged_row_with_guessed_hmac_key_detected(sqlite_vault: nc.Vault) -> None:
    import hmac

    conn = _conn(sqlite_vault)
    conn.execute("DELETE FROM audit_events WHERE seq > 3")
    seq, prev = conn.execute("SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    fields = (seq + 1, 1.0e9, "mallory", "key.destroy", "default", 1, None, "ok", "{}")
    mac = hmac.new(b"\x00" * 32, prev + canonical(*fields), hashlib.sha256).digest()
    conn.execute("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?,?)", (*fields, mac))
    assert sqlite_vault.audit.verify().first_bad_seq == seq + 1


def test_cli_audit_list_and_verify(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    for args in (("init",), ("keys", "rotate"), ("keys", "rotate"), ("keys", "revoke", "1")):
        assert run_cli(*args, cwd=tmp_path, env=env).returncode == 0
    lines = run_cli("--json", "audit", "list", "--action", "key.rotate", cwd=tmp_path, env=env).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["details"]["new_version"] for e in events] == [2, 3]
    by_version = run_cli("--json", "audit", "list", "--version", "1", cwd=tmp_path, env=env).stdout.splitlines()
    assert {json.loads(x)["action"] for x in by_version} == {"key.create", "key.revoke"}
    assert len(run_cli("--json", "audit", "list", "--limit", "2", cwd=tmp_path, env=env).stdout.splitlines()) == 2
    assert run_cli("--json", "audit", "list", "--since", "1h", cwd=tmp_path, env=env).stdout.count("\n") >= 4
    ok = run_cli("--json", "audit", "verify", cwd=tmp_path, env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"ok": True, "events": 5, "first_bad_seq": None}
    import sqlite3

    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("UPDATE audit_events SET action = 'key.rotate' WHERE seq = 5")
    bad = run_cli("--json", "audit", "verify", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and json.loads(bad.stdout) == {"ok": False, "events": 5, "first_bad_seq": 5}


def test_tampered_credential_read_is_audited(vault: nc.Vault) -> None:
    vault.put("a", {"x": 1})
    vault.put("b", {"x": 2})
    with vault.store.transaction() as tx:
        a = tx.get_credential(vault.keyring_name, "a")
        b = tx.get_credential(vault.keyring_name, "b")
        assert a and b
        tx.cas_update_envelopes(vault.keyring_name, [("b", b.revision, a.key_version, a.envelope)])
    with pytest.raises(nc.DecryptionError):
        vault.get("b")
    failed = [r for r in vault.audit.rows() if r.action == "decrypt.failed"]
    assert len(failed) == 1 and failed[0].credential_id == "b" and failed[0].outcome == "error"


def test_credential_audit_and_log_mirror(tmp_path: Path, key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = nc.KeyManagementConfig.from_dict({"audit": {"credentials": True, "log": True}})
    with caplog.at_level("INFO", logger="nebula_credential.audit"), \
            nc.open(f"sqlite:///{tmp_path / 'a.db'}", config=cfg, create=True) as v:
        v.put("gh", {"token": "ghp_SECRET"})
        v.get("gh")
        v.delete("gh")
        assert [r.action for r in v.audit.rows()][-3:] == ["credential.write", "credential.read", "credential.delete"]
    mirrored = [json.loads(r.getMessage()) for r in caplog.records if r.name == "nebula_credential.audit"]
    assert any(m["action"] == "credential.read" and m["credential_id"] == "gh" for m in mirrored)
    assert "ghp_SECRET" not in caplog.text


def test_cut_off_tail_detected(sqlite_vault: nc.Vault) -> None:
    total = sqlite_vault.audit.verify().events
    _conn(sqlite_vault).execute("DELETE FROM audit_events WHERE seq > ?", (total - 2,))
    r = sqlite_vault.audit.verify()
    assert not r.ok and r.first_bad_seq == total - 1


def test_secret_like_details_are_refused(vault: nc.Vault) -> None:
    with vault.store.transaction() as tx, pytest.raises(ValueError, match="not allowed"):
        vault.audit.record(tx, "custom", token="abc")
    with vault.store.transaction() as tx, pytest.raises(TypeError, match="bytes"):
        vault.audit.record(tx, "custom", blob=b"\x00" * 32)
    assert vault.audit.verify().ok


def test_events_appended_together_chain_like_single_ones(vault: nc.Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """``record_many`` (the server's group commit): one INSERT for all rows (on PostgreSQL multi-row
    INSERTs of at most four rows, all deferred to go with the COMMIT in one pipeline), the chain intact,
    a garbage version kept in the details as ``record`` keeps it."""
    from nebula_credential.audit import Event

    inserts: list[int] = []
    with vault.store.read() as tx:
        tx_class = type(tx)
    real_many, real_exec, real_defer = tx_class._many, tx_class._exec, tx_class._defer
    deferred: list[int] = []

    def defer(self: Any, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT INTO audit_events"):
            deferred.append(1)
        return real_defer(self, sql, params)

    def many(self: Any, sql: str, seq: Any) -> Any:
        if sql.startswith("INSERT INTO audit_events"):
            inserts.append(len(seq))
        return real_many(self, sql, seq)

    def execute(self: Any, sql: str, params: Any = ()) -> Any:
        if sql.startswith("INSERT INTO audit_events"):
            inserts.append(1)
        return real_exec(self, sql, params)

    monkeypatch.setattr(tx_class, "_many", many)
    monkeypatch.setattr(tx_class, "_exec", execute)
    monkeypatch.setattr(tx_class, "_defer", defer)
    events = [Event("server.request", "default", None, f"c{i}", "ok", {"status": 200}) for i in range(20)]
    events.append(Event("decrypt.failed", "default", 2**32 - 1, "bad", "error", {}))
    with vault.store.transaction() as tx:
        last = vault.audit.record_many(tx, events)
        assert vault.audit.record(tx, "after") == last + 1
    if "Postgres" in tx_class.__name__:
        assert (inserts, len(deferred)) == ([], 7)  # 21 rows: five INSERTs of four and one of one; then "after"
    else:
        assert (inserts, deferred) == ([21, 1], [])
    rows = list(vault.audit.rows())[-22:]
    assert [r.seq for r in rows] == list(range(last - 20, last + 2))
    assert [r.credential_id for r in rows[:20]] == [f"c{i}" for i in range(20)]
    assert rows[20].key_version is None and json.loads(rows[20].details)["header_version"] == 2**32 - 1
    assert vault.audit.verify().ok
