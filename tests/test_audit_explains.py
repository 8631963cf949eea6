"""Issue 13 section 3: the audit chain must explain the key table.

A database writer without the audit key cannot forge events, but it can
delete them all, or cut the chain back to a head value it read earlier.
Both used to pass ``audit verify``; now the chain must start at
``store.init`` and replaying its key events must give ``key_versions``
exactly.  A rollback of the whole database is caught against an exported
copy (``audit export`` / ``audit verify --against``).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import nebula_credential as nc
from nebula_credential.policies.retention import UntilReEncrypted

from .helpers import FakeClock, cli_env, run_cli


def raw(vault: nc.Vault, sql: str, params: tuple[object, ...] = ()) -> None:
    """What a database writer (no key, no config) can do."""
    with vault.store.transaction() as tx:
        tx._exec(sql, params)  # type: ignore[attr-defined]


def head_and_seq(vault: nc.Vault) -> tuple[str, int]:
    with vault.store.read() as tx:
        head = tx.get_audit_head()
        seq, _ = tx.audit_tail()
    assert head is not None
    return head, seq


def test_full_lifecycle_is_explained(keep1_vault: nc.Vault, clock: FakeClock) -> None:
    vault = keep1_vault  # v1 is destroyed right after one rotation
    vault.put("a", {"n": 1})
    vault.keys.rotate(reason="test")
    vault.reencrypt()
    vault.keys.revoke(1)
    vault.keys.reinstate(1)
    vault.keys.revoke(1)
    clock.advance(seconds=10)
    vault.keys.destroy(1, retention=UntilReEncrypted())
    vault.maintain()
    result = vault.audit.verify()
    assert result.ok and result.unexplained == (), result.unexplained


def test_wiped_chain_fails_verify(vault: nc.Vault) -> None:
    vault.keys.rotate(reason="test")
    raw(vault, "DELETE FROM audit_events")
    raw(vault, "DELETE FROM audit_head")
    result = vault.audit.verify()
    assert not result.ok and result.events == 0 and result.first_bad_seq == 1
    text = "\n".join(result.unexplained)
    assert "must start at store.init" in text
    assert "keyring default v1: created" in text and "keyring default v2: created" in text


def test_chain_rolled_back_to_an_earlier_head_fails_verify(keep1_vault: nc.Vault, clock: FakeClock) -> None:
    vault = keep1_vault  # v1 is destroyed right after one rotation
    vault.put("a", {"n": 1})
    vault.keys.rotate(reason="test")
    vault.reencrypt()
    head, seq = head_and_seq(vault)  # read by the attacker now
    vault.keys.revoke(1)
    clock.advance(seconds=10)
    vault.keys.destroy(1, retention=UntilReEncrypted())
    assert vault.audit.verify().ok
    raw(vault, "DELETE FROM audit_events WHERE seq > ?", (seq,))
    raw(vault, "UPDATE audit_head SET value = ?", (head,))
    result = vault.audit.verify()
    assert not result.ok and result.events == seq and result.first_bad_seq == seq + 1
    assert any("keyring default v1: key_versions says destroyed" in line and "the chain says valid" in line
               for line in result.unexplained), result.unexplained


def test_status_or_timestamp_edited_in_the_key_table_fails_verify(vault: nc.Vault) -> None:
    vault.keys.rotate(reason="test")
    raw(vault, "UPDATE key_versions SET status_changed_at = status_changed_at - 3600 WHERE version = 1")
    result = vault.audit.verify()
    assert not result.ok and any("v1: status_changed_at" in line for line in result.unexplained)
    raw(vault, "UPDATE key_versions SET status_changed_at = status_changed_at + 3600 WHERE version = 1")
    assert vault.audit.verify().ok
    raw(vault, "UPDATE key_versions SET wrapped_key = NULL WHERE version = 1")
    assert any("erased" in line for line in vault.audit.verify().unexplained)


def test_cli_verify_export_and_against(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{db}")

    def cli(*args: str, ok: bool = True) -> str:
        res = run_cli(*args, cwd=tmp_path, env=env)
        assert (res.returncode == 0) == ok, res.stderr
        assert "Traceback" not in res.stderr
        return res.stdout

    cli("init")
    cli("put", "a", "--value", "1")
    cli("keys", "rotate")
    copy = tmp_path / "copy.jsonl"
    copy.write_text(cli("audit", "export"))
    first = [json.loads(line) for line in copy.read_text().splitlines()]
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1)) and first[0]["action"] == "store.init"
    shutil.copy(db, tmp_path / "old.db")  # the attacker's copy of the whole database, taken now
    cli("reencrypt")
    cli("keys", "revoke", "1")
    with copy.open("a") as f:  # the SIEM resumes from the last line it kept
        f.write(cli("audit", "export", "--since", str(first[-1]["seq"])))
    kept = [json.loads(line) for line in copy.read_text().splitlines()]
    assert [e["seq"] for e in kept] == list(range(1, len(kept) + 1)) and kept[-1]["action"] == "key.revoke"
    assert json.loads(cli("--json", "audit", "verify", "--against", str(copy))) == {
        "ok": True, "events": len(kept), "first_bad_seq": None}
    # the whole database rolled back: consistent in itself, caught only against the copy
    shutil.copy(tmp_path / "old.db", db)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"c.db{suffix}").unlink(missing_ok=True)
    assert json.loads(cli("--json", "audit", "verify"))["ok"] is True
    out = json.loads(cli("--json", "audit", "verify", "--against", str(copy), ok=False))
    assert out["ok"] is False and out["first_bad_seq"] == len(first) + 1
    assert "rolled back" in out["unexplained"][0]
    (tmp_path / "notes.txt").write_text('{"seq": "one"}\n')
    bad = run_cli("audit", "verify", "--against", "notes.txt", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1
    # a wiped chain: one line per unexplained thing in the human output
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM audit_head")
    res = run_cli("audit", "verify", cwd=tmp_path, env=env)
    assert res.returncode == 1 and "BROKEN at event 1" in res.stdout and "unexplained: the chain is empty" in res.stdout


def test_doctor_names_what_the_chain_does_not_explain(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM audit_head")
    res = run_cli("--json", "doctor", cwd=tmp_path, env=env)
    audit = next(f for f in json.loads(res.stdout) if f["check"] == "audit")
    assert res.returncode == 1 and audit["severity"] == "error"
    assert "does not explain" in audit["message"] and "keyring default v1: created" in audit["message"]


def test_event_about_a_garbage_header_version_is_still_recorded(vault: nc.Vault) -> None:
    """A tampered envelope can name version 0xFFFFFFFF; its audit event must not overflow the column."""
    with vault.store.transaction() as tx:
        seq = vault.audit.record(tx, "decrypt.failed", keyring="default", version=2**32 - 1, outcome="error")
    row = next(r for r in vault.audit.rows() if r.seq == seq)
    assert row.key_version is None and json.loads(row.details)["header_version"] == 2**32 - 1
    assert vault.audit.verify().ok


def test_every_keyring_is_explained(vault: nc.Vault) -> None:
    tenant = vault.keyring("tenant-a")
    tenant.keys.initialize()
    tenant.keys.rotate(reason="test")
    assert vault.audit.verify().ok
    raw(vault, "UPDATE key_versions SET status = 'revoked' WHERE keyring = 'tenant-a' AND version = 1")
    result = vault.audit.verify()
    assert not result.ok and result.unexplained == (
        "keyring tenant-a v1: key_versions says revoked since "
        f"{tenant.keys.version(1).status_changed_at.isoformat()}; the chain says valid",  # type: ignore[union-attr]
    )
