"""ACL policies: parsing, path normalisation (one test per trick), and the matrix over HTTP."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import httpx
import pytest

from nebula_credential.server.policies import ACL, BadPathError, PolicyError, normalise, parse

from .helpers import dump
from .server_proc import Server, sqlite_serve


def acl(text: str) -> ACL:
    return ACL(parse(text))


# ---- parsing -------------------------------------------------------------------------
def test_parse_reads_vault_hcl() -> None:
    rules = parse('''
        # comment
        path "secret/data/prod/*" { capabilities = ["read", "list"] }
        path "secret/+/x" {
          capabilities = ["deny"]
        }
    ''')
    assert [(r.pattern, sorted(r.capabilities)) for r in rules] == [
        ("secret/data/prod/*", ["list", "read"]), ("secret/+/x", ["deny"])]


@pytest.mark.parametrize("text, message", [
    ('path "a" { capabilities = ["fly"] }', "unknown capability"),
    ('path "a/*/b" { capabilities = ["read"] }', "only allowed at the end"),
    ('path "a/b+/c" { capabilities = ["read"] }', "whole segment"),
    ('path "a" { capabilities = ["read"] allowed_parameters = {} }', "unsupported setting"),
    ('path "a" { capabilities = "read" }', "list of strings"),
    ('key "a" { policy = "write" }', "unsupported policy stanza"),
    ('path "a" { capabilities = ["read"', "not valid HCL"),
    ('path "/a" { capabilities = ["read"] }', "leading slash"),
])
def test_parse_refuses_what_it_would_not_enforce(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse(text)


# ---- matching ---------------------------------------------------------------------------
def test_default_deny_and_exact_match() -> None:
    a = acl('path "secret/data/app" { capabilities = ["read"] }')
    assert a.allows("secret/data/app", "read")
    assert not a.allows("secret/data/app", "update")
    assert not a.allows("secret/data/app2", "read")
    assert not a.allows("secret/data/app/x", "read")
    assert not a.allows("other", "read")


def test_remembered_answers_are_the_rules_answers_past_the_memo_bound() -> None:
    """An ACL remembers each path's capabilities (issue 27: two or three matches per request); past
    its bound it starts again, and every answer stays the rules' own."""
    from nebula_credential.server import policies

    text = ('path "secret/data/*" { capabilities = ["read"] }\n'
            'path "secret/data/x/*" { capabilities = ["deny"] }\n'
            'path "secret/data/+/y" { capabilities = ["update"] }')
    remembered = acl(text)
    paths = [f"secret/data/{'x' if i % 3 == 0 else 'a'}/{'y' if i % 2 else i}" for i in range(policies._MEMO_MAX + 50)]
    for _ in range(2):
        for path in paths:
            fresh = acl(text)
            assert remembered.capabilities(path) == fresh.capabilities(path), path
    assert remembered.allows("secret/data/a/y", "update") and not remembered.allows("secret/data/x/y", "update")
    assert len(remembered._memo) <= policies._MEMO_MAX


def test_glob_is_a_prefix() -> None:
    a = acl('path "secret/data/app*" { capabilities = ["read"] }')
    assert a.allows("secret/data/app", "read") and a.allows("secret/data/app2/x", "read")
    assert not a.allows("secret/data/ap", "read")


def test_plus_is_exactly_one_segment() -> None:
    a = acl('path "secret/data/+/db" { capabilities = ["read"] }')
    assert a.allows("secret/data/team/db", "read")
    assert not a.allows("secret/data/db", "read")
    assert not a.allows("secret/data/a/b/db", "read")


def test_most_specific_pattern_wins_and_deny_overrides() -> None:
    a = acl('''
        path "secret/data/*" { capabilities = ["read"] }
        path "secret/data/app/private" { capabilities = ["deny"] }
        path "secret/data/app/open" { capabilities = ["update"] }
    ''')
    assert a.allows("secret/data/app/x", "read")
    assert not a.allows("secret/data/app/private", "read")
    assert a.allows("secret/data/app/open", "update") and not a.allows("secret/data/app/open", "read")
    # the same pattern in two policies: capabilities merge, and deny among them wins
    merged = ACL(parse('path "s/*" { capabilities = ["read"] }') + parse('path "s/*" { capabilities = ["deny"] }'))
    assert not merged.allows("s/x", "read")


def test_root_has_everything_but_deny() -> None:
    root = ACL([], root=True)
    assert root.allows("anything/at/all", "sudo") and not root.allows("x", "deny")


# ---- normalisation: one test per trick ---------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("secret/data/app", "secret/data/app"),
    ("secret//data///app", "secret/data/app"),          # empty segments
    ("secret/data/app/", "secret/data/app"),            # trailing slash
    ("/secret/data/app", "secret/data/app"),            # leading slash
    ("secret/data/app%2Fdb", "secret/data/app/db"),     # encoded slash decodes to a real separator
    ("secret%2Fdata%2Fapp", "secret/data/app"),
    ("secret/data/%61pp", "secret/data/app"),           # encoded letters
    ("secret/data/app%252Fdb", "secret/data/app%2Fdb"), # decoded exactly once
    ("Secret/Data/App", "Secret/Data/App"),             # case is kept: ids are case-sensitive
])
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", [
    "secret/data/../sys/policies/acl/x",
    "secret/data/%2e%2e/other",
    "secret/data/./app",
    "secret/data/app%00",
    "secret/data/a%0Ab",
    "secret/data/%ff",
])
def test_normalise_refuses(raw: str) -> None:
    with pytest.raises(BadPathError):
        normalise(raw)


# ---- over HTTP ------------------------------------------------------------------------------
POLICIES = {
    "creator": 'path "secret/data/exact" { capabilities = ["create"] }',
    "updater": 'path "secret/data/+/plus" { capabilities = ["update"] }',
    "reader": '''path "secret/data/glob/*" { capabilities = ["read"] }
                 path "secret/data/glob/denied" { capabilities = ["deny"] }''',
    "denier": 'path "secret/data/glob/*" { capabilities = ["deny"] }',
    "deleter": 'path "secret/metadata/del/*" { capabilities = ["delete"] }',
    "lister": 'path "secret/metadata/folder/*" { capabilities = ["list"] }',
    "patcher": 'path "secret/data/glob/*" { capabilities = ["patch"] }',
    "unrelated": 'path "unrelated/*" { capabilities = ["create", "read", "update", "delete", "list"] }',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-acl") as s:
        s.root = s.token("root")
        root = s.http(s.root)
        for name, text in POLICIES.items():  # over HTTP: one CLI process per policy is slow
            assert root.put(f"/v1/sys/policies/acl/{name}", json={"policy": text}).status_code == 204
        for path in ("glob/a", "glob/denied", "team/plus", "del/x", "folder/a"):
            assert root.post(f"/v1/secret/data/{path}", json={"data": {"v": path}}).status_code == 200
        yield s


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, str]:
    with server.http(server.root) as root:
        def create(*policies: str) -> str:
            return str(root.post("/v1/auth/token/create", json={"policies": list(policies)}).json()["auth"][
                "client_token"])

        out = {name: create(name) for name in POLICIES}
        out["reader+denier"] = create("reader", "denier")
        out["nothing"] = create("unrelated")  # a valid token without any grant on the paths below
    return out


def call(server: Server, token: str, method: str, path: str, body: dict[str, object] | None = None) -> int:
    # PATCH needs Vault's merge-patch content type (415 otherwise, as Vault answers)
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
    with server.http(token) as c:
        return c.request(method, f"/v1/{path}", json=body, headers=headers).status_code


# (policy, method, allowed path, denied path, body)
MATRIX = [
    ("reader", "GET", "secret/data/glob/a", "secret/data/other", None),
    ("reader", "GET", "secret/data/glob/a", "secret/data/glob/denied", None),  # deny overrides the glob
    ("updater", "POST", "secret/data/team/plus", "secret/data/a/b/plus", {"data": {"v": 1}}),
    ("creator", "POST", "secret/data/exact", "secret/data/exact2", {"data": {"v": 1}}),
    ("deleter", "DELETE", "secret/metadata/del/x", "secret/metadata/glob/a", None),
    ("lister", "LIST", "secret/metadata/folder", "secret/metadata/glob", None),
    ("patcher", "PATCH", "secret/data/glob/a", "secret/data/team/plus", {"data": {"w": 2}}),
]


@pytest.mark.parametrize("policy, method, allowed, denied, body", MATRIX)
def test_matrix(server: Server, tokens: dict[str, str], policy: str, method: str, allowed: str, denied: str,
                body: dict[str, object] | None) -> None:
    assert call(server, tokens[policy], method, denied, body) == 403
    assert call(server, tokens["nothing"], method, allowed, body) == 403
    assert call(server, tokens[policy], method, allowed, body) in (200, 204)


def test_deny_in_another_policy_overrides(server: Server, tokens: dict[str, str]) -> None:
    assert call(server, tokens["reader"], "GET", "secret/data/glob/a") == 200
    assert call(server, tokens["reader+denier"], "GET", "secret/data/glob/a") == 403


def test_create_is_not_update(server: Server, tokens: dict[str, str]) -> None:
    assert call(server, server.root, "POST", "secret/data/exact", {"data": {"v": 1}}) == 200
    # "creator" may create secret/data/exact once it is gone, but never overwrite it
    assert call(server, tokens["creator"], "POST", "secret/data/exact", {"data": {"v": 2}}) == 403
    # "updater" may overwrite team/plus but not create a new path under the same pattern
    assert call(server, tokens["updater"], "POST", "secret/data/new/plus", {"data": {"v": 2}}) == 403


@pytest.mark.parametrize("raw", [
    "/v1/secret/data/glob/../other",
    "/v1/secret/data/glob/%2e%2e/other",
    "/v1/secret/data/glob/%2E%2E/denied/..",
])
def test_dot_segments_are_refused_over_http(server: Server, tokens: dict[str, str], raw: str) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # sends the path as written
    conn.request("GET", raw, headers={"X-Vault-Token": tokens["reader"]})
    assert conn.getresponse().status == 400
    conn.close()


@pytest.mark.parametrize("raw, status", [
    ("/v1/secret//data//glob/a", 200),      # normalised, then allowed
    ("/v1/secret/data/glob%2Fa", 200),      # the same secret as glob/a
    ("/v1/secret/data/glob/denied/", 403),  # a trailing slash does not escape the deny
    ("/v1/secret/data//glob//denied", 403),
    ("/v1/secret/data/glob%2Fdenied", 403), # nor does an encoded slash
    ("/v1/secret/data/glob/%64enied", 403), # nor an encoded letter
    ("/v1/SECRET/data/glob/a", 404),        # no such mount: case is significant
])
def test_path_tricks_over_http(server: Server, tokens: dict[str, str], raw: str, status: int) -> None:
    with httpx.Client(headers={"X-Vault-Token": tokens["reader"]}) as c:
        assert c.send(c.build_request("GET", server.url + raw)).status_code == status


def test_denied_writes_change_nothing_and_are_audited(server: Server, tokens: dict[str, str]) -> None:
    db = server.folder / "store.db"
    before = [line for line in dump(db) if "audit" not in line]
    assert call(server, tokens["reader"], "POST", "secret/data/glob/a", {"data": {"evil": 1}}) == 403
    assert call(server, tokens["reader"], "DELETE", "secret/metadata/glob/a") == 403
    assert call(server, tokens["reader"], "PUT", "sys/policies/acl/reader",
                {"policy": 'path "*" { capabilities = ["sudo"] }'}) == 403
    assert [line for line in dump(db) if "audit" not in line] == before
    out = server.cli("--json", "audit", "list", "--limit", "50")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    accessor = json.loads(server.cli("--json", "token", "list").stdout)["tokens"]
    reader = {t["accessor"] for t in accessor if t["policies"] == ["default", "reader"]}  # Vault attaches default
    denied = [e for e in events if e["action"] == "server.denied"]
    assert denied and {e["details"]["accessor"] for e in denied[-3:]} <= reader
    assert all(e["outcome"] == "denied" for e in denied)
    text = out.stdout + server.log() + "\n".join(dump(db))
    assert not any(secret in text for secret in tokens.values())
