"""AWS KMS provider against moto: the session's moto_server, and one stopped and restarted."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential._secret import SecretBytes
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import (
    ConfigError,
    DecryptionError,
    ProviderPermissionError,
    ProviderUnavailableError,
)
from nebula_credential.providers.aws_kms import AwsKmsKeyProvider
from nebula_credential.providers.base import WrapContext
from nebula_credential.rootkeys import rotate_root_key

from .fixtures_hsm_kms import MotoKms, wait_for_port
from .helpers import dump, free_port


def test_data_keys_are_bound_to_their_context(moto_kms: MotoKms) -> None:
    p = AwsKmsKeyProvider.from_config(moto_kms.settings())
    ctx = WrapContext("tenant-a", 3)
    aead, wrapped = p.generate_dek(ctx)
    assert p.unwrap(wrapped, ctx)  # same context: fine
    for other in (
        WrapContext("tenant-b", 3),
        WrapContext("tenant-a", 4),
        WrapContext("tenant-a", 3, "x"),
    ):
        with pytest.raises(DecryptionError):
            p.unwrap(wrapped, other)
    nonce = b"\x00" * 12
    ct = aead.encrypt(nonce, b"data", b"aad")
    assert p.open_dek(wrapped, ctx).decrypt(nonce, ct, b"aad") == b"data"


def test_debug_logs_never_show_a_data_key(
    moto_kms: MotoKms, caplog: pytest.LogCaptureFixture
) -> None:
    import base64

    p = AwsKmsKeyProvider.from_config(moto_kms.settings())
    ctx = WrapContext("kr", 1)
    with caplog.at_level(logging.DEBUG, logger="botocore"):
        _, wrapped = p.generate_dek(ctx)
        dek = p.unwrap(wrapped, ctx)
    assert "redacted by nebula-credential" in caplog.text  # botocore did log the bodies
    assert base64.b64encode(dek.to_bytes()).decode() not in caplog.text


def test_rotation_uses_rotate_on_demand_and_reencrypt(moto_kms: MotoKms) -> None:
    settings = moto_kms.settings()
    p = AwsKmsKeyProvider.from_config(settings)
    ctx = WrapContext("kr", 1)
    with SecretBytes.random(32) as dek:
        copy = SecretBytes(bytes(dek.buffer))
        wrapped = p.wrap(dek, ctx)
    before = p.root_key_id()
    after = p.rotate_root_key()
    assert after != before and after.startswith(p.key_arn) and after.endswith("#r1")
    rotations = moto_kms.client().list_key_rotations(KeyId=p.key_arn)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    calls_before = dict(p.calls)
    rewrapped = p.rewrap(wrapped, ctx)
    assert p.calls.get("unwrap", 0) == calls_before.get("unwrap", 0)  # ReEncrypt, no Decrypt
    assert p.unwrap(rewrapped, ctx).equals(copy)
    assert p.server_side_rewrap is True


def test_clear_errors(moto_kms: MotoKms) -> None:
    with pytest.raises(ConfigError, match=r"provider.key_id"):
        AwsKmsKeyProvider.from_config(moto_kms.settings(key_id="alias/does-not-exist"))
    with pytest.raises(ConfigError, match=r"provider.key_id"):
        AwsKmsKeyProvider.from_config({**moto_kms.settings(), "key_id": ""})
    with pytest.raises(ConfigError, match=r"provider.profile"):
        AwsKmsKeyProvider.from_config(moto_kms.settings(profile="no-such-profile"))
    with pytest.raises(ConfigError, match=r"provider.max_attempts"):
        AwsKmsKeyProvider.from_config(moto_kms.settings(max_attempts=0))
    a = AwsKmsKeyProvider.from_config(moto_kms.settings())
    b = AwsKmsKeyProvider.from_config(moto_kms.settings())
    _, wrapped = a.generate_dek(WrapContext("kr", 1))
    with pytest.raises(ProviderPermissionError, match="another KMS key"):
        b.unwrap(wrapped, WrapContext("kr", 1))
    # a store initialised without a key_id gets a new KMS key, shown by ARN (for the config)
    created = AwsKmsKeyProvider.from_config({**moto_kms.settings(), "key_id": None}, create=True)
    assert created.describe()["key_arn"].startswith("arn:aws:kms:")


# ---- endpoint stopped mid-run and restarted on the same port ---------------------------
class RestartableMoto:
    """moto's server in this process: its state survives a stop/start on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer("127.0.0.1", self.port, verbose=False)
        self._server.start()
        wait_for_port(self.port, None)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()  # release the port: the endpoint is gone
            self._server = None


@pytest.fixture
def restartable_moto(aws_test_env: None) -> Iterator[RestartableMoto]:
    server = RestartableMoto(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()



def test_endpoint_stopped_then_restarted(restartable_moto: RestartableMoto, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{restartable_moto.port}"
    kms = MotoKms(endpoint, restartable_moto.port)
    settings = kms.settings(max_attempts=3, connect_timeout=1, read_timeout=2)
    cfg = KeyManagementConfig.from_dict({"provider": settings})
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    values = {f"c{i}": {"token": f"t{i}"} for i in range(20)}
    v = nc.open(url, config=cfg, create=True)
    attempts: list[str] = []
    v.provider._client.meta.events.register(  # type: ignore[attr-defined]
        "before-send.kms", lambda request, **_: attempts.append(request.url)
    )
    for cid, value in values.items():
        v.put(cid, value)
    v.keys.rotate()
    v.put("c0", {"token": "new"})
    values["c0"] = {"token": "new"}

    restartable_moto.stop()
    before = dump(db)
    # reads and writes on cached DEKs go on: the provider is not on the hot path
    assert v.get("c1") == values["c1"]
    # anything that needs KMS fails after botocore's bounded retries, with a clear error
    attempts.clear()
    with pytest.raises(ProviderUnavailableError, match="unreachable") as err:
        v.keys.rotate()
    assert len(attempts) == 3  # max_attempts, then give up
    assert "Traceback" not in str(err.value)
    with pytest.raises(ProviderUnavailableError):
        rotate_root_key(v.store, v.provider, v.audit)
    with pytest.raises(ProviderUnavailableError):
        nc.open(url, config=cfg)  # a new process cannot unwrap the audit key
    assert dump(db) == before  # nothing written, nothing half-written

    restartable_moto.start()  # same port, same KMS state
    kv = v.keys.rotate()
    assert kv is not None and kv.version == 3
    v.put("c2", {"token": "after"})
    values["c2"] = {"token": "after"}
    result = rotate_root_key(v.store, v.provider, v.audit)
    assert result.rewrapped == 3
    v.close()
    with nc.open(url, config=cfg) as fresh:
        for cid, value in values.items():
            assert fresh.get(cid) == value
        assert fresh.audit.verify().ok
        assert fresh.reencrypt().ok
