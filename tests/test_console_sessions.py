"""Issue 28 items 4, 5 and 8 on a real ``nebula-credential serve``.

* 4: a KV keyring and a Transit key of the same name are different objects
  with different policy paths; a capability on the Transit key ``default``
  never rotates the KV keyring ``default`` from the console.
* 5: lowering a Transit key's ``min_decryption_version`` to a revoked version
  needs the reinstate capability, and is audited as a reinstate.
* 8: the console cookie holds a session (a child token) that logout revokes;
  failed logins are audited and rate-limited; Host is checked before any
  redirect, which is relative; the Origin check compares the scheme; HSTS
  over TLS.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.console import Principal, create_console

from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "console-sessions") as s:
        yield s


def policy(server: Server, name: str, hcl: str) -> None:
    with server.http(server.token("root")) as http:
        r = http.put(f"/v1/sys/policies/acl/{name}", json={"policy": hcl})
        assert r.status_code in (200, 204), r.text


def login(server: Server, token: str) -> tuple[httpx.Client, str, str]:
    """(client with the session cookie, the cookie's value, the CSRF value of the session)."""
    c = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    r = c.post("/ui/login", data={"token": token})
    assert r.status_code == 303, r.text
    match = re.search(r"nc_console=([^;]+)", r.headers["set-cookie"])
    assert match
    cookie = match.group(1)
    c.headers["cookie"] = f"nc_console={cookie}"
    page = c.get("/ui/")
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert csrf
    return c, cookie, csrf.group(1)


def audit(server: Server, action: str) -> list[dict[str, Any]]:
    out = server.cli("--json", "audit", "list", "--all-keyrings", "--limit", "1000", "--action", action)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def kv_versions(server: Server) -> int:
    return len(json.loads(server.cli("--json", "keys", "list").stdout)["versions"])


# ---- 4: KV keyrings and Transit keys ----------------------------------------------------------
def test_a_transit_key_capability_never_acts_on_the_kv_keyring_of_the_same_name(server: Server) -> None:
    with server.http(server.token("root")) as http:
        assert http.post("/v1/transit/keys/default").status_code in (200, 204)
    policy(server, "transit-default", 'path "transit/keys/default" { capabilities = ["read"] }\n'
                                      'path "transit/keys/default/rotate" { capabilities = ["update"] }\n')
    before = kv_versions(server)
    c, _, csrf = login(server, server.token("transit-default"))
    assert c.get("/ui/keyrings/default").status_code == 403  # the KV keyring is not the Transit key
    r = c.post("/ui/keyrings/default/actions/rotate", data={"csrf": csrf, "confirm": "default"})
    assert r.status_code == 403
    assert kv_versions(server) == before
    # the KV keyring's own path does it
    policy(server, "kv-default", 'path "sys/nebula/keyrings/default" { capabilities = ["read"] }\n'
                                 'path "sys/nebula/keyrings/default/rotate" { capabilities = ["update"] }\n')
    c, _, csrf = login(server, server.token("kv-default"))
    assert "confirm?action=rotate" in c.get("/ui/keyrings/default").text
    r = c.post("/ui/keyrings/default/actions/rotate", data={"csrf": csrf, "confirm": "default"})
    assert r.status_code == 303, r.text
    assert kv_versions(server) == before + 1
    with server.http(server.token("root")) as http:  # and the Transit key was not touched
        assert http.get("/v1/transit/keys/default").json()["data"]["latest_version"] == 1


# ---- 5: Transit config cannot undo a revocation --------------------------------------------------
def test_lowering_min_decryption_version_to_a_revoked_version_needs_the_reinstate_capability(
        server: Server) -> None:
    with server.http(server.token("root")) as root:
        assert root.post("/v1/transit/keys/k5").status_code in (200, 204)
        old = root.post("/v1/transit/encrypt/k5", json={"plaintext": base64.b64encode(b"v1").decode()})
        ciphertext = old.json()["data"]["ciphertext"]
        for _ in range(2):
            assert root.post("/v1/transit/keys/k5/rotate").status_code == 200
        assert root.post("/v1/transit/keys/k5/config", json={"min_decryption_version": 3}).status_code == 200
        assert root.post("/v1/transit/decrypt/k5", json={"ciphertext": ciphertext}).status_code == 400
    policy(server, "k5-config", 'path "transit/keys/k5" { capabilities = ["read"] }\n'
                                'path "transit/keys/k5/config" { capabilities = ["update"] }\n')
    with server.http(server.token("k5-config")) as http:
        r = http.post("/v1/transit/keys/k5/config", json={"min_decryption_version": 1})
        assert r.status_code == 403, r.text
        assert "reinstate" in r.json()["errors"][0]
        assert http.post("/v1/transit/keys/k5/config", json={"deletion_allowed": False}).status_code == 200
        assert http.get("/v1/transit/keys/k5").json()["data"]["min_decryption_version"] == 3
    with server.http(server.token("root")) as root:
        assert root.post("/v1/transit/decrypt/k5", json={"ciphertext": ciphertext}).status_code == 400
    policy(server, "k5-reinstate", 'path "transit/keys/k5" { capabilities = ["read"] }\n'
                                   'path "transit/keys/k5/config" { capabilities = ["update"] }\n'
                                   'path "sys/nebula/transit/transit/keys/k5/reinstate" '
                                   '{ capabilities = ["update"] }\n')
    with server.http(server.token("k5-reinstate")) as http:
        r = http.post("/v1/transit/keys/k5/config", json={"min_decryption_version": 1})
        assert r.status_code == 200, r.text
    with server.http(server.token("root")) as root:
        plain = root.post("/v1/transit/decrypt/k5", json={"ciphertext": ciphertext}).json()["data"]["plaintext"]
        assert base64.b64decode(plain) == b"v1"
    reinstated = {e["version"] for e in audit(server, "key.reinstate") if (e["keyring"] or "").endswith("k5")}
    assert reinstated == {1, 2}


# ---- 8: sessions ------------------------------------------------------------------------------
def test_the_cookie_holds_a_session_that_logout_revokes(server: Server) -> None:
    root = server.token("root")
    c, cookie, csrf = login(server, root)
    assert cookie != root and root not in c.get("/ui/").text
    with server.http(cookie) as http:  # the session is a child token of the one logged in with
        assert http.get("/v1/auth/token/lookup-self").status_code == 200
    logins = [e for e in audit(server, "console.login") if e["outcome"] == "ok"]
    assert logins and "session_accessor" in logins[-1]["details"]
    r = c.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    # the old cookie opens nothing any more, in the console at once, in the API within
    # [server] cache_ttl (2 s: the bound on any revocation made through another token cache)
    assert c.get("/ui/").status_code == 303
    assert api_refuses(server, cookie)
    with server.http(root) as http:  # the token logged in with is untouched
        assert http.get("/v1/auth/token/lookup-self").status_code == 200
    assert audit(server, "console.logout")
    # a raw API token in the cookie is not a session
    raw = httpx.get(f"{server.url}/ui/", headers={"cookie": f"nc_console={root}"}, timeout=30)
    assert raw.status_code == 303


def test_a_session_dies_with_the_token_it_was_opened_with(server: Server) -> None:
    token = server.token("root")
    c, cookie, _ = login(server, token)
    with server.http(token) as http:
        assert http.post("/v1/auth/token/revoke-self").status_code == 204
    assert api_refuses(server, cookie)
    assert within_cache_ttl(lambda: c.get("/ui/").status_code == 303)


def within_cache_ttl(check: Callable[[], bool]) -> bool:
    """Whether ``check`` holds within a token cache's lifetime ([server] cache_ttl, 2 s), polled."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def api_refuses(server: Server, token: str) -> bool:
    with server.http(token) as http:
        return within_cache_ttl(lambda: http.get("/v1/auth/token/lookup-self").status_code == 403)


def test_host_is_checked_before_any_redirect_and_redirects_are_relative(server: Server) -> None:
    for path in ("/", "/ui"):
        r = httpx.get(f"{server.url}{path}", timeout=30, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/", (path, r.headers)
        evil = httpx.get(f"{server.url}{path}", headers={"host": "evil.example"}, timeout=30,
                         follow_redirects=False)
        assert evil.status_code == 400 and "location" not in evil.headers
    port = server.url.rsplit(":", 1)[1]
    assert httpx.get(f"{server.url}/ui/login", headers={"host": f"localhost:{port}"}, timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/ui/login", headers={"host": "evil.example"}, timeout=30).status_code == 400


def test_the_origin_check_compares_the_scheme(server: Server) -> None:
    token = server.token("root")
    other_scheme = server.url.replace("http://", "https://")
    r = httpx.post(f"{server.url}/ui/login", data={"token": token}, headers={"origin": other_scheme}, timeout=30)
    assert r.status_code == 403
    r = httpx.post(f"{server.url}/ui/login", data={"token": token}, headers={"origin": server.url}, timeout=30)
    assert r.status_code == 303


def test_failed_logins_are_audited_and_rate_limited(server: Server) -> None:
    """Last in this module: it spends the loopback address's budget of failed logins."""
    before = len([e for e in audit(server, "console.login") if e["outcome"] == "denied"])
    statuses = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(300):
            statuses.append(c.post("/ui/login", data={"token": f"ncs.wrong-{i}"}).status_code)
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429 and int(c.post("/ui/login", data={"token": "x"}).headers["retry-after"]) >= 1
    denied = len([e for e in audit(server, "console.login") if e["outcome"] == "denied"])
    assert denied - before == statuses.count(403) > 0  # each failure audited; the 429s are not


# ---- HSTS (no TLS server needed: the scheme of the request decides) ------------------------------
def test_hsts_over_tls_only(tmp_path: Path) -> None:
    with nc.open(f"sqlite:///{tmp_path / 'h.db'}", create=True) as vault:
        app = Starlette(routes=[Mount("/ui", app=create_console(vault, lambda t: Principal("x", lambda c, p: True)))])
        https = TestClient(app, base_url="https://console.test").get("/ui/login")
        plain = TestClient(app, base_url="http://console.test").get("/ui/login")
    assert https.headers["strict-transport-security"].startswith("max-age=")
    assert "strict-transport-security" not in plain.headers
