"""Adoption from a single application key (Fernet/MultiFernet, raw AES-GCM) and read-through."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import nebula_credential as nc
from nebula_credential.adopt import LegacyRecord, adopt, records_from_db
from nebula_credential.legacy import LegacyKeySet, NonceLayout

from .helpers import cli_env, run_cli

MARK = "PLAINTEXT-MARK-7f3a"


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Adoption parses legacy tokens and writes through the facade; the store is not its subject.

    SQLite only: the two-store matrix runs in the store tests.
    """
    return sqlite_url


def _fernet_tokens(n: int) -> tuple[str, list[dict[str, object]]]:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    rows = []
    for i in range(n):
        f = Fernet(old if i % 2 else new)
        value = {"password": f"{MARK}-{i}", "login": f"user{i}"}
        rows.append(
            {
                "id": f"conn-{i:05d}",
                "scope": ["production", "user", "development"][i % 3],
                "token": f.encrypt(json.dumps(value).encode()).decode(),
                "metadata": {"n": i},
            }
        )
    return (new + b"," + old).decode(), rows


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _files_containing(marker: bytes, *roots: Path) -> list[Path]:
    hits = []
    for root in roots:
        for p in root.rglob("*"):
            try:
                if p.is_file() and marker in p.read_bytes():
                    hits.append(p)
            except OSError:
                continue
    return hits


def test_cli_adopts_multifernet_tokens_and_skips_the_corrupt_one(tmp_path: Path) -> None:
    keys, rows = _fernet_tokens(3000)
    rows[1234]["token"] = str(rows[1234]["token"])[:-6] + "AAAAAA"  # corrupted
    _write_jsonl(tmp_path / "legacy.jsonl", rows)
    (tmp_path / "fernet.key").write_text(keys)
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    before = set(Path(tempfile.gettempdir()).iterdir())

    dry = run_cli("--json", "adopt", "legacy.jsonl", "--key-file", "fernet.key", "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 1
    assert json.loads(dry.stdout)["would_adopt"] == 2999
    assert run_cli("--json", "list", cwd=tmp_path, env=env).stdout.count('"id"') == 0  # dry run wrote nothing

    res = run_cli("--json", "adopt", "legacy.jsonl", "--key-file", "fernet.key", cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["adopted"] == 2999 and report["failed"] == 1
    assert report["failures"][0]["id"] == "conn-01234"
    assert "conn-01234" in res.stderr and MARK not in res.stderr + res.stdout

    got = json.loads(run_cli("--json", "get", "conn-00007", cwd=tmp_path, env=env).stdout)
    assert got["value"] == {"password": f"{MARK}-7", "login": "user7"}
    assert got["scope"] == "user" and got["metadata"]["n"] == 7

    again = json.loads(
        run_cli("--json", "adopt", "legacy.jsonl", "--key-file", "fernet.key", cwd=tmp_path, env=env).stdout
    )
    assert again["adopted"] == 0 and again["skipped_existing"] == 2999

    new_tmp = set(Path(tempfile.gettempdir()).iterdir()) - before
    assert not _files_containing(MARK.encode(), tmp_path, *[p for p in new_tmp if p.is_dir()])


def test_adopt_does_not_overwrite_a_value_changed_after_adoption(vault: nc.Vault) -> None:
    keys_text, rows = _fernet_tokens(3)
    keys = LegacyKeySet.fernet_keys(keys_text)
    recs = [LegacyRecord(str(r["id"]), str(r["token"])) for r in rows]
    assert adopt(vault, recs, keys).adopted == 3
    vault.put("conn-00000", {"password": "rotated"})
    assert adopt(vault, recs, keys).adopted == 0
    assert vault.get("conn-00000") == {"password": "rotated"}


@pytest.mark.parametrize("layout", list(NonceLayout))
def test_raw_aes_gcm_tokens_with_stated_nonce_layout(vault: nc.Vault, layout: NonceLayout) -> None:
    key = os.urandom(32)
    aead = AESGCM(key)
    recs = []
    for i in range(200):
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, f"{MARK}-{i}".encode(), b"app")
        blob = nonce + ct if layout is NonceLayout.PREFIX else ct + nonce
        recs.append(LegacyRecord(f"k{i}", base64.b64encode(blob).decode()))
    recs.append(LegacyRecord("broken", base64.b64encode(os.urandom(60)).decode()))
    keys = LegacyKeySet.aes_gcm_keys(key.hex(), layout=layout, aad=b"app")
    report = adopt(vault, recs, keys)
    assert report.adopted == 200 and [f[0] for f in report.failed] == ["broken"]
    assert vault.get("k42") == f"{MARK}-42"
    wrong = LegacyKeySet.aes_gcm_keys(os.urandom(32).hex(), layout=layout, aad=b"app")
    with pytest.raises(nc.DecryptionError):
        wrong.decrypt(recs[0].token)


def test_adopt_from_a_sqlite_query(vault: nc.Vault, tmp_path: Path) -> None:
    keys_text, rows = _fernet_tokens(50)
    legacy_db = tmp_path / "airflow.db"
    with sqlite3.connect(legacy_db) as conn:
        conn.execute("CREATE TABLE connection (conn_id TEXT, password TEXT)")
        conn.executemany("INSERT INTO connection VALUES (?, ?)", [(r["id"], r["token"]) for r in rows])
    recs = records_from_db(f"sqlite:///{legacy_db}", "SELECT conn_id, password FROM connection")
    report = adopt(vault, recs, LegacyKeySet.fernet_keys(keys_text))
    assert report.adopted == 50
    assert vault.get("conn-00049")["login"] == "user49"


def test_read_through_serves_legacy_until_adopted_and_records_fallbacks(vault: nc.Vault) -> None:
    keys_text, rows = _fernet_tokens(4)
    keys = LegacyKeySet.fernet_keys(keys_text)
    legacy = {str(r["id"]): str(r["token"]) for r in rows}
    vault.enable_read_through(keys, legacy.get)

    record = vault.get_record("conn-00001")
    assert record.value["password"] == f"{MARK}-1" and record.metadata == {"legacy": True}
    assert vault.legacy_fallbacks()[0] == 1
    with pytest.raises(nc.CredentialNotFoundError):
        vault.get("not-anywhere")

    adopt(vault, [LegacyRecord(i, t) for i, t in legacy.items()], keys)
    legacy["conn-00001"] = "garbage"  # the managed copy must now be the one served
    managed = vault.get_record("conn-00001")
    assert managed.value["password"] == f"{MARK}-1" and managed.key_version == 1
    assert vault.legacy_fallbacks()[0] == 1
    actions = [r.action for r in vault.audit.rows()]
    assert actions.count("legacy.fallback") == 1 and "legacy.adopt" in actions
    assert vault.audit.verify().ok


def test_legacy_key_inputs_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(nc.ConfigError, match="32 url-safe base64"):
        LegacyKeySet.fernet_keys("not-a-key")
    with pytest.raises(nc.ConfigError, match="32 bytes"):
        LegacyKeySet.aes_gcm_keys(os.urandom(16).hex())
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    from nebula_credential.legacy import read_key_material

    with pytest.raises(nc.ConfigError, match="NO_SUCH_KEY_VAR"):
        read_key_material(key_env="NO_SUCH_KEY_VAR")
    ks = LegacyKeySet.fernet_keys(Fernet.generate_key().decode())
    assert "keys=1" in repr(ks)
