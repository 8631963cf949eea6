"""Secrets never reach reprs, logs, exception texts or CLI output; key objects refuse pickling."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential._secret import SecretBytes
from nebula_credential.providers.local import LocalKeyProvider

from .helpers import cli_env, run_cli

SECRET = "sk_live_SUPERSECRET_4242"


def test_reprs_are_redacted(vault: nc.Vault) -> None:
    vault.put("stripe", {"key": SECRET}, scope="production")
    record = vault.get_record("stripe")
    key = vault.keys.current_key()
    raw = SecretBytes(bytearray(b"\x01" * 32))
    things = [record, key, vault.keys, vault, vault.provider, raw, vault.keys.version(1), vault.store]
    text = " ".join(repr(t) + str(t) for t in things)
    assert SECRET not in text and "redacted" in repr(raw) and "redacted" in repr(key)
    assert "\\x01\\x01" not in text
    with vault.store.read() as tx:
        row = tx.get_credential(vault.keyring_name, "stripe")
    assert row is not None and SECRET.encode() not in row.envelope  # at rest only as ciphertext
    if vault.store.url.startswith("sqlite:///"):
        assert SECRET.encode() not in Path(vault.store.url.removeprefix("sqlite:///")).read_bytes()


def test_key_material_refuses_pickling(vault: nc.Vault) -> None:
    for obj in (SecretBytes(b"k" * 32), vault.keys.current_key(), vault.keys, vault.provider):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_secret_bytes_wipe(vault: nc.Vault) -> None:
    src = bytearray(b"\x07" * 32)
    s = SecretBytes(src)
    assert src == bytearray(32)  # the caller's copy was wiped on the way in
    buf = s.buffer
    s.wipe()
    assert s.wiped and buf == bytearray()
    with pytest.raises(ValueError):
        _ = s.buffer


def test_logs_and_exceptions_carry_no_secret(vault: nc.Vault, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        vault.put("stripe", {"key": SECRET})
        assert vault.get("stripe") == {"key": SECRET}
        vault.keys.rotate()
        vault.reencrypt()
        vault.keys.revoke(1)
        vault.maintain()
        errors = []
        for bad in (lambda: vault.get("nope"), lambda: vault.keys.decrypt(b"NC\x01\x01" + b"\x00" * 60)):
            try:
                bad()
            except nc.NebulaCredentialError as exc:
                errors.append(str(exc) + repr(exc))
    assert SECRET not in caplog.text and SECRET not in " ".join(errors)


def test_cli_errors_and_outputs_carry_no_secret(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    key_text = (tmp_path / "master.key").read_text().split()[2]
    assert run_cli("put", "s", "--value", f'{{"k": "{SECRET}"}}', cwd=tmp_path, env=env).returncode == 0
    outputs = []
    for args in (("list",), ("--json", "list"), ("keys", "list"), ("--json", "status"), ("keys", "rotate"),
                 ("reencrypt",), ("keys", "revoke", "1"), ("--json", "audit", "list"), ("--debug", "get", "nope"),
                 ("keys", "destroy", "2"), ("doctor",), ("get", "s", "--field", "missing")):
        res = run_cli(*args, cwd=tmp_path, env=env)
        outputs.append(res.stdout + res.stderr)
    blob = "\n".join(outputs)
    assert SECRET not in blob and key_text not in blob
    assert run_cli("get", "s", "--field", "k", cwd=tmp_path, env=env).stdout.strip() == SECRET  # only `get` prints it


def test_provider_describe_has_no_key(tmp_path: Path) -> None:
    p = LocalKeyProvider.create(tmp_path / "k.key")
    key_text = (tmp_path / "k.key").read_text().split()[2]
    assert key_text not in repr(p) and key_text not in str(p.describe())
