"""The same sys, policy, capability and TTL requests to a real OpenBao and to us, compared.

Each step runs against ``bao server -dev`` (the session's OpenBao, see
fixtures_transit.py) and against our ``serve``; the status codes must be
equal, and for a JSON answer every field OpenBao gives must be in ours with
the same JSON type (recursively), unless the step lists it as a documented
difference (docs/server.md, "Deliberate differences from Vault").  Where
the values are decided by the same rules on both sides (capabilities,
names, ``initialized``/``sealed``), the values are compared too.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .fixtures_transit import OpenBao
from .server_proc import Server, sqlite_serve

HCL = ('path "secret/data/a" { capabilities = ["create", "update"] }\n'
       'path "secret/data/b/*" { capabilities = ["read", "list"] }\n'
       'path "secret/data/b/no" { capabilities = ["deny"] }\n')
JSON_POLICY = json.dumps({"path": {"secret/data/j/*": {"capabilities": ["read"]},
                                   "secret/+/k": {"capabilities": ["list", "sudo"]}}})
#: Fields only OpenBao has on a policy read (versioned policies, identity templating).
BAO_POLICY_EXTRAS = frozenset({"version", "cas_required", "modified", "allow_wildcards_in_identity_templates",
                               "allow_slashes_in_identity_templates"})


@dataclass
class Side:
    name: str
    client: httpx.Client
    root: str
    #: values steps need: a limited token and its accessor
    facts: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
        headers = {"X-Vault-Token": token} if token else {}
        content = None if body is None else json.dumps(body)
        return self.client.request(method, f"/v1/{path}", content=content, headers=headers)


Body = Any | Callable[[Side], Any]


@dataclass(frozen=True)
class Step:
    name: str
    method: str
    path: str
    body: Body = None
    token: str = "root"  # root, none, or a key of Side.facts
    #: fields whose values must be equal too (dotted paths into the JSON answer)
    same: tuple[str, ...] = ()
    #: OpenBao's fields we do not have, by design (documented)
    ignore: frozenset[str] = frozenset()


def _tok(key: str) -> Callable[[Side], Any]:
    return lambda side: side.facts[key]


def _caps(path: str | list[str], token_key: str | None = None, accessor: bool = False) -> Callable[[Side], Any]:
    def body(side: Side) -> Any:
        out: dict[str, Any] = {"paths" if isinstance(path, list) else "path": path}
        if token_key:
            out["token"] = side.facts[token_key]
        if accessor:
            out["accessor"] = side.facts["accessor"]
        return out
    return body


def _create(ttl: Any, **extra: Any) -> dict[str, Any]:
    return {"policies": ["d1", "dj"], "ttl": ttl, **extra}


STEPS: list[Step] = [
    # -- status, unauthenticated
    Step("seal-status", "GET", "sys/seal-status", token="none",
         same=("initialized", "sealed", "t", "n", "progress", "type", "recovery_seal", "migration")),
    Step("leader", "GET", "sys/leader", token="none", same=("ha_enabled",)),
    Step("init", "GET", "sys/init", token="none", same=("initialized",)),
    Step("init again", "PUT", "sys/init", {}, token="none"),
    Step("health", "GET", "sys/health", token="none", same=("initialized", "sealed", "standby")),
    Step("seal-status POST", "POST", "sys/seal-status", {}, token="none"),
    Step("leader POST", "POST", "sys/leader", {}, token="none"),
    # -- 404s name what is missing
    Step("unknown sys path", "GET", "sys/no-such-endpoint"),
    Step("unknown mount", "GET", "nomount/x"),
    Step("policy list without a token", "GET", "sys/policy", token="none"),
    # -- policies, legacy and ACL endpoints
    Step("legacy put with policy", "PUT", "sys/policy/d1", {"policy": HCL}),
    Step("legacy put with rules warns", "PUT", "sys/policy/d2", {"rules": HCL}),
    Step("legacy read", "GET", "sys/policy/d1", same=("name", "rules", "data.name", "data.rules"),
         ignore=BAO_POLICY_EXTRAS),
    Step("legacy read of rules-written", "GET", "sys/policy/d2", same=("name", "data.rules"), ignore=BAO_POLICY_EXTRAS),
    Step("legacy list", "GET", "sys/policy"),
    Step("legacy LIST", "LIST", "sys/policy"),
    Step("acl LIST", "LIST", "sys/policies/acl"),
    Step("acl read", "GET", "sys/policies/acl/d1", same=("data.name", "data.policy"), ignore=BAO_POLICY_EXTRAS),
    Step("acl put JSON syntax", "PUT", "sys/policies/acl/dj", {"policy": JSON_POLICY}),
    Step("acl read JSON policy", "GET", "sys/policies/acl/dj", same=("data.policy",), ignore=BAO_POLICY_EXTRAS),
    Step("acl put mixed-case name", "PUT", "sys/policies/acl/MiXed", {"policy": HCL}),
    Step("acl read lower-cased name", "GET", "sys/policies/acl/mixed", same=("data.name",), ignore=BAO_POLICY_EXTRAS),
    Step("put without policy", "PUT", "sys/policy/empty", {}),
    Step("put unparsable policy", "PUT", "sys/policy/bad", {"policy": 'path "a" {'}),
    Step("put JSON policy with an unknown capability", "PUT", "sys/policies/acl/badj",
         {"policy": '{"path": {"a": {"capabilities": ["fly"]}}}'}),
    Step("put JSON policy of the wrong shape", "PUT", "sys/policies/acl/badj", {"policy": '{"path": [1]}'}),
    Step("legacy read missing", "GET", "sys/policy/missing"),
    Step("acl read missing", "GET", "sys/policies/acl/missing"),
    Step("delete missing", "DELETE", "sys/policy/missing"),
    Step("delete root", "DELETE", "sys/policy/root"),
    Step("update root", "PUT", "sys/policy/root", {"policy": HCL}),
    Step("read root", "GET", "sys/policy/root", same=("name", "rules"), ignore=BAO_POLICY_EXTRAS),
    Step("legacy delete", "DELETE", "sys/policy/d2"),
    Step("read deleted", "GET", "sys/policy/d2"),
    # -- TTLs in Vault's forms
    Step("ttl 1h0m0s (the CLI's -ttl=1h)", "POST", "auth/token/create", _create("1h0m0s"),
         ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl 90m", "POST", "auth/token/create", _create("90m"), ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl 1.5h", "POST", "auth/token/create", _create("1.5h"), ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl integer seconds", "POST", "auth/token/create", _create(300), ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl seconds as a string", "POST", "auth/token/create", _create("300"),
         ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl with explicit_max_ttl 2h0m0s", "POST", "auth/token/create", _create("1h", explicit_max_ttl="2h0m0s"),
         ignore=frozenset({"auth.mfa_requirement"})),
    Step("ttl not a duration", "POST", "auth/token/create", _create("soon")),
    Step("ttl negative", "POST", "auth/token/create", _create("-5m")),
    # -- capabilities, from the token's ACL
    Step("capabilities one path", "POST", "sys/capabilities", _caps("secret/data/a", "limited"),
         same=("data", "capabilities", "secret/data/a")),
    Step("capabilities several paths", "POST", "sys/capabilities",
         _caps(["secret/data/a", "secret/data/b/x", "secret/data/b/no", "secret/data/zz"], "limited"),
         same=("data",)),
    Step("capabilities of JSON policy paths", "POST", "sys/capabilities",
         _caps(["secret/data/j/x", "secret/metadata/k", "secret/data/k/x"], "limited"), same=("data",)),
    Step("capabilities with a leading slash", "POST", "sys/capabilities", _caps("/secret/data/a", "limited"),
         same=("data",)),
    Step("capabilities-accessor", "POST", "sys/capabilities-accessor", _caps("secret/data/b/y", accessor=True),
         same=("data",)),
    Step("capabilities-self limited", "POST", "sys/capabilities-self", _caps("secret/data/a"), token="limited",
         same=("data",)),
    Step("capabilities-self limited, paths", "POST", "sys/capabilities-self",
         _caps(["secret/data/b/no", "secret/data/b/q"]), token="limited", same=("data",)),
    Step("capabilities-self root", "POST", "sys/capabilities-self", _caps("anything/at/all"), same=("data",)),
    Step("capabilities of root token", "POST", "sys/capabilities", lambda s: {"path": "x", "token": s.root},
         same=("data",)),
    Step("capabilities asked by a limited token", "POST", "sys/capabilities", _caps("secret/data/a", "limited"),
         token="limited"),
    Step("capabilities of an unknown token", "POST", "sys/capabilities", {"path": "a", "token": "s.nothing0000000"}),
    Step("capabilities-accessor unknown", "POST", "sys/capabilities-accessor", {"path": "a", "accessor": "nope"}),
    Step("capabilities-self without paths", "POST", "sys/capabilities-self", {}),
    # -- KV through the same policy (what capabilities promised)
    Step("write allowed by policy", "POST", "secret/data/a", {"data": {"v": "1"}}, token="limited",
         ignore=frozenset({"data.custom_metadata"})),
    Step("read denied by policy", "GET", "secret/data/a", token="limited"),
    Step("read denied by deny", "GET", "secret/data/b/no", token="limited"),
    # -- audit devices
    Step("audit list", "GET", "sys/audit"),
    Step("audit list without sudo", "GET", "sys/audit", token="limited"),
    Step("audit enable refused", "PUT", "sys/audit/file", {"type": "file", "options": {"file_path": "/dev/null"}}),
]


def _get(body: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        if not isinstance(body, dict) or part not in body:
            return KeyError(dotted)
        body = body[part]
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _shape_diffs(bao: Any, ours: Any, where: str, ignore: frozenset[str]) -> list[str]:
    if where in ignore:
        return []
    if _kind(bao) != _kind(ours):
        return [f"{where or '<body>'}: {_kind(bao)} there, {_kind(ours)} here"]
    out: list[str] = []
    if isinstance(bao, dict):
        for key, value in bao.items():
            sub = f"{where}.{key}" if where else key
            if sub in ignore or key in ignore:
                continue
            if key not in ours:
                out.append(f"{sub}: missing here")
            elif key != "request_id":
                out.extend(_shape_diffs(value, ours[key], sub, ignore))
    elif isinstance(bao, list) and bao and ours:
        out.extend(_shape_diffs(bao[0], ours[0], where + "[0]", ignore))
    return out


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-diff-sys") as s:
        s.root = s.token("root")
        yield s


@pytest.fixture(scope="module")
def sides(openbao: OpenBao, ours: Server) -> Iterator[tuple[Side, Side]]:
    ctx = ssl.create_default_context(cafile=str(openbao.ca_cert))
    with httpx.Client(base_url=openbao.url, verify=ctx, timeout=30) as b, \
            httpx.Client(base_url=ours.url, timeout=30) as o:
        yield Side("openbao", b, openbao.root_token), Side("ours", o, ours.root)


def _limited(side: Side) -> None:
    """A token holding d1 and dj (created after those policies exist)."""
    made = side.call("POST", "auth/token/create", {"policies": ["d1", "dj"]}, side.root)
    assert made.status_code == 200, (side.name, made.text)
    side.facts["limited"] = made.json()["auth"]["client_token"]
    side.facts["accessor"] = made.json()["auth"]["accessor"]


def test_sys_endpoints_answer_as_openbao(sides: tuple[Side, Side]) -> None:
    failures: list[str] = []
    for number, step in enumerate(STEPS, 1):
        if step.name.startswith("ttl 1h0m0s"):
            for side in sides:
                _limited(side)
        answers = []
        for side in sides:
            body = step.body(side) if callable(step.body) else step.body
            token = None if step.token == "none" else side.root if step.token == "root" else side.facts[step.token]
            answers.append(side.call(step.method, step.path, body, token))
        there, here = answers
        label = f"step {number} ({step.name}: {step.method} {step.path})"
        if there.status_code != here.status_code:
            failures.append(f"{label}: status {there.status_code} there, {here.status_code} here: {here.text[:200]}")
            continue
        if not there.content or not there.headers.get("content-type", "").startswith("application/json"):
            continue
        b, o = there.json(), here.json()
        if "errors" in b:
            if not (isinstance(o.get("errors"), list) and o["errors"]):
                failures.append(f"{label}: no error message here")
            continue
        failures.extend(f"{label}: {d}" for d in _shape_diffs(b, o, "", step.ignore))
        for dotted in step.same:
            if _get(b, dotted) != _get(o, dotted):
                failures.append(f"{label}: {dotted} = {_get(b, dotted)!r} there, {_get(o, dotted)!r} here")
    assert len(STEPS) >= 40
    assert not failures, "\n".join(failures)
