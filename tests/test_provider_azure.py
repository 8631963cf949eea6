"""Azure Key Vault provider: the unmodified SDK against tests/azure_server.py over HTTPS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

import nebula_credential as nc
from nebula_credential._secret import SecretBytes
from nebula_credential.exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
    ProviderUnavailableError,
)
from nebula_credential.policies.retention import UntilReEncrypted
from nebula_credential.providers.azure_keyvault import AzureKeyVaultProvider
from nebula_credential.providers.base import WrapContext
from nebula_credential.rootkeys import rotate_root_key

from .azure_server import OAEP_256, unb64url
from .fixtures_azure import AzureTestVault, StaticTokenCredential
from .helpers import KEEP_ONE, FakeClock, dump, free_port
from .helpers import provider_config as cfg


def provider(
    av: AzureTestVault, key_name: str, credential: Any = None, *, create: bool = True, **extra: Any
) -> AzureKeyVaultProvider:
    settings = {"key_size": 2048, **av.sdk_options(), **extra}
    return AzureKeyVaultProvider(
        av.url, key_name, credential or av.credential(), settings=settings, create=create
    )


def record(wrapped: bytes) -> dict[str, Any]:
    assert wrapped.startswith(b"azkv1:")
    out: dict[str, Any] = json.loads(wrapped[len(b"azkv1:") :])
    return out


def test_real_rsa_oaep_256_wrap_bound_to_context(azure_vault: AzureTestVault) -> None:
    p = provider(azure_vault, "bind")
    ctx = WrapContext("tenant-a", 3)
    with SecretBytes.random(32) as dek:
        copy = dek.to_bytes()
        wrapped = p.wrap(dek, ctx)
    rec = record(wrapped)
    assert rec["alg"] == "RSA-OAEP-256" and rec["kid"] == p.root_key_id()
    # the server's RSA key really wrapped (binding digest || DEK) with OAEP-SHA256
    version = rec["kid"].rsplit("/", 1)[1]
    (kv,) = [k for k in azure_vault.server.keys["bind"] if k.version == version]
    inner = kv.material.decrypt(unb64url(rec["wk"]), OAEP_256)
    assert len(inner) == 64 and inner[32:] == copy
    assert p.unwrap(wrapped, ctx).to_bytes() == copy
    for other in (
        WrapContext("tenant-b", 3),
        WrapContext("tenant-a", 4),
        WrapContext("tenant-a", 3, "x"),
    ):
        with pytest.raises(DecryptionError):
            p.unwrap(wrapped, other)
    # a record naming another vault or key is refused before any request is sent
    seen = len(azure_vault.server.requests)
    for kid in (
        "https://evil.example/keys/bind/" + version,
        f"{azure_vault.url}/keys/other/{version}",
    ):
        forged = b"azkv1:" + json.dumps({**rec, "kid": kid}).encode()
        with pytest.raises(DecryptionError, match="not by a version of"):
            p.unwrap(forged, ctx)
    assert len(azure_vault.server.requests) == seen
    with pytest.raises(ProviderError, match="format"):
        p.unwrap(b"vault:v1:abc", ctx)


def test_every_wrap_is_a_key_vault_call(azure_vault: AzureTestVault) -> None:
    """No local public-key wrap: Key Vault sees, authorises and can refuse each one."""
    p = provider(azure_vault, "remote")
    before = azure_vault.server.count("POST", "/wrapkey")
    for i in range(3):
        p.generate_dek(WrapContext("kr", i + 1))
    assert azure_vault.server.count("POST", "/wrapkey") == before + 3


def test_rotation_pins_versions_and_rewraps(azure_vault: AzureTestVault) -> None:
    p = provider(azure_vault, "rot")
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = dek.to_bytes()
        old = p.wrap(dek, ctx)
    first = p.root_key_id()
    second = p.rotate_root_key()
    assert second != first and azure_vault.server.versions("rot")[-1] == second.rsplit("/", 1)[1]
    assert len(azure_vault.server.versions("rot")) == 2
    assert p.unwrap(old, ctx).to_bytes() == copy  # the old version is still used for old DEKs
    new = p.rewrap(old, ctx)
    assert record(new)["kid"] == second and p.server_side_rewrap is False
    assert p.unwrap(new, ctx).to_bytes() == copy
    # a fresh process opens both
    q = provider(azure_vault, "rot", create=False)
    assert q.root_key_id() == second
    assert q.unwrap(old, ctx).to_bytes() == copy and q.unwrap(new, ctx).to_bytes() == copy


def test_managed_hsm_aes_key_wraps_with_a256kw(azure_vault: AzureTestVault) -> None:
    p = provider(azure_vault, "hsm-aes", key_type="oct-HSM")
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = dek.to_bytes()
        wrapped = p.wrap(dek, ctx)
    rec = record(wrapped)
    assert rec["alg"] == "A256KW" and p.describe()["key_type"] == "oct-HSM"
    (kv,) = azure_vault.server.keys["hsm-aes"]
    assert aes_key_unwrap(kv.material, unb64url(rec["wk"]))[32:] == copy
    other = provider(azure_vault, "hsm-aes", create=False)  # another process
    assert other.unwrap(wrapped, ctx).to_bytes() == copy


def test_lifecycle_through_open_with_a_provider_object(
    azure_vault: AzureTestVault, tmp_path: Path
) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    p = provider(azure_vault, "life")
    with nc.open(url, provider=p, create=True, clock=clock, config=KEEP_ONE) as v:  # v1 goes after one rotation
        v.put("a", {"n": 1}, scope="production")
        v.keys.rotate(reason="test")
        v.put("b", {"n": 2})
        azure_before = len(azure_vault.server.versions("life"))
        result = rotate_root_key(v.store, v.provider, v.audit)
        assert result.rewrapped == 2 and not result.server_side
        assert len(azure_vault.server.versions("life")) == azure_before + 1
        assert v.reencrypt().ok
        v.keys.revoke(1)
        clock.advance(seconds=10)  # the destroy floor
        v.keys.destroy(1, retention=UntilReEncrypted())
    with nc.open(url, provider=provider(azure_vault, "life", create=False), clock=clock) as v:
        assert v.get("a") == {"n": 1} and v.get("b") == {"n": 2}
        assert v.audit.verify().ok


def test_disabled_key_is_a_clear_error_and_writes_nothing(
    azure_vault: AzureTestVault, tmp_path: Path
) -> None:
    settings = azure_vault.settings()
    db = tmp_path / "store.db"
    with nc.open(f"sqlite:///{db}", config=cfg(settings), create=True) as v:
        v.put("github", {"token": "t"})
        kid = v.provider.root_key_id()
    before = dump(db)
    azure_vault.server.set_enabled(settings["key_name"], kid.rsplit("/", 1)[1], False)
    with pytest.raises(ProviderError, match="is disabled; enable it") as err:
        nc.open(f"sqlite:///{db}", config=cfg(settings)).close()
    assert not isinstance(err.value, ProviderPermissionError)
    assert dump(db) == before
    # a provider that was already open: unwrap is refused by Key Vault as well
    p = provider(azure_vault, "disabled-later")
    ctx = WrapContext("kr", 1)
    wrapped = p.wrap(SecretBytes.random(32), ctx)
    azure_vault.server.set_enabled("disabled-later", None, False)
    with pytest.raises(ProviderError, match="is disabled"):
        p.unwrap(wrapped, ctx)
    azure_vault.server.set_enabled(settings["key_name"], None, True)
    with nc.open(f"sqlite:///{db}", config=cfg(settings)) as v:
        assert v.get("github") == {"token": "t"}


def test_wrong_key_name_is_a_clear_error(azure_vault: AzureTestVault, tmp_path: Path) -> None:
    settings = azure_vault.settings()
    db = tmp_path / "store.db"
    with nc.open(f"sqlite:///{db}", config=cfg(settings), create=True) as v:
        v.put("github", {"token": "t"})
    before = dump(db)
    wrong = {**settings, "key_name": "no-such-key"}
    with pytest.raises(ConfigError, match=r"Azure key 'no-such-key'.*not found"):
        nc.open(f"sqlite:///{db}", config=cfg(wrong)).close()
    assert dump(db) == before and "no-such-key" not in azure_vault.server.keys


def test_permission_and_credential_errors_are_not_retried(azure_vault: AzureTestVault) -> None:
    p = provider(azure_vault, "perm")
    ctx = WrapContext("kr", 1)
    wrapped = p.wrap(SecretBytes.random(32), ctx)
    limited = azure_vault.credential({"get", "wrapKey"})  # no unwrapKey
    q = provider(azure_vault, "perm", limited, create=False)
    before = azure_vault.server.count("POST", "/unwrapkey")
    with pytest.raises(ProviderPermissionError, match="denied unwrap") as err:
        q.unwrap(wrapped, ctx)
    assert not isinstance(err.value, ProviderUnavailableError)
    assert azure_vault.server.count("POST", "/unwrapkey") == before + 1  # one attempt only
    assert limited.token not in str(err.value)
    # a token Key Vault does not accept: 401 after the challenge
    with pytest.raises(ProviderPermissionError, match="rejected the credential"):
        provider(azure_vault, "perm", StaticTokenCredential("not-a-token"), create=False)
    # a wrong client secret: the token endpoint says invalid_client
    bad = azure_vault.folder / "bad-secret"
    bad.write_text("wrong\n")
    with pytest.raises(ProviderPermissionError, match="rejected the credential"):
        AzureKeyVaultProvider.from_config(azure_vault.settings("perm", client_secret_file=str(bad)))


def test_5xx_then_success_and_bounded_retry(azure_vault: AzureTestVault, tmp_path: Path) -> None:
    p = provider(azure_vault, "flaky")
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = dek.to_bytes()
        azure_vault.server.fail_next(2)
        before = azure_vault.server.count("POST", "/wrapkey")
        wrapped = p.wrap(dek, ctx)
    assert azure_vault.server.count("POST", "/wrapkey") == before + 3 and p.calls["wrap"] == 1
    azure_vault.server.fail_next(3, status=500)
    assert p.unwrap(wrapped, ctx).to_bytes() == copy
    before = azure_vault.server.count("POST", "/unwrapkey")
    azure_vault.server.fail_next(10)
    try:
        with pytest.raises(ProviderUnavailableError, match="after 6 attempts"):
            p.unwrap(wrapped, ctx)
    finally:
        azure_vault.server.fail_next(0)
    assert azure_vault.server.count("POST", "/unwrapkey") == before + 6  # bounded
    # nothing written when a rotation cannot reach Key Vault
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with nc.open(url, provider=p, create=True) as v:
        v.put("a", {"n": 1})
        before_rows = dump(tmp_path / "store.db")
        azure_vault.server.fail_next(10)
        try:
            with pytest.raises(ProviderUnavailableError):
                v.keys.rotate(reason="test")
        finally:
            azure_vault.server.fail_next(0)
        assert dump(tmp_path / "store.db") == before_rows


def test_server_down_and_tls_errors_are_clear(azure_vault: AzureTestVault) -> None:
    down = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderUnavailableError, match="after 6 attempts"):
        AzureKeyVaultProvider(
            down, "k", azure_vault.credential(), settings=azure_vault.sdk_options()
        )
    with pytest.raises(ProviderError, match=r"TLS verification .* failed"):
        AzureKeyVaultProvider(
            azure_vault.url,
            "k",
            azure_vault.credential(),
            settings={"verify_challenge_resource": False},
        )
    with pytest.raises(ConfigError, match="https"):
        AzureKeyVaultProvider.from_config({"vault_url": "http://127.0.0.1:1", "key_name": "k"})


def test_debug_logs_carry_no_key_material(
    azure_vault: AzureTestVault, caplog: pytest.LogCaptureFixture
) -> None:
    import base64
    import logging

    p = provider(azure_vault, "logs")
    ctx = WrapContext("kr", 1)
    with caplog.at_level(logging.DEBUG):
        _, wrapped = p.generate_dek(ctx)
        dek = p.unwrap(wrapped, ctx).to_bytes()
    assert caplog.records  # the SDK did log
    for form in (base64.b64encode(dek), base64.urlsafe_b64encode(dek).rstrip(b"=")):
        assert form.decode()[:20] not in caplog.text
    for token in azure_vault.server.tokens:
        assert token not in caplog.text
