"""One conformance suite for every root of trust.

Each kind in ``PROVIDER_KINDS`` resolves a fixture named
``<kind with - as _>_provider_factory``: a callable returning the
``[provider]`` settings (``type`` included) of a *fresh* root key each time
it is called.  A new provider proves itself by appending its kind here and
providing that fixture (in its own ``tests/fixtures_<topic>.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.envelope import credential_context
from nebula_credential.exceptions import NebulaCredentialError
from nebula_credential.keys import KeyManager
from nebula_credential.models import KeyStatus
from nebula_credential.policies.retention import UntilReEncrypted
from nebula_credential.providers import WrapContext, open_provider
from nebula_credential.rootkeys import rotate_root_key
from nebula_credential.store import open_store

from .helpers import FakeClock, cli_env, dump, run_cli

PROVIDER_KINDS = [
    "local",
    "pkcs11-wrap",
    "pkcs11-direct",
    "aws-kms",
    "vault-transit",
    "azure-keyvault",
]

ProviderFactory = Callable[[], dict[str, Any]]


@pytest.fixture
def local_provider_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProviderFactory:
    monkeypatch.delenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", raising=False)
    counter = iter(range(1_000_000))
    return lambda: {"type": "local", "key_file": str(tmp_path / f"root-{next(counter)}.key")}


@pytest.fixture(params=PROVIDER_KINDS)
def provider_factory(request: pytest.FixtureRequest) -> ProviderFactory:
    factory: ProviderFactory = request.getfixturevalue(
        f"{request.param.replace('-', '_')}_provider_factory"
    )
    return factory


def config_for(settings: dict[str, Any], **sections: dict[str, Any]) -> KeyManagementConfig:
    return KeyManagementConfig.from_dict({"provider": dict(settings), **sections})



def test_full_lifecycle(
    provider_factory: ProviderFactory, tmp_path: Path, clock: FakeClock
) -> None:
    settings = provider_factory()
    cfg = config_for(settings, retention={"keep_versions": 1})  # v1 is destroyed right after one rotation
    url = f"sqlite:///{tmp_path / 'store.db'}"
    values = {f"cred-{i}": {"token": f"secret-{i}"} for i in range(6)}
    with nc.open(url, config=cfg, create=True, clock=clock) as v:
        assert v.provider.name == settings["type"]
        for i, (cid, value) in enumerate(values.items()):
            v.put(cid, value, scope=("production", "user", "development")[i % 3])
        # rotate, re-encrypt: every credential moves to v2, v1 keeps nothing
        assert v.keys.rotate(reason="test") is not None
        result = v.reencrypt()
        assert result.ok and result.reencrypted == len(values)
        assert v.keys.credential_counts() == {2: len(values)}
        # revoke and destroy (cleanup) the unused v1
        v.keys.revoke(1)
        clock.advance(seconds=10)  # the destroy floor
        v.keys.destroy(1, retention=UntilReEncrypted())
        # v3 active, one credential rewritten under it; the rest stay under v2
        v.keys.rotate(reason="test")
        v.put("cred-0", {"token": "rewritten"}, scope="production")
        values["cred-0"] = {"token": "rewritten"}
        old_root = v.provider.root_key_id()
        early = open_provider(cfg.provider)  # another process, started before the root rotation
        rot = rotate_root_key(v.store, v.provider, v.audit)
        assert rot.old_root_key_id == old_root and rot.new_root_key_id != old_root
        assert rot.rewrapped == 2 and rot.skipped_destroyed == 1
        assert rot.server_side == v.provider.server_side_rewrap
        versions = {kv.version: kv for kv in v.keys.list()}
        assert versions[1].status is KeyStatus.DESTROYED and versions[1].wrapped_key is None
        assert {versions[2].root_key_id, versions[3].root_key_id} == {rot.new_root_key_id}
        # that other process still opens every DEK, now wrapped under the new root
        for kv in versions.values():
            if kv.wrapped_key is not None:
                aead = early.open_dek(kv.wrapped_key, WrapContext("default", kv.version))
                assert aead.decrypt(b"\0" * 12, aead.encrypt(b"\0" * 12, b"p", b""), b"") == b"p"
        early.close()
        # no credential was re-encrypted by the root rotation
        assert v.keys.credential_counts() == {2: len(values) - 1, 3: 1}
        for cid, value in values.items():
            assert v.get(cid) == value
    # a fresh open (as another process would) unwraps the rewrapped DEKs under the new root
    with nc.open(url, config=cfg, clock=clock) as v2:
        for cid, value in values.items():
            assert v2.get(cid) == value
        assert v2.audit.verify().ok
        events = [r for r in v2.audit.rows() if r.action == "provider.rotate"]
        assert len(events) == 1
        details = json.loads(events[0].details)
        assert details["old_root_key_id"] == old_root
        assert details["new_root_key_id"] == rot.new_root_key_id
        assert details["rewrapped"] == 2
        v2.reencrypt()
        assert v2.keys.credential_counts() == {3: len(values)}


def test_store_refuses_another_root_key(provider_factory: ProviderFactory, tmp_path: Path) -> None:
    own, other = provider_factory(), provider_factory()
    db = tmp_path / "store.db"
    with nc.open(f"sqlite:///{db}", config=config_for(own), create=True) as v:
        v.put("github", {"token": "t"})
    # the other root key exists (it initialised a store of its own)
    nc.open(f"sqlite:///{tmp_path / 'other.db'}", config=config_for(other), create=True).close()
    before = dump(db)
    with pytest.raises(NebulaCredentialError) as err:
        nc.open(f"sqlite:///{db}", config=config_for(other)).close()
    message = str(err.value)
    assert message and "Traceback" not in message
    assert dump(db) == before  # nothing written
    with nc.open(f"sqlite:///{db}", config=config_for(own)) as v:
        assert v.get("github") == {"token": "t"}
        assert v.audit.verify().ok


def test_reads_unwrap_each_version_at_most_once(
    provider_factory: ProviderFactory, tmp_path: Path
) -> None:
    """100,000 reads across 3 DEK versions: one unwrap per version, counted at the provider."""
    cfg = config_for(provider_factory())
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with nc.open(url, config=cfg, create=True) as v:
        for version in (1, 2, 3):
            for i in range(10):
                v.put(f"v{version}-{i}", {"n": i})
            if version < 3:
                v.keys.rotate()
        rows = list(v.list())
    assert {r.key_version for r in rows} == {1, 2, 3}
    # a new "process": fresh provider instance and key manager, nothing cached
    store = open_store(url)
    provider = open_provider(cfg.provider)
    try:
        km = KeyManager(store, provider, config=cfg)
        items = [(r.envelope, credential_context(r.keyring, r.id, r.scope)) for r in rows]
        expected = {
            r.id: json.dumps({"n": int(r.id.split("-")[1])}, separators=(",", ":")).encode()
            for r in rows
        }
        ids = [r.id for r in rows]
        start = time.perf_counter()
        n = len(items)
        decrypt = km.decrypt
        for i in range(100_000):
            blob, aad = items[i % n]
            out = decrypt(blob, aad)
        seconds = time.perf_counter() - start
        assert out == expected[ids[(100_000 - 1) % n]]
        assert provider.calls.get("unwrap", 0) == 3, provider.calls
        assert set(provider.calls) <= {"unwrap"}, provider.calls
        print(f"{provider.name}: 100,000 reads in {seconds:.2f}s")
    finally:
        provider.close()
        store.close()


def _toml(settings: dict[str, Any]) -> str:
    lines = ["[provider]"]
    for k, value in settings.items():
        lines.append(f"{k} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def test_cli_init_and_provider_commands(provider_factory: ProviderFactory, tmp_path: Path) -> None:
    settings = provider_factory()
    config = tmp_path / "nebula.toml"
    config.write_text(_toml(settings))
    env = cli_env(
        NEBULA_CREDENTIAL_CONFIG=str(config), NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}"
    )

    def cli(*args: str) -> Any:
        proc = run_cli("--json", *args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert cli("init", "--provider", settings["type"])["provider"]["type"] == settings["type"]
    cli("put", "github", "--value", '{"token": "ghp_secret"}')
    shown = cli("provider", "show")
    assert sum(shown["wrapped_keys_by_root"].values()) == 1
    rotated = cli("provider", "rotate")
    assert rotated["rewrapped"] == 1 and rotated["old_root_key_id"] != rotated["new_root_key_id"]
    checked = cli("provider", "check")
    assert checked["ok"] is True and checked["root_key_id"] == rotated["new_root_key_id"]
    assert cli("get", "github")["value"] == {"token": "ghp_secret"}
    with nc.open(env["NEBULA_CREDENTIAL_DB"], config=config_for(settings)) as v:
        assert v.audit.verify().ok
        assert [r.action for r in v.audit.rows()].count("provider.rotate") == 1
    pin = _secret_of(settings)
    if pin:
        for out in (json.dumps(shown), json.dumps(rotated), json.dumps(checked)):
            assert pin not in out


def _secret_of(settings: dict[str, Any]) -> str | None:
    path = settings.get("pin_file")
    return Path(path).read_text().strip() if path else None
