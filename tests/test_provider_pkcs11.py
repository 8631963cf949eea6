"""PKCS#11 provider against a real SoftHSM2 token started by the session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
)
from nebula_credential.keys import KeyManager
from nebula_credential.providers.base import WrapContext
from nebula_credential.providers.pkcs11 import Pkcs11KeyProvider
from nebula_credential.store import open_store

from .fixtures_hsm_kms import SoftHsm
from .helpers import FakeClock


def provider(settings: dict[str, object], create: bool = True) -> Pkcs11KeyProvider:
    return Pkcs11KeyProvider.from_config(dict(settings), create=create)


def memory_km(p: Pkcs11KeyProvider) -> KeyManager:
    km = KeyManager(open_store("sqlite:///:memory:"), p)
    km.initialize()
    return km


@pytest.mark.parametrize("mode", ["wrap", "direct"])
def test_keys_in_the_token_are_non_extractable(softhsm: SoftHsm, mode: str) -> None:
    p = provider(softhsm.settings(mode=mode))
    try:
        km = memory_km(p)
        km.encrypt(b"x")
        root = p.root_key_object()
        assert root[Attribute.SENSITIVE] is True
        assert root[Attribute.EXTRACTABLE] is False
        assert root[Attribute.NEVER_EXTRACTABLE] is True
        assert root[Attribute.VALUE_LEN] == 32
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            root[Attribute.VALUE]
        with p._token() as session:
            deks = [
                o
                for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
                if (o.label or "").startswith(f"{p.key_label}:dek:")
            ]
        stored = [o for o in deks if o[Attribute.TOKEN]]
        assert len(stored) == (1 if mode == "direct" else 0)
        for dek in deks:  # the stored object and the session copy used for speed
            assert dek[Attribute.NEVER_EXTRACTABLE] is True
            assert dek[Attribute.EXTRACTABLE] is False and dek[Attribute.SENSITIVE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                dek[Attribute.VALUE]
    finally:
        p.close()


def test_root_rotation_labels_versions_and_records_name_them(softhsm: SoftHsm) -> None:
    settings = softhsm.settings()
    p = provider(settings)
    try:
        ctx = WrapContext("kr", 1)
        from nebula_credential._secret import SecretBytes

        dek = SecretBytes.random(32)
        copy = SecretBytes(bytes(dek.buffer))
        old = p.wrap(dek, ctx)
        assert old[2:6] == (1).to_bytes(4, "big")
        assert p.rotate_root_key().endswith(f"{settings['key_label']}:v2")
        new = p.rewrap(old, ctx)
        assert new[2:6] == (2).to_bytes(4, "big")
        assert p.unwrap(old, ctx).equals(copy) and p.unwrap(new, ctx).equals(copy)
        with pytest.raises(DecryptionError):
            p.unwrap(new, WrapContext("kr", 2))  # bound to keyring and version
        tampered = new[:2] + (1).to_bytes(4, "big") + new[6:]
        with pytest.raises(DecryptionError):
            p.unwrap(tampered, ctx)  # the root version is authenticated too
        # another process (a fresh instance) sees both labelled versions
        other = provider(settings, create=False)
        assert other.describe()["root_versions"] == [1, 2]
        assert other.unwrap(new, ctx).equals(copy)
        other.close()
    finally:
        p.close()


def test_direct_mode_tag_failure_is_decryption_error(softhsm: SoftHsm) -> None:
    p = provider(softhsm.settings(mode="direct"))
    try:
        km = memory_km(p)
        blob = km.encrypt(b"secret", b"ctx")
        assert km.decrypt(blob, b"ctx") == b"secret"
        with pytest.raises(DecryptionError):
            km.decrypt(blob, b"other")
        with pytest.raises(DecryptionError):
            km.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), b"ctx")
        with pytest.raises(ProviderError):
            p.unwrap(km.list()[0].wrapped_key or b"", WrapContext("default", 1))  # never leaves
    finally:
        p.close()


def test_session_loss_is_retried(softhsm: SoftHsm) -> None:
    for mode in ("wrap", "direct"):
        p = provider(softhsm.settings(mode=mode))
        try:
            km = memory_km(p)
            blob = km.encrypt(b"v", b"a")
            assert p._session is not None
            p._session.close()  # the token drops the session under us
            assert km.decrypt(blob, b"a") == b"v"
            p.check()
            assert p._session is not None
        finally:
            p.close()


REMOVAL_SCRIPT = r"""
import json, subprocess, sys
from nebula_credential.exceptions import ProviderUnavailableError
from nebula_credential.providers.base import RetryPolicy
from nebula_credential.providers.pkcs11 import Pkcs11KeyProvider

settings = json.loads(sys.argv[1])
p = Pkcs11KeyProvider.from_config(settings, create=True)
p.retry = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
p.check()
subprocess.run(["softhsm2-util", "--delete-token", "--token", settings["token_label"]],
               check=True, capture_output=True)
try:
    p.check()
    outcome = {"error": None}
except ProviderUnavailableError as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)}
outcome["calls"] = p.calls
print(json.dumps(outcome))
"""


def test_token_removed_gives_bounded_retries_then_unavailable(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Removing the token under a running process: bounded retries, then a clear error.

    Runs in a child process with a token folder of its own: SoftHSM fails every
    later slot scan in a process whose token vanished, which would break the
    other tests sharing this process's one library instance.
    """
    import json
    import os
    import sys

    from .helpers import cli_env

    conf = tmp_path / "softhsm2.conf"
    (tmp_path / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    env = cli_env(SOFTHSM2_CONF=str(conf))
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "removable",
            "--pin",
            softhsm.pin,
            "--so-pin",
            "so-pin-x",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    settings = softhsm.settings(token_label="removable")
    proc = subprocess.run(
        [sys.executable, "-c", REMOVAL_SCRIPT, json.dumps(settings)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "ProviderUnavailableError", outcome
    assert "after 3 attempts" in outcome["message"]
    assert softhsm.pin not in proc.stdout + proc.stderr


def test_wrong_pin_is_a_clear_permission_error(softhsm: SoftHsm, tmp_path: Path) -> None:
    bad = tmp_path / "bad-pin"
    bad.write_text("not-the-pin")
    settings = softhsm.settings(token_label=softhsm.spare_token_label, pin_file=str(bad))
    with pytest.raises(ProviderPermissionError) as err:
        provider(settings)
    assert "PIN" in str(err.value) and "not-the-pin" not in str(err.value)


def test_missing_token_and_library_and_pin_are_config_errors(
    softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no PKCS#11 token labelled"):
        provider(softhsm.settings(token_label="no-such-token"))
    with pytest.raises(ConfigError, match=r"provider.library"):
        provider(softhsm.settings(library="/nonexistent/libpkcs11.so"))
    with pytest.raises(ConfigError, match="pin_file"):
        provider({k: v for k, v in softhsm.settings().items() if k != "pin_file"})
    with pytest.raises(ConfigError, match="NEBULA_TEST_NO_PIN"):
        provider({**softhsm.settings(), "pin_file": None, "pin_env": "NEBULA_TEST_NO_PIN"})
    with pytest.raises(ConfigError, match=r"provider.pin"):
        KeyManagementConfig.from_dict({"provider": {"type": "pkcs11", "pin": "1234"}})
    with pytest.raises(ConfigError, match=r"provider.mode"):
        provider(softhsm.settings(mode="sideways"))
    with pytest.raises(ConfigError, match="holds no root key"):
        provider(softhsm.settings(), create=False)
    # the PIN from an environment variable works too
    monkeypatch.setenv("NEBULA_TEST_HSM_PIN", softhsm.pin)
    p = provider({**softhsm.settings(), "pin_file": None, "pin_env": "NEBULA_TEST_HSM_PIN"})
    p.check()
    assert softhsm.pin not in repr(p) and softhsm.pin not in str(p.describe())
    p.close()


def test_store_records_no_settings_and_no_pin(softhsm: SoftHsm, tmp_path: Path) -> None:
    settings = softhsm.settings(mode="direct")
    url = f"sqlite:///{tmp_path / 's.db'}"
    config = KeyManagementConfig.from_dict({"provider": settings})
    with nc.open(url, config=config, create=True) as v:
        v.put("a", {"t": 1})
    raw = (
        (tmp_path / "s.db").read_bytes() + (tmp_path / "s.db-wal").read_bytes()
        if (tmp_path / "s.db-wal").exists()
        else (tmp_path / "s.db").read_bytes()
    )
    assert softhsm.pin.encode() not in raw
    with pytest.raises(nc.ConfigError, match="pkcs11"):  # the store never supplies the settings
        nc.open(url)
    with nc.open(url, config=config) as v:
        assert v.provider.name == "pkcs11" and v.get("a") == {"t": 1}
        assert v.provider.describe()["mode"] == "direct"


def test_direct_mode_destroy_erases_the_token_object(softhsm: SoftHsm) -> None:
    p = provider(softhsm.settings(mode="direct"))
    try:
        km = memory_km(p)
        km.clock = clock = FakeClock()
        blob = km.encrypt(b"x", b"ctx")
        km.rotate()
        km.revoke(1)
        clock.advance(seconds=10)  # the destroy floor

        def dek_objects(version: int) -> list[object]:
            with p._token() as session:
                return [o for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
                        if o.label == f"{p.key_label}:dek:{km.keyring}:{version}"]

        assert dek_objects(1)
        km.destroy(1, force_retention=True)
        assert dek_objects(1) == [] and dek_objects(2)
        with pytest.raises(nc.KeyDestroyedError):
            km.decrypt(blob, b"ctx")
    finally:
        p.close()
