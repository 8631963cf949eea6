"""The console's auth methods page and username login, on a real ``nebula-credential serve``.

* The auth page lists the enabled methods and, where the token's ACL allows
  the same ``LIST`` on the API, their roles and users; without ``read`` on
  ``sys/auth`` the page is refused and not linked.
* A username login is the API's own userpass login (its audit event, failure
  budget and CIDR check), and opens the same kind of session as a token: the
  cookie holds a child token, never the login's token; logout revokes both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .server_proc import Server, sqlite_serve
from .test_console_sessions import api_refuses, login

READER = ('path "sys/auth" { capabilities = ["read"] }\n'
          'path "auth/people/users/" { capabilities = ["list"] }\n')
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "console-auth") as s:
        s.root = s.token("root")
        with s.http(s.root) as http:
            for path, kind in (("people", "userpass"), ("machines", "approle")):
                assert http.post(f"/v1/sys/auth/{path}", json={"type": kind}).status_code == 204
            assert http.put("/v1/sys/policies/acl/auth-reader", json={"policy": READER}).status_code == 204
            for user, blocks in (("alice", []), ("eve", []), ("mallory", ["10.0.0.0/8"])):
                r = http.post(f"/v1/auth/people/users/{user}", json={
                    "password": PASSWORD, "token_policies": ["auth-reader"], "token_bound_cidrs": blocks})
                assert r.status_code == 204, r.text
            assert http.post("/v1/auth/machines/role/web", json={"token_policies": ["default"]}).status_code == 204
        yield s


def audit(server: Server, action: str) -> list[dict[str, Any]]:
    out = server.cli("--json", "audit", "list", "--all-keyrings", "--limit", "1000", "--action", action)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def password_login(server: Server, user: str, password: str = PASSWORD, **extra: str) -> httpx.Response:
    return httpx.post(f"{server.url}/ui/login/userpass", data={"mount": "people", "username": user,
                                                               "password": password, **extra},
                      timeout=60, follow_redirects=False)


def cookie_of(response: httpx.Response) -> str:
    match = re.search(r"nc_console=([^;]+)", response.headers.get("set-cookie", ""))
    assert match, response.text
    return match.group(1)


def test_the_login_page_offers_the_username_form(server: Server) -> None:
    page = httpx.get(f"{server.url}/ui/login", timeout=30).text
    assert 'action="/ui/login/userpass"' in page and 'name="password"' in page and 'name="token"' in page
    assert 'value="people"' in page


def test_a_username_login_opens_a_child_token_session_that_logout_revokes_with_the_login_token(
        server: Server) -> None:
    r = password_login(server, "alice")
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    cookie = cookie_of(r)
    with server.http(cookie) as http:  # the cookie is a session token: a child of alice's login token
        me = http.get("/v1/auth/token/lookup-self").json()["data"]
    assert me["meta"]["nebula_console"] == "session" and "auth-reader" in me["policies"]
    with server.http(server.root) as http:
        parent = http.post("/v1/auth/token/lookup-accessor", json={"accessor": _parent(server, cookie)}).json()
    assert parent["data"]["display_name"] == "people-alice" and parent["data"]["path"] == "auth/people/login/alice"
    logins = [e for e in audit(server, "auth.login") if e["details"].get("user") == "alice"]
    assert logins[-1]["outcome"] == "ok" and logins[-1]["details"]["method"] == "userpass"
    assert logins[-1]["details"]["source"] == "127.0.0.1"
    opened = [e for e in audit(server, "console.login") if e["details"].get("user") == "alice"]
    assert opened and opened[-1]["details"]["method"] == "userpass" and opened[-1]["outcome"] == "ok"
    # logout: the session and the login's token are both gone
    c = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False, headers={"cookie": f"nc_console={cookie}"})
    page = c.get("/ui/").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert csrf
    assert c.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
    assert c.get("/ui/").status_code == 303
    assert api_refuses(server, cookie)
    with server.http(server.root) as http:
        accessor = parent["data"]["accessor"]
        assert http.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor}).status_code == 400
    assert PASSWORD not in json.dumps(audit(server, "auth.login"))


def _parent(server: Server, session: str) -> str:
    with server.http(server.root) as http:
        accessor = None
        with server.http(session) as me:
            accessor = me.get("/v1/auth/token/lookup-self").json()["data"]["accessor"]
        for candidate in http.request("LIST", "/v1/auth/token/accessors").json()["data"]["keys"]:
            found = http.post("/v1/auth/token/lookup-accessor", json={"accessor": candidate}).json()["data"]
            if found["display_name"] == "people-alice" and candidate != accessor:
                return str(candidate)
    raise AssertionError("no login token")


def test_failed_username_logins_are_audited_and_rate_limited_by_the_api(server: Server) -> None:
    r = password_login(server, "eve", "wrong")
    assert r.status_code == 403 and "Unknown username or wrong password." in r.text
    assert "set-cookie" not in r.headers
    failed = [e for e in audit(server, "auth.login") if e["details"].get("user") == "eve"]
    assert failed and failed[-1]["outcome"] == "error" and failed[-1]["details"]["mount"] == "auth/people"
    codes: list[int] = []
    while len(codes) < 40 and 429 not in codes:  # 10 failures, then one per 5 s (each argon2id check takes time)
        codes.append(password_login(server, "eve", "wrong").status_code)
    assert codes[-1] == 429 and set(codes[:-1]) == {403} and len(codes) >= 10, codes
    limited = password_login(server, "eve")  # even the right password waits out the budget
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "Too many failed logins" in limited.text
    assert any(e["outcome"] == "limited" for e in audit(server, "auth.login") if e["details"].get("user") == "eve")
    with server.http() as http:  # the same budget as the API's own login
        assert http.post("/v1/auth/people/login/eve", json={"password": PASSWORD}).status_code == 429


def test_a_user_bound_to_other_networks_cannot_log_in_here(server: Server) -> None:
    r = password_login(server, "mallory")
    assert r.status_code == 403 and "may not log in from this address" in r.text


def test_bad_form_values_never_reach_the_server(server: Server) -> None:
    before = len(audit(server, "auth.login"))
    assert password_login(server, "../../sys/seal").status_code == 403
    assert password_login(server, "alice", mount="machines").status_code == 403  # not a userpass mount
    assert len(audit(server, "auth.login")) == before


def test_a_cross_site_username_login_is_refused(server: Server) -> None:
    r = httpx.post(f"{server.url}/ui/login/userpass", data={"mount": "people", "username": "alice",
                                                            "password": PASSWORD},
                   headers={"origin": "https://evil.example"}, timeout=30, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_the_auth_page_lists_what_the_acl_allows(server: Server) -> None:
    c, _, _ = login(server, server.root)
    page = c.get("/ui/auth")
    assert page.status_code == 200
    assert "auth/people/" in page.text and "auth/machines/" in page.text and "auth/token/" in page.text
    for name in ("alice", "eve", "mallory", "web"):
        assert f"<code>{name}</code>" in page.text
    assert 'href="/ui/auth"' in c.get("/ui/").text
    # alice's policy reads sys/auth and lists people's users, not machines' roles
    alice = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False,
                         headers={"cookie": f"nc_console={cookie_of(password_login(server, 'alice'))}"})
    page = alice.get("/ui/auth")
    assert page.status_code == 200
    assert "<code>alice</code>" in page.text and "<code>web</code>" not in page.text
    assert "may not list the roles" in page.text and "auth/machines/role/" in page.text
    # a token without read on sys/auth: no link, and the page is refused
    plain, _, _ = login(server, server.token("default"))
    assert 'href="/ui/auth"' not in plain.get("/ui/").text
    assert plain.get("/ui/auth").status_code == 403


def test_a_pasted_token_bound_to_other_networks_opens_no_session(server: Server) -> None:
    with server.http(server.root) as http:
        assert http.post("/v1/auth/token/roles/far", json={"allowed_policies": ["auth-reader"],
                                                           "token_bound_cidrs": ["10.0.0.0/8"]}).status_code == 204
        far = http.post("/v1/auth/token/create/far", json={}).json()["auth"]["client_token"]
    r = httpx.post(f"{server.url}/ui/login", data={"token": far}, timeout=30, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_a_session_keeps_its_tokens_bound_cidrs(sqlite_url: str) -> None:
    """In process: the session child of a bound token is bound too, and checked on every page."""
    import nebula_credential as nc
    from nebula_credential.config import KeyManagementConfig
    from nebula_credential.server.compose import TokenSessions

    vault = nc.open(sqlite_url, create=True)
    try:
        sessions = TokenSessions(vault, KeyManagementConfig())
        token, _ = sessions.access.tokens.create(["root"], bound_cidrs=["127.0.0.0/8"])
        assert sessions.open(token, "10.1.2.3") is None  # the token itself, from elsewhere
        opened = sessions.open(token, "127.0.0.1")
        assert opened is not None
        secret = opened[0]
        assert sessions.check(secret, "127.0.0.1") is not None
        assert sessions.check(secret, "10.1.2.3") is None
        assert sessions.access.tokens.lookup(secret).bound_cidrs == ("127.0.0.0/8",)  # type: ignore[union-attr]
    finally:
        vault.close()
