"""Vault's token semantics against a real ``serve``, driven by hvac unmodified.

create / create-orphan / create/:role with no_parent, num_uses, period,
explicit_max_ttl, type, ttl forms, the built-in default policy; lookup,
renew, revoke, revoke-orphan, the accessor endpoints, accessors LIST, token
roles; a child dies with its parent (expired or revoked).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hvac
import pytest
from hvac import exceptions

from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "tokens") as s:
        s.root = s.token("root")
        root = s.hvac(s.root)
        root.sys.create_or_update_acl_policy("reader", 'path "secret/data/app/*" { capabilities = ["read"] }')
        root.sys.create_or_update_acl_policy("health", 'path "sys/health" { capabilities = ["read"] }')
        root.sys.create_or_update_acl_policy("creator", 'path "auth/token/create" { capabilities = ["update"] }')
        root.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "s3cret"})
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> hvac.Client:
    return server.hvac(server.root)


def test_default_policy_is_attached_unless_refused(root: hvac.Client, server: Server) -> None:
    made = root.auth.token.create(policies=["reader"], ttl="1h")["auth"]
    assert made["policies"] == ["default", "reader"] and made["token_policies"] == ["default", "reader"]
    client = server.hvac(made["client_token"])
    assert client.auth.token.lookup_self()["data"]["policies"] == ["default", "reader"]  # default allows it
    bare = root.auth.token.create(policies=["reader"], no_default_policy=True)["auth"]
    assert bare["policies"] == ["reader"]
    with pytest.raises(exceptions.Forbidden):  # no default policy: not even lookup-self (Vault's rule)
        server.hvac(bare["client_token"]).auth.token.lookup_self()
    assert "path \"auth/token/lookup-self\"" in root.sys.read_acl_policy("default")["data"]["policy"]
    with pytest.raises(exceptions.InvalidRequest):
        root.sys.create_or_update_acl_policy("default", 'path "*" { capabilities = ["sudo"] }')


def test_lease_duration_is_what_was_asked(root: hvac.Client) -> None:
    for ttl in ("1h", "1h0m0s", "60m", "3600", 3600):
        auth = root.auth.token.create(policies=["reader"], ttl=ttl)["auth"]
        assert auth["lease_duration"] == 3600, ttl
    looked = root.auth.token.lookup(auth["client_token"])["data"]
    assert looked["creation_ttl"] == 3600 and 3598 <= looked["ttl"] <= 3600


def test_num_uses_then_revoked(root: hvac.Client, server: Server) -> None:
    auth = root.auth.token.create(policies=["reader"], num_uses=3)["auth"]
    assert auth["num_uses"] == 3
    client = server.hvac(auth["client_token"])
    assert client.auth.token.lookup_self()["data"]["num_uses"] == 2  # as Vault: this lookup was one use
    client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)  # the last use
    with pytest.raises(exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    with pytest.raises(exceptions.InvalidRequest):
        root.auth.token.create(policies=["reader"], num_uses=-1)


def test_num_uses_under_concurrency(root: hvac.Client, server: Server) -> None:
    token = root.auth.token.create(policies=["reader"], num_uses=5)["auth"]["client_token"]

    def read(_: int) -> int:
        with server.http(token) as c:
            return c.get("/v1/secret/data/app/db").status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(read, range(24)))
    assert codes.count(200) == 5 and codes.count(403) == 19


def test_periodic_token_renews_to_its_period(root: hvac.Client, server: Server) -> None:
    auth = root.auth.token.create(policies=["reader"], period="30m", ttl="5m")["auth"]
    assert auth["lease_duration"] == 1800
    looked = root.auth.token.lookup(auth["client_token"])["data"]
    assert looked["period"] == 1800
    renewed = server.hvac(auth["client_token"]).auth.token.renew_self(increment="10h")["auth"]
    assert renewed["lease_duration"] == 1800  # reset to the period, whatever the increment
    with pytest.raises(exceptions.InvalidRequest, match="root or sudo"):
        server.hvac(root.auth.token.create(policies=["reader", "creator"])["auth"]["client_token"]).auth.token.create(
            policies=["reader"], period="1h")


def test_explicit_max_ttl_caps_renewal(root: hvac.Client, server: Server) -> None:
    auth = root.auth.token.create(policies=["reader"], ttl="1h", explicit_max_ttl="90m")["auth"]
    assert root.auth.token.lookup(auth["client_token"])["data"]["explicit_max_ttl"] == 5400
    renewed = server.hvac(auth["client_token"]).auth.token.renew_self(increment="4h")["auth"]
    assert 5390 <= renewed["lease_duration"] <= 5400


def test_unsupported_and_batch_are_refused(root: hvac.Client, server: Server) -> None:
    with pytest.raises(exceptions.InvalidRequest, match="batch"):
        root.auth.token.create(policies=["reader"], type="batch")
    with server.http(server.root) as c:
        r = c.post("/v1/auth/token/create", json={"policies": ["reader"], "id": "my-own-token", "entity_alias": "x"})
    assert r.status_code == 400 and "entity_alias" in r.json()["errors"][0] and "id" in r.json()["errors"][0]


def test_no_parent_and_create_orphan(root: hvac.Client, server: Server) -> None:
    assert root.auth.token.create(policies=["reader"], no_parent=True)["auth"]["orphan"] is True
    assert root.auth.token.create(policies=["reader"])["auth"]["orphan"] is False
    assert root.auth.token.create_orphan(policies=["reader"])["auth"]["orphan"] is True
    child = server.hvac(root.auth.token.create(policies=["reader", "creator"])["auth"]["client_token"])
    with pytest.raises(exceptions.InvalidRequest, match="root or sudo"):
        child.auth.token.create(policies=["reader"], no_parent=True)


def test_lookup_renew_revoke_by_token_and_accessor(root: hvac.Client, server: Server) -> None:
    auth = root.auth.token.create(policies=["reader"], ttl="1h")["auth"]
    token, accessor = auth["client_token"], auth["accessor"]
    data = root.auth.token.lookup(token)["data"]
    assert data["accessor"] == accessor and data["path"] == "auth/token/create"
    assert root.auth.token.lookup_accessor(accessor)["data"]["id"] == ""
    assert root.auth.token.renew(token, increment="2h")["auth"]["lease_duration"] == 7200
    assert root.auth.token.renew_accessor(accessor, increment="3h")["auth"]["lease_duration"] == 10800
    assert accessor in root.auth.token.list_accessors()["data"]["keys"]
    root.auth.token.revoke(token)
    with pytest.raises(exceptions.Forbidden):
        root.auth.token.lookup(token)
    other = root.auth.token.create(policies=["reader"])["auth"]
    root.auth.token.revoke_accessor(other["accessor"])
    with pytest.raises(exceptions.InvalidRequest):
        root.auth.token.lookup_accessor(other["accessor"])
    with pytest.raises(exceptions.Forbidden):  # accessors need sudo
        server.hvac(root.auth.token.create(policies=["reader"])["auth"]["client_token"]).auth.token.list_accessors()


def test_revoke_self_and_children(root: hvac.Client, server: Server) -> None:
    parent = root.auth.token.create(policies=["reader", "creator"])["auth"]["client_token"]
    child = server.hvac(parent).auth.token.create(policies=["reader"])["auth"]["client_token"]
    root.auth.token.revoke(parent)
    with pytest.raises(exceptions.Forbidden):
        server.hvac(child).auth.token.lookup_self()
    parent = root.auth.token.create(policies=["reader", "creator"])["auth"]["client_token"]
    child = server.hvac(parent).auth.token.create(policies=["reader"])["auth"]["client_token"]
    root.auth.token.revoke_and_orphan_children(parent)
    assert server.hvac(child).auth.token.lookup_self()["data"]["orphan"] is True
    server.hvac(child).auth.token.revoke_self()
    with pytest.raises(exceptions.Forbidden):
        server.hvac(child).auth.token.lookup_self()


def test_child_dies_when_its_parent_expires(root: hvac.Client, server: Server) -> None:
    """OpenBao grants a 700 h child of a 2 s non-renewable parent, and refuses it once the parent expired."""
    parent = root.auth.token.create(policies=["reader", "creator"], ttl="2s", renewable=False)["auth"]
    child = server.hvac(parent["client_token"]).auth.token.create(policies=["reader"], ttl="700h")["auth"]
    assert child["lease_duration"] == 700 * 3600
    reader = server.hvac(child["client_token"])
    reader.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    time.sleep(2.2)
    with pytest.raises(exceptions.Forbidden):
        reader.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    with pytest.raises(exceptions.Forbidden):
        root.auth.token.lookup(child["client_token"])


def test_token_roles(root: hvac.Client, server: Server) -> None:
    root.auth.token.create_or_update_role("app", allowed_policies=["reader"], orphan=True, renewable=True,
                                          token_period="1h", token_explicit_max_ttl="10h")
    role = root.auth.token.read_role("app")["data"]
    assert role["allowed_policies"] == ["reader"] and role["orphan"] is True and role["period"] == 3600
    assert role["token_explicit_max_ttl"] == 36000
    assert root.auth.token.list_roles()["data"]["keys"] == ["app"]
    # a token holding only the health policy creates a reader token through the role
    creator = root.auth.token.create(policies=["health"])["auth"]["client_token"]
    root.sys.create_or_update_acl_policy("health", 'path "sys/health" { capabilities = ["read"] }\n'
                                         'path "auth/token/create/app" { capabilities = ["update"] }')
    made = server.hvac(creator).auth.token.create(role_name="app", policies=["reader"])["auth"]
    assert made["policies"] == ["default", "reader"] and made["orphan"] is True and made["lease_duration"] == 3600
    looked = root.auth.token.lookup(made["client_token"])["data"]
    assert looked["role"] == "app" and looked["path"] == "auth/token/create/app"
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac(creator).auth.token.create(role_name="app", policies=["health"])
    root.auth.token.delete_role("app")
    with pytest.raises(exceptions.InvalidPath):
        root.auth.token.read_role("app")
    # no allowed_policies: the parent's policies bound the token, minus the disallowed ones
    root.auth.token.create_or_update_role("open", disallowed_policies=["health"], renewable=False)
    made = root.auth.token.create(role_name="open", policies=["reader"])["auth"]
    assert made["policies"] == ["default", "reader"] and made["renewable"] is False and made["orphan"] is False
    with pytest.raises(exceptions.InvalidRequest, match="disallowed"):
        root.auth.token.create(role_name="open", policies=["health"])
    with server.http(server.root) as c:
        refused = c.post("/v1/auth/token/roles/batchy", json={"token_type": "batch"})
    assert refused.status_code == 400 and "batch" in refused.json()["errors"][0]
