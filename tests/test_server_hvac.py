"""The server driven by hvac, unmodified: KV v2, tokens, ACL policies, health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from hvac import exceptions

from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve") as s:
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> hvac.Client:
    return server.hvac(server.token("root"))


def test_health(server: Server) -> None:
    status = server.hvac().sys.read_health_status(method="GET")
    assert status["initialized"] is True and status["sealed"] is False


def test_kv_write_read_patch_list_delete(root: hvac.Client, server: Server) -> None:
    kv = root.secrets.kv.v2
    written = kv.create_or_update_secret("app/db", secret={"password": "s3cret", "user": "app"})
    assert written["data"]["version"] == 1
    read = kv.read_secret_version("app/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "s3cret", "user": "app"}
    assert read["data"]["metadata"]["version"] == 1

    kv.patch("app/db", {"user": "app2"})
    assert kv.read_secret_version("app/db", raise_on_deleted_version=True)["data"]["data"] == {
        "password": "s3cret", "user": "app2"}

    kv.create_or_update_secret("app/cache", secret={"k": "v"})
    kv.create_or_update_secret("app/nested/x", secret={"k": "v"})
    assert kv.list_secrets("app")["data"]["keys"] == ["cache", "db", "nested/"]

    meta = kv.read_secret_metadata("app/db")["data"]
    assert meta["current_version"] == 2 and meta["max_versions"] == 0  # 0: the mount's, else Vault's 10

    kv.delete_latest_version_of_secret("app/cache")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret_version("app/cache", raise_on_deleted_version=True)
    kv.delete_metadata_and_all_versions("app/cache")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret_metadata("app/cache")
    assert kv.list_secrets("app")["data"]["keys"] == ["db", "nested/"]


def test_cas_conflict(root: hvac.Client) -> None:
    kv = root.secrets.kv.v2
    kv.create_or_update_secret("cas/one", secret={"n": 1}, cas=0)
    with pytest.raises(exceptions.InvalidRequest, match="check-and-set"):  # 400, as Vault answers
        kv.create_or_update_secret("cas/one", secret={"n": 2}, cas=0)
    kv.create_or_update_secret("cas/one", secret={"n": 3}, cas=1)
    with pytest.raises(exceptions.InvalidRequest, match="check-and-set"):  # 400, as Vault answers
        kv.create_or_update_secret("cas/one", secret={"n": 4}, cas=1)
    assert kv.read_secret_version("cas/one", raise_on_deleted_version=True)["data"]["data"] == {"n": 3}


def test_tokens(root: hvac.Client, server: Server) -> None:
    root.sys.create_or_update_acl_policy("reader", 'path "secret/data/app/*" { capabilities = ["read"] }')
    child = root.auth.token.create(policies=["reader"], ttl="1h")["auth"]
    # Vault attaches its built-in default policy to every token unless no_default_policy
    assert root.auth.token.lookup_accessor(child["accessor"])["data"]["policies"] == ["default", "reader"]
    client = server.hvac(child["client_token"])
    me = client.auth.token.lookup_self()["data"]
    assert me["policies"] == ["default", "reader"] and me["accessor"] == child["accessor"] and 3500 < me["ttl"] <= 3600
    assert client.auth.token.renew_self(increment="2h")["auth"]["lease_duration"] > 3600
    assert client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    with pytest.raises(exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret("app/db", secret={"x": "y"})
    client.auth.token.revoke_self()
    with pytest.raises(exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_policies(root: hvac.Client) -> None:
    root.sys.create_or_update_acl_policy("ops", 'path "secret/*" { capabilities = ["list"] }')
    assert "secret/*" in root.sys.read_acl_policy("ops")["data"]["policy"]
    assert {"ops", "root"} <= set(root.sys.list_acl_policies()["data"]["keys"])
    with pytest.raises(exceptions.InvalidRequest):
        root.sys.create_or_update_acl_policy("bad", 'path "secret/*" { capabilities = ["fly"] }')


def test_no_token_no_secrets(server: Server, tmp_path: Path) -> None:
    with pytest.raises(exceptions.Forbidden):
        server.hvac("ncs.not-a-real-token-at-all-000000000000000000000").secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert "s3cret" not in server.log()
