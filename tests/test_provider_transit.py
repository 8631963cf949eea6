"""Vault Transit provider against a real OpenBao dev server (see fixtures_transit.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

import nebula_credential as nc
from nebula_credential._secret import SecretBytes
from nebula_credential.exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
    ProviderUnavailableError,
)
from nebula_credential.providers.base import WrapContext
from nebula_credential.providers.vault_transit import VaultTransitProvider, wrapped_version
from nebula_credential.rootkeys import rotate_root_key

from .fixtures_transit import OpenBao
from .helpers import BackgroundHttpServer, FakeClock, cli_env, dump, free_port, run_cli
from .helpers import provider_config as cfg


def test_init_creates_a_derived_aes_key_and_binds_context(openbao: OpenBao) -> None:
    settings = openbao.settings()
    p = VaultTransitProvider.from_config(settings, create=True)
    key = openbao.client().secrets.transit.read_key(name=settings["key_name"])["data"]
    assert key["type"] == "aes256-gcm96" and key["derived"] is True
    ctx = WrapContext("tenant-a", 3)
    aead, wrapped = p.generate_dek(ctx)
    assert wrapped.startswith(b"vault:v1:") and wrapped_version(wrapped) == 1
    for other in (
        WrapContext("tenant-b", 3),
        WrapContext("tenant-a", 4),
        WrapContext("tenant-a", 3, "x"),
    ):
        with pytest.raises(DecryptionError):
            p.unwrap(wrapped, other)
    nonce = b"\x00" * 12
    assert p.open_dek(wrapped, ctx).decrypt(nonce, aead.encrypt(nonce, b"d", b"a"), b"a") == b"d"
    assert openbao.root_token not in repr(p) and openbao.root_token not in str(p.describe())


def test_rotation_is_transit_rotate_plus_rewrap_and_old_deks_still_unwrap(openbao: OpenBao) -> None:
    p = VaultTransitProvider.from_config(openbao.settings(), create=True)
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = SecretBytes(bytes(dek.buffer))
        wrapped = p.wrap(dek, ctx)
    assert p.root_key_id().endswith("#v1")
    assert p.rotate_root_key().endswith("#v2")
    assert p.unwrap(wrapped, ctx).equals(copy)  # v1 ciphertext still opens after rotation
    unwraps = p.calls.get("unwrap", 0)
    rewrapped = p.rewrap(wrapped, ctx)
    assert wrapped_version(rewrapped) == 2
    assert p.calls.get("unwrap", 0) == unwraps  # transit rewrap, no decrypt on our side
    assert p.unwrap(rewrapped, ctx).equals(copy)
    with pytest.raises(DecryptionError):
        p.rewrap(wrapped, WrapContext("kr", 2))  # rewrap checks the context too


def _raise_min_decryption(openbao: OpenBao, key_name: str, version: int) -> None:
    openbao.client().secrets.transit.update_key_configuration(
        name=key_name, min_decryption_version=version
    )


def test_min_decryption_version_gives_a_clear_error(openbao: OpenBao, tmp_path: Path) -> None:
    settings = openbao.settings()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with nc.open(url, config=cfg(settings), create=True) as v:
        v.put("github", {"token": "t"})
        v.provider.rotate_root_key()  # transit v2, DEKs NOT rewrapped
    _raise_min_decryption(openbao, settings["key_name"], 2)
    with pytest.raises(ProviderError) as err:
        nc.open(url, config=cfg(settings)).close()
    msg = str(err.value)
    assert f"transit key transit/{settings['key_name']} version 1" in msg
    assert "min_decryption_version 2" in msg and "provider rotate" in msg
    assert not isinstance(err.value, DecryptionError)
    # the fix it names: lower the minimum, provider rotate, raise it again
    _raise_min_decryption(openbao, settings["key_name"], 1)
    with nc.open(url, config=cfg(settings)) as v:
        rotate_root_key(v.store, v.provider, v.audit)
    _raise_min_decryption(openbao, settings["key_name"], 3)
    with nc.open(url, config=cfg(settings)) as v:
        assert v.get("github") == {"token": "t"}


def test_provider_rotate_beforehand_keeps_store_readable(openbao: OpenBao, tmp_path: Path) -> None:
    settings = openbao.settings()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    clock = FakeClock()
    with nc.open(url, config=cfg(settings), create=True, clock=clock) as v:
        v.put("a", {"n": 1})
        v.keys.rotate(reason="test")
        v.put("b", {"n": 2})
        result = rotate_root_key(v.store, v.provider, v.audit)
        assert result.rewrapped == 2 and result.server_side
        v.reencrypt()
        v.keys.revoke(1)
    _raise_min_decryption(openbao, settings["key_name"], 2)
    with nc.open(url, config=cfg(settings), clock=clock) as v:
        assert v.get("a") == {"n": 1} and v.get("b") == {"n": 2}
        assert v.audit.verify().ok


def test_wrong_key_name_is_a_clear_error_and_writes_nothing(
    openbao: OpenBao, tmp_path: Path
) -> None:
    settings = openbao.settings()
    db = tmp_path / "store.db"
    with nc.open(f"sqlite:///{db}", config=cfg(settings), create=True) as v:
        v.put("github", {"token": "t"})
    before = dump(db)
    with pytest.raises(ConfigError, match="transit key 'no-such-key' not found at mount 'transit'"):
        nc.open(f"sqlite:///{db}", config=cfg({**settings, "key_name": "no-such-key"})).close()
    assert dump(db) == before
    # and the typo did not silently create a key (transit/encrypt would upsert one)
    import hvac

    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key(name="no-such-key")


def test_bad_token_and_missing_policy_are_permission_errors(
    openbao: OpenBao, tmp_path: Path
) -> None:
    settings = openbao.settings()
    VaultTransitProvider.from_config(settings, create=True).close()
    bad = openbao.write_secret("bad-token", "not-a-token")
    with pytest.raises(ProviderPermissionError, match="rejected the token"):
        VaultTransitProvider.from_config({**settings, "token_file": str(bad)})
    # a real token whose policy may read the key and encrypt but not decrypt
    root = openbao.client()
    name = settings["key_name"]
    root.sys.create_or_update_policy(
        f"enc-{name}",
        f'path "transit/keys/{name}" {{ capabilities = ["read"] }}\n'
        f'path "transit/encrypt/{name}" {{ capabilities = ["update"] }}\n',
    )
    token = root.auth.token.create(policies=[f"enc-{name}"])["auth"]["client_token"]
    p = VaultTransitProvider.from_config(
        {**settings, "token_file": str(openbao.write_secret("lim", token))}
    )
    ctx = WrapContext("kr", 1)
    wrapped = p.wrap(SecretBytes.random(32), ctx)
    with pytest.raises(
        ProviderPermissionError, match=f"lacks 'update' on transit/decrypt/{name}"
    ) as err:
        p.unwrap(wrapped, ctx)
    assert not isinstance(err.value, ProviderUnavailableError)  # not retried
    assert token not in str(err.value)


def test_token_from_env_and_approle(openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = openbao.settings()
    monkeypatch.setenv("NC_TEST_BAO_TOKEN", openbao.root_token)
    env_settings = {k: v for k, v in settings.items() if k != "token_file"} | {
        "token_env": "NC_TEST_BAO_TOKEN"
    }
    VaultTransitProvider.from_config(env_settings, create=True).check()
    root = openbao.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    name = settings["key_name"]
    root.sys.create_or_update_policy(
        f"nc-{name}",
        f'path "transit/keys/{name}" {{ capabilities = ["read"] }}\n'
        + "".join(
            f'path "transit/{op}/{name}" {{ capabilities = ["update"] }}\n'
            for op in ("encrypt", "decrypt", "rewrap")
        ),
    )
    root.auth.approle.create_or_update_approle(f"nc-{name}", token_policies=[f"nc-{name}"])
    role_id = root.auth.approle.read_role_id(f"nc-{name}")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(f"nc-{name}")["data"]["secret_id"]
    approle = {k: v for k, v in settings.items() if k != "token_file"} | {
        "role_id_file": str(openbao.write_secret("role-id", role_id)),
        "secret_id_file": str(openbao.write_secret("secret-id", secret_id)),
    }
    p = VaultTransitProvider.from_config(approle)
    p.check()
    with pytest.raises(ProviderPermissionError):
        p.rotate_root_key()  # the role's policy does not allow rotate
    bad = approle | {"secret_id_file": str(openbao.write_secret("bad-secret-id", "nope"))}
    with pytest.raises(ProviderPermissionError, match="AppRole login"):
        VaultTransitProvider.from_config(bad)


def test_server_down_is_a_bounded_retry_then_a_clear_error(
    openbao: OpenBao, tmp_path: Path
) -> None:
    settings = openbao.settings()
    db = tmp_path / "store.db"
    with nc.open(f"sqlite:///{db}", config=cfg(settings), create=True) as v:
        v.put("github", {"token": "t"})
    before = dump(db)
    down = {**settings, "url": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(ProviderUnavailableError, match="after 4 attempts"):
        nc.open(f"sqlite:///{db}", config=cfg(down)).close()
    assert dump(db) == before


class FlakyProxy:
    """Forwards to OpenBao, answering the first ``failures`` requests with 503."""

    def __init__(self, upstream: str, ca_cert: Path) -> None:
        self.upstream = upstream
        self.failures = 0
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                proxy.seen += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.failures > 0:
                    proxy.failures -= 1
                    self._reply(503, b'{"errors":["injected"]}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                resp = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    data=body,
                    timeout=10,
                    verify=str(ca_cert),
                )
                self._reply(resp.status_code, resp.content)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_LIST = _forward

        self.http = BackgroundHttpServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def flaky(openbao: OpenBao) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(openbao.url, openbao.ca_cert)
    yield proxy
    proxy.close()


def test_5xx_then_success_is_retried(openbao: OpenBao, flaky: FlakyProxy) -> None:
    settings = openbao.settings()
    VaultTransitProvider.from_config(settings, create=True).close()
    p = VaultTransitProvider.from_config({**settings, "url": flaky.url})
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = SecretBytes(bytes(dek.buffer))
        flaky.failures, flaky.seen = 2, 0
        wrapped = p.wrap(dek, ctx)
    assert flaky.seen == 3 and p.calls["wrap"] == 1
    flaky.failures = 2
    assert p.unwrap(wrapped, ctx).equals(copy)
    flaky.failures, flaky.seen = 10, 0
    with pytest.raises(ProviderUnavailableError, match="after 4 attempts"):
        p.unwrap(wrapped, ctx)
    assert flaky.seen == 4  # bounded


def test_namespace_setting(openbao: OpenBao) -> None:
    ns = f"team-{uuid.uuid4().hex[:8]}"
    root = openbao.client()
    root.adapter.post(f"/v1/sys/namespaces/{ns}")
    openbao.client(namespace=ns).sys.enable_secrets_engine("transit", path="transit")
    settings = openbao.settings(namespace=ns)
    p = VaultTransitProvider.from_config(settings, create=True)
    p.check()
    assert p.describe()["namespace"] == ns
    # the key lives only in that namespace
    nested = openbao.client(namespace=ns).secrets.transit.read_key(name=settings["key_name"])
    assert nested["data"]["derived"] is True
    outside = {k: v for k, v in settings.items() if k != "namespace"}
    with pytest.raises(ConfigError, match="not found"):
        VaultTransitProvider.from_config(outside)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_settings(openbao: OpenBao) -> None:
    settings = openbao.settings()
    VaultTransitProvider.from_config(settings, create=True).check()  # ca_cert given: verified
    no_ca = {k: v for k, v in settings.items() if k != "ca_cert"}
    with pytest.raises(ProviderError, match="TLS to Vault failed") as err:
        VaultTransitProvider.from_config(no_ca)
    assert not isinstance(err.value, ProviderUnavailableError)  # not retried
    VaultTransitProvider.from_config({**no_ca, "verify": False}).check()


def test_cli_names_the_transit_version_and_the_fix(openbao: OpenBao, tmp_path: Path) -> None:
    settings = openbao.settings()
    config = tmp_path / "nebula.toml"
    config.write_text(
        "[provider]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    )
    env = cli_env(
        NEBULA_CREDENTIAL_CONFIG=str(config), NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}"
    )
    for args in (("init", "--provider", "vault-transit"), ("put", "github", "--value", '{"t": 1}')):
        assert run_cli(*args, cwd=tmp_path, env=env).returncode == 0
    openbao.client().secrets.transit.rotate_key(name=settings["key_name"])
    _raise_min_decryption(openbao, settings["key_name"], 2)
    proc = run_cli("provider", "check", cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "version 1, below its min_decryption_version 2" in proc.stderr
    assert "provider rotate" in proc.stderr and openbao.root_token not in proc.stderr


def test_debug_logs_carry_no_key_material(
    openbao: OpenBao, caplog: pytest.LogCaptureFixture
) -> None:
    import base64
    import logging

    p = VaultTransitProvider.from_config(openbao.settings(), create=True)
    ctx = WrapContext("kr", 1)
    with caplog.at_level(logging.DEBUG):
        _, wrapped = p.generate_dek(ctx)
        dek = p.unwrap(wrapped, ctx).to_bytes()
    assert base64.b64encode(dek).decode()[:20] not in caplog.text
    assert openbao.root_token not in caplog.text
