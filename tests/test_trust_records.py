"""Trust boundary, issue 13 section 4 (records): a row is what it claims, or a typed corrupt record.

A database writer stores columns of the wrong type (SQLite keeps whatever it
is given) or makes a ``key_version`` column lie about the envelope header.
Every command names the row and carries on with the others; nothing prints
a traceback; ``doctor`` names every such row.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import nebula_credential as nc

from .helpers import cli_env, run_cli

#: (credential id, SQL that corrupts it, what the error says)
CORRUPTIONS = [
    ("c01", "UPDATE credentials SET envelope = 'not bytes at all' WHERE id = 'c01'", "envelope is text"),
    ("c02", "UPDATE credentials SET metadata = '{not json' WHERE id = 'c02'", "corrupt metadata"),
    ("c03", "UPDATE credentials SET key_version = 'one' WHERE id = 'c03'", "key_version is text"),
    ("c04", "UPDATE credentials SET updated_at = 'yesterday' WHERE id = 'c04'", "updated_at is text"),
    ("c05", "UPDATE credentials SET revision = 1.5 WHERE id = 'c05'", "revision is a number"),
    ("c06", "UPDATE credentials SET envelope = 12345 WHERE id = 'c06'", "envelope is an integer"),
    ("c07", "UPDATE credentials SET metadata = '[1, 2]' WHERE id = 'c07'", "not a JSON object"),
    ("c08", "UPDATE credentials SET created_at = 1e300 WHERE id = 'c08'", "created_at is out of range"),
]
GOOD = [f"g{i:02}" for i in range(12)]


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    lines = [json.dumps({"id": cid, "scope": "production", "value": {"n": cid}})
             for cid in GOOD + [c for c, _, _ in CORRUPTIONS]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert run_cli("import", "in.jsonl", cwd=tmp_path, env=env).returncode == 0
    assert run_cli("keys", "rotate", cwd=tmp_path, env=env).returncode == 0
    with sqlite3.connect(tmp_path / "c.db") as conn:
        for _, sql, _ in CORRUPTIONS:
            assert conn.execute(sql).rowcount == 1
    return tmp_path, env


def _clean(out: str) -> None:
    assert "Traceback" not in out and "n\": \"c0" not in out


def test_get_names_the_corrupt_row(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    for cid, _, what in CORRUPTIONS:
        res = run_cli("get", cid, cwd=cwd, env=env)
        _clean(res.stderr)
        assert res.returncode == 1 and res.stderr.startswith("error:"), (cid, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert f"'{cid}'" in res.stderr and "corrupt record" in res.stderr and what in res.stderr, res.stderr
    res = run_cli("--json", "get", "g00", cwd=cwd, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["value"] == {"n": "g00"}


def test_list_reports_corrupt_rows_and_lists_the_rest(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    res = run_cli("--json", "list", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 1
    assert [r["id"] for r in json.loads(res.stdout)["credentials"]] == GOOD
    for cid, _, _ in CORRUPTIONS:
        assert f"'{cid}'" in res.stderr
    assert len([x for x in res.stderr.splitlines() if x.startswith("error:")]) == 1


def test_reencrypt_maintain_and_daemon_carry_on(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    res = run_cli("--json", "reencrypt", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 1 and res.stdout, res.stderr
    out = json.loads(res.stdout)
    failed = {f["id"] for f in out["failures"]}
    # c03's key_version is not a number, so no version selects it: it is left, and doctor names it
    assert failed == {c for c, _, _ in CORRUPTIONS} - {"c03"}
    assert out["reencrypted"] == len(GOOD)
    with nc.open(f"sqlite:///{cwd / 'c.db'}") as v:
        assert all(v.get_record(cid).key_version == 2 for cid in GOOD)
    res = run_cli("maintain", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 1 and "could not be re-encrypted" in res.stderr
    res = run_cli("daemon", "--once", "--metrics-addr", "127.0.0.1:0", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 0, res.stderr
    assert "could not re-encrypt c01" in res.stderr and "maintain pass failed" not in res.stderr


def test_doctor_counts_and_names_corrupt_rows_and_lying_columns(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    with sqlite3.connect(cwd / "c.db") as conn:  # g00's column claims v2; its header still says v1
        assert conn.execute("UPDATE credentials SET key_version = 2 WHERE id = 'g00'").rowcount == 1
    res = run_cli("--json", "doctor", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 1
    records = next(f for f in json.loads(res.stdout) if f["check"] == "records")
    assert records["severity"] == "error"
    assert records["message"].startswith(f"{len(CORRUPTIONS) + 1} corrupt credential record(s)")
    for cid, _, _ in [*CORRUPTIONS, ("g00", "", "")]:
        assert f"'{cid}'" in records["message"]
    assert "key_version column says 2 but its envelope header names version 1" in records["message"]


def test_corrupt_audit_event_names_its_sequence_number(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    with sqlite3.connect(cwd / "c.db") as conn:
        assert conn.execute("UPDATE audit_events SET mac = 'text mac' WHERE seq = 2").rowcount == 1
    res = run_cli("audit", "verify", cwd=cwd, env=env)
    _clean(res.stderr)
    assert res.returncode == 1 and "audit seq 2" in res.stderr and "mac is text" in res.stderr
    res = run_cli("--json", "doctor", cwd=cwd, env=env)
    audit = next(f for f in json.loads(res.stdout) if f["check"] == "audit")
    assert audit["severity"] == "error" and "audit seq 2" in audit["message"]


def test_corrupt_key_version_row_is_typed(store: tuple[Path, dict[str, str]]) -> None:
    cwd, env = store
    with sqlite3.connect(cwd / "c.db") as conn:
        assert conn.execute("UPDATE key_versions SET wrapped_key = 'text' WHERE version = 1").rowcount == 1
    for args in (("keys", "list"), ("get", "g00"), ("--json", "doctor")):
        res = run_cli(*args, cwd=cwd, env=env)
        _clean(res.stdout + res.stderr)
        assert res.returncode == 1 and "default/v1 is corrupt" in res.stdout + res.stderr, (args, res.stderr)


def test_references_are_counted_by_envelope_header(vault: nc.Vault) -> None:
    """On SQLite and PostgreSQL: a lying key_version column does not hide a reference."""
    for i in range(5):
        vault.put(f"c{i}", {"i": i})
    vault.keys.rotate()
    vault.put("new", 1)
    with vault.store.transaction() as tx:  # a database writer makes every v1 row claim v2
        row = tx.get_credential(vault.keyring_name, "c0")
        assert row is not None
        tx.cas_update_envelopes(vault.keyring_name, [(f"c{i}", 1, 2, _env(vault, f"c{i}")) for i in range(5)])
    with vault.store.read() as tx:
        assert tx.count_by_version(vault.keyring_name) == {2: 6}  # what the column says
        assert tx.versions_referenced(vault.keyring_name) == {1: 5, 2: 1}  # what decryption needs
        assert sorted(tx.version_mismatches(vault.keyring_name)) == [(f"c{i}", 2, 1) for i in range(5)]
    assert vault.get_record("c3").key_version == 1 and vault.get("c3") == {"i": 3}
    result = vault.reencrypt()  # the rows look current by their column: named, not silently left
    assert sorted(f.id for f in result.failures) == [f"c{i}" for i in range(5)] and not result.ok
    assert all("column says 2" in f.reason and f.key_version == 1 for f in result.failures)
    for i in range(5):  # the fix it names
        vault.put(f"c{i}", vault.get(f"c{i}"))
    assert vault.reencrypt().ok
    with vault.store.read() as tx:  # 6 current rows and the 5 past versions the fix left, all moved
        assert tx.versions_referenced(vault.keyring_name) == {2: 11}


def _env(vault: nc.Vault, cid: str) -> bytes:
    with vault.store.read() as tx:
        row = tx.get_credential(vault.keyring_name, cid)
    assert row is not None
    return row.envelope


def test_daemon_skips_a_keyring_with_a_corrupt_key_row_and_serves_the_others(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    for kr in ("a", "b"):
        assert run_cli("--keyring", kr, "init", cwd=tmp_path, env=env).returncode == 0
        for i in range(3):
            assert run_cli("--keyring", kr, "put", f"x{i}", "--value", "1", cwd=tmp_path, env=env).returncode == 0
        assert run_cli("--keyring", kr, "keys", "rotate", cwd=tmp_path, env=env).returncode == 0
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("UPDATE key_versions SET wrapped_key = 'text' WHERE keyring = 'a' AND version = 1")
    res = run_cli("daemon", "--once", "--metrics-addr", "127.0.0.1:0", cwd=tmp_path, env=env)
    _clean(res.stderr)
    assert "keyring a skipped: key version a/v1 is corrupt: wrapped_key is text" in res.stderr, res.stderr
    with sqlite3.connect(tmp_path / "c.db") as conn:
        rows = conn.execute("SELECT keyring, key_version, COUNT(*) FROM credentials GROUP BY 1, 2").fetchall()
    assert sorted(rows) == [("a", 1, 3), ("b", 2, 3)]  # b was re-encrypted despite a
