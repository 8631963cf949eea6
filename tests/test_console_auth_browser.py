"""The console's username login and auth methods page in a real browser (Debian's chromium through
Selenium and chromium-driver), against a real ``nebula-credential serve``.

A person logs in with a username and password (the server's userpass login),
sees the auth methods and the users their policy lets them list, and logs out,
which ends the session and the login's token; a wrong password is refused on
the page.  No page breaks the strict Content-Security-Policy.  Screenshots go to
$NEBULA_SCREENSHOTS when set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server_proc import Server, sqlite_serve
from .test_console_browser import browser, csp_violations, shoot, shots, wait  # noqa: F401 - fixtures

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

PASSWORD = "a long and memorable one"
POLICY = ('path "sys/auth" { capabilities = ["read"] }\n'
          'path "auth/people/users/" { capabilities = ["list"] }\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "console-auth-browser") as s:
        s.root = s.token("root")
        with s.http(s.root) as http:
            assert http.post("/v1/sys/auth/people", json={"type": "userpass", "description": "staff"}).status_code == 204
            assert http.post("/v1/sys/auth/machines", json={"type": "approle"}).status_code == 204
            assert http.put("/v1/sys/policies/acl/auth-reader", json={"policy": POLICY}).status_code == 204
            for user in ("grace", "heidi"):
                assert http.post(f"/v1/auth/people/users/{user}", json={
                    "password": PASSWORD, "token_policies": ["auth-reader"]}).status_code == 204
            assert http.post("/v1/auth/machines/role/batch", json={"token_policies": ["default"]}).status_code == 204
        yield s


def _base(server: Server) -> str:
    return server.url.replace("127.0.0.1", "localhost") + "/ui"


def _username_login(d: Any, base: str, user: str, password: str) -> None:
    d.delete_all_cookies()
    d.get(f"{base}/login")
    form = d.find_element(By.ID, "userpass")
    form.find_element(By.ID, "username").send_keys(user)
    form.find_element(By.ID, "password").send_keys(password)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_username_login_and_auth_page_in_chromium(server: Server, browser: Any, shots: Path) -> None:  # noqa: F811
    d, base = browser, _base(server)
    d.get_log("browser")  # drop what other tests left

    # -- a wrong password: refused on the page, no cookie -----------------------------------------
    _username_login(d, base, "grace", "not it")
    wait(d, lambda d: "Unknown username or wrong password." in d.page_source)
    assert d.get_cookie("nc_console") is None
    shoot(d, shots, "login-username")

    # -- the right one: a session cookie (HttpOnly, SameSite=Strict), never the login's token ----
    _username_login(d, base, "Grace", PASSWORD)  # Vault folds usernames to lower case
    wait(d, lambda d: d.current_url.endswith("/ui/"))
    cookie = d.get_cookie("nc_console")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert d.execute_script("return document.cookie") == ""
    assert "people-grace" in d.find_element(By.CSS_SELECTOR, "header .who").text
    session = cookie["value"]

    # -- the auth page through the nav: mounts, and the users grace's policy may list ------------
    d.find_element(By.LINK_TEXT, "Auth methods").click()
    wait(d, lambda d: d.current_url.endswith("/ui/auth"))
    cards = {c.get_attribute("data-mount"): c.text for c in d.find_elements(By.CSS_SELECTOR, "section.auth-mount")}
    assert set(cards) == {"people", "machines", "token"}
    assert "grace" in cards["people"] and "heidi" in cards["people"] and "2 users" in cards["people"]
    assert "staff" in cards["people"]
    assert "batch" not in cards["machines"] and "may not list the roles" in cards["machines"]
    shoot(d, shots, "auth-methods")
    assert csp_violations(d) == []

    # -- logout: the session and the login's token end -------------------------------------------
    d.find_element(By.CSS_SELECTOR, "form.logout button[type=submit]").click()
    wait(d, lambda d: d.current_url.endswith("/ui/login"))
    d.get(f"{base}/auth")
    wait(d, lambda d: d.current_url.endswith("/ui/login"))
    with server.http(session) as http:
        assert wait(d, lambda _: http.get("/v1/auth/token/lookup-self").status_code == 403, timeout=10)
    with server.http(server.root) as http:
        tokens = http.request("LIST", "/v1/auth/token/accessors").json()["data"]["keys"]
        names = [http.post("/v1/auth/token/lookup-accessor", json={"accessor": a}).json()["data"]["display_name"]
                 for a in tokens]
    assert "people-grace" not in names
    assert csp_violations(d) == []
