"""The console's HTTP surface without a browser: who may do what, and how it refuses.

Real store, real Starlette app over ASGI (httpx's transport); the browser test
(test_console_browser.py) covers the same pages in Chromium.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.console import NEEDS, Principal, create_console

ROOT = "root-token-for-console-tests"
READER = "read-token-for-console-tests"
REVOKED: set[str] = set()


def authorize(token: str) -> Principal | None:
    if token in REVOKED:
        return None
    if token == ROOT:
        return Principal("root", lambda capability, path: True)
    if token == READER:
        return Principal("reader", lambda capability, path: capability == "read"
                         and path.startswith(("transit/", "sys/nebula/keyrings/")))
    return None


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Any]:
    v = nc.open(f"sqlite:///{tmp_path / 'c.db'}", create=True)
    v.put_many((f"c{i}", {"i": i}, "production" if i % 2 else "user", None) for i in range(30))
    v.keys.rotate()
    try:
        yield v
    finally:
        REVOKED.clear()
        v.close()


def client(vault: Any, token: str | None = None) -> TestClient:
    app = Starlette(routes=[Mount("/ui", app=create_console(vault, authorize))])
    c = TestClient(app, base_url="https://console.test", follow_redirects=False)
    if token is not None:
        r = c.post("/ui/login", data={"token": token})
        assert r.status_code == 303, r.text
    return c


def csrf_of(c: TestClient, path: str = "/ui/keyrings/default") -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', c.get(path).text)
    assert match
    return match.group(1)


def test_login_sets_a_strict_httponly_secure_cookie_and_nothing_else_carries_the_token(vault: Any) -> None:
    c = client(vault)
    assert c.get("/ui/").headers["location"] == "/ui/login"
    r = c.post("/ui/login", data={"token": ROOT})
    cookie = r.headers["set-cookie"]
    for part in ("HttpOnly", "Secure", "SameSite=strict", "Path=/ui"):
        assert part in cookie
    assert r.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/keyrings/default", "/ui/alerts", "/ui/health", "/ui/keyrings/default/progress",
                 "/ui/keyrings/default/timeline.json", "/ui/keyrings/default/confirm?action=rotate"):
        page = c.get(path)
        assert page.status_code == 200, path
        assert ROOT not in page.text, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "'unsafe-inline'" not in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


def test_a_wrong_or_revoked_token_gets_no_page(vault: Any) -> None:
    c = client(vault)
    r = c.post("/ui/login", data={"token": "guess"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    c = client(vault, ROOT)
    REVOKED.add(ROOT)  # revoked on the server after login: the next request is refused
    assert c.get("/ui/").status_code == 303
    r = c.get("/ui/keyrings/default/progress", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/ui/login"


def test_every_action_needs_the_csrf_value_the_same_origin_and_the_named_confirmation(vault: Any) -> None:
    c = client(vault, ROOT)
    csrf = csrf_of(c)
    post = "/ui/keyrings/default/actions/rotate"
    assert c.post(post, data={"confirm": "default"}).status_code == 403
    assert c.post(post, data={"csrf": "0" * 64, "confirm": "default"}).status_code == 403
    assert c.post(post, data={"csrf": csrf, "confirm": "default"},
                  headers={"origin": "https://evil.example"}).status_code == 403
    assert c.post(post, data={"csrf": csrf, "confirm": "default"},
                  headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert c.post(post, data={"csrf": csrf, "confirm": "other"}).status_code == 400
    assert c.post("/ui/logout", data={}).status_code == 403
    assert vault.status()["active_version"] == 2  # nothing happened
    r = c.post(post, data={"csrf": csrf, "confirm": "default"}, headers={"origin": "https://console.test"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/keyrings/default?done=rotate&version=3"
    assert vault.status()["active_version"] == 3


def test_revoke_and_reinstate_name_the_version_and_destroy_is_not_offered(vault: Any) -> None:
    c = client(vault, ROOT)
    csrf = csrf_of(c)
    page = c.get("/ui/keyrings/default/confirm?action=revoke&version=1").text
    assert "Revoke version v1 of keyring default?" in page and 'name="confirm" value="default/v1"' in page
    base = "/ui/keyrings/default/actions"
    assert c.post(f"{base}/revoke", data={"csrf": csrf, "confirm": "default/v2", "version": "1"}).status_code == 400
    assert c.post(f"{base}/revoke", data={"csrf": csrf, "confirm": "default/v1", "version": "1"}).status_code == 303
    assert vault.keys.list()[0].status.value == "revoked"
    # a refused lifecycle step is a 409 with the typed error, never a 500
    r = c.post(f"{base}/revoke", data={"csrf": csrf, "confirm": "default/v2", "version": "2"})
    assert r.status_code == 409 and "PolicyViolationError" in r.text
    assert c.post(f"{base}/reinstate", data={"csrf": csrf, "confirm": "default/v1", "version": "1"}).status_code == 303
    assert vault.keys.list()[0].status.value == "valid"
    assert c.post(f"{base}/destroy", data={"csrf": csrf, "confirm": "default/v1", "version": "1"}).status_code == 400
    assert c.get("/ui/keyrings/default/confirm?action=destroy&version=1").status_code == 400
    assert c.post(f"{base}/revoke", data={"csrf": csrf, "confirm": "default/v", "version": "x"}).status_code == 400


def test_read_only_token_sees_no_action_and_is_refused(vault: Any) -> None:
    c = client(vault, READER)
    page = c.get("/ui/keyrings/default").text
    assert "confirm?action=" not in page and "Rotate" not in page
    csrf = csrf_of(c)
    for action, form in (("rotate", {}), ("reencrypt", {}), ("revoke", {"version": "1"})):
        confirm = "default" + (f"/v{form['version']}" if form else "")
        r = c.post(f"/ui/keyrings/default/actions/{action}", data={"csrf": csrf, "confirm": confirm, **form})
        assert r.status_code == 403, action
    assert c.get("/ui/keyrings/default/confirm?action=rotate").status_code == 403
    assert c.get("/ui/health").status_code == 403  # no read on sys/nebula/audit
    assert "Health" not in c.get("/ui/").text
    assert vault.status()["active_version"] == 2


def test_keyrings_outside_the_policy_are_invisible(vault: Any) -> None:
    vault.keyring("secret-team").keys.initialize()

    def only_default(token: str) -> Principal | None:
        return Principal("scoped", lambda cap, path: path == NEEDS["view"][1].format(keyring="default"))

    app = Starlette(routes=[Mount("/ui", app=create_console(vault, only_default))])
    c = TestClient(app, base_url="https://console.test", follow_redirects=False)
    c.post("/ui/login", data={"token": "any"})
    assert "secret-team" not in c.get("/ui/").text
    assert c.get("/ui/keyrings/secret-team").status_code == 403
    assert c.get("/ui/keyrings/secret-team/timeline.json").status_code == 403
    assert c.get("/ui/keyrings/nope").status_code == 403


def test_names_from_the_store_are_escaped(vault: Any) -> None:
    vault.keyring("evil").keys.initialize()
    with vault.store.transaction() as tx:  # the library refuses such a name; a database writer does not
        tx._exec("UPDATE key_versions SET keyring = ? WHERE keyring = ?", ("<img src=x onerror=alert(1)>", "evil"))
    c = client(vault, ROOT)
    assert c.get("/ui/keyrings/nope").status_code == 404
    page = c.get("/ui/").text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_reencryption_started_from_the_console_reaches_100_percent(vault: Any) -> None:
    c = client(vault, ROOT)
    csrf = csrf_of(c)
    r = c.post("/ui/keyrings/default/actions/reencrypt", data={"csrf": csrf, "confirm": "default"})
    assert r.status_code == 303
    for _ in range(3000):  # the pass runs in a thread: poll as the page does
        fragment = c.get("/ui/keyrings/default/progress?running=1")
        if fragment.headers.get("HX-Refresh") == "true":
            break
        time.sleep(0.01)
    else:
        pytest.fail("the pass did not finish")
    fragment = c.get("/ui/keyrings/default/progress").text
    assert "30 of 30 under v2" in fragment and "finished: 30 re-encrypted" in fragment
    assert "hx-trigger" not in fragment  # nothing pending, nothing running: polling stops
    timeline = c.get("/ui/keyrings/default/timeline.json").json()
    assert [v["status"] for v in timeline["versions"]] == ["valid", "active"]
    assert len(timeline["rotations"]) == 1


def test_a_transit_keyrings_pages_answer_under_its_slashed_name(vault: Any) -> None:
    from nebula_credential.transit import Transit

    Transit(vault).create_key("orders")
    c = client(vault, ROOT)
    assert 'href="/ui/keyrings/transit/orders"' in c.get("/ui/").text
    page = c.get("/ui/keyrings/transit/orders")
    assert page.status_code == 200 and "transit/orders" in page.text
    for sub in ("progress", "timeline.json", "confirm?action=rotate"):
        assert c.get(f"/ui/keyrings/transit/orders/{sub}").status_code == 200, sub
    assert json.loads(c.get("/ui/keyrings/transit/orders/timeline.json").text)["keyring"] == "transit/orders"
    r = c.post("/ui/keyrings/transit/orders/actions/rotate",
               data={"csrf": csrf_of(c, "/ui/keyrings/transit/orders"), "confirm": "transit/orders"})
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/keyrings/transit/orders?done=rotate")
    assert c.get("/ui/keyrings/default/progress").status_code == 200  # a plain keyring's sub-pages still route


def test_reencryption_progress_lists_scopes_in_priority_order_then_alphabetically(tmp_path: Path) -> None:
    v = nc.open(f"sqlite:///{tmp_path / 'p.db'}", create=True)
    try:
        scopes = ("zeta", "alpha", "development", "user", "production")
        v.put_many((f"c{i}", {"i": i}, scope, None) for i, scope in enumerate(scopes))
        v.keys.rotate()
        page = client(v, ROOT).get("/ui/keyrings/default/progress").text
        assert re.findall(r'data-scope="([^"]+)"', page) == ["production", "user", "development", "alpha", "zeta"]
    finally:
        v.close()
