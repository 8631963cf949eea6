"""The console in a real browser: Debian's chromium driven by Selenium (chromium-driver).

One operator story against a real store served by granian (as ``daemon --ui``): log in, read the
overview with a planted alert, rotate, re-encrypt 20,000 credentials and watch
the live progress reach 100 %, read health and audit; then a read-only token
sees no action and is refused when it posts anyway.  Every page is checked for
Content-Security-Policy violations (the pages must work under the strict CSP).
Screenshots go to $NEBULA_SCREENSHOTS (``make docs-screenshots``: docs/img/).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential._http import EmbeddedServer
from nebula_credential.console import Principal, create_console

from .helpers import FakeClock, free_port

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("granian")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT_TOKEN = "console-test-root-token"
READ_TOKEN = "console-test-read-token"
ROWS = 20_000


def _principal(token: str) -> Principal | None:
    if token == ROOT_TOKEN:
        return Principal("operator (root)", lambda capability, path: True)
    if token == READ_TOKEN:
        return Principal("auditor (read-only)", lambda capability, path: capability == "read")
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, FakeClock]]:
    """A store with three keyrings and some history, its console on a free port."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    clock = FakeClock()
    folder = tmp_path_factory.mktemp("console")
    vault = nc.open(f"sqlite:///{folder / 'console.db'}", create=True, clock=clock)
    scopes = ("production", "user", "development", "batch")
    vault.put_many((f"cred-{i:05d}", {"n": i}, scopes[i % len(scopes)], None) for i in range(ROWS))
    payments = vault.keyring("payments")
    payments.keys.initialize()
    payments.put_many((f"pay-{i}", {"n": i}, "production", None) for i in range(300))
    clock.advance(days=30)
    payments.keys.rotate("quarterly")
    payments.reencrypt()
    clock.advance(days=1)
    payments.maintain()  # v1 unreferenced: valid -> grace
    clock.advance(days=2)
    payments.maintain()  # grace period over: revoked
    clock.advance(days=28)
    payments.keys.rotate("quarterly")
    billing = vault.keyring("billing")
    billing.keys.initialize()
    billing.put_many((f"bill-{i}", {"n": i}, "user", None) for i in range(40))
    clock.advance(days=25)  # default's v1 is now 86 days old: the planted KeyTooOld alert

    app = Starlette(routes=[Mount("/ui", app=create_console(vault, _principal))])
    port = free_port()
    server = EmbeddedServer(app, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}/ui", vault, clock
    finally:
        server.stop()
        vault.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "chromium/chromedriver missing: scripts/ensure-system-deps.sh installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--force-device-scale-factor=1", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("NEBULA_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)


def text(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def csp_violations(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def shoot(driver: Any, folder: Path, name: str) -> None:
    """A full-page screenshot (Chrome DevTools), not just the viewport.

    The whole window's width: captured beyond the viewport, the page is laid out without
    its scrollbar, so the document's client width would cut off the right edge.
    """
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
    clip = {"x": 0, "y": 0, "width": int(width), "height": min(int(height) + 16, 2400), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": clip})
    (folder / f"console-{name}.png").write_bytes(base64.b64decode(shot["data"]))


def login(driver: Any, base: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/")
    wait(driver, lambda d: d.current_url.endswith("/ui/login"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(driver, lambda d: d.current_url.endswith("/ui/"))


def test_operator_story_in_chromium(served: tuple[str, Any, FakeClock], browser: Any, shots: Path) -> None:
    base, vault, clock = served
    d = browser

    # -- login: the token goes into an HttpOnly cookie, never into the URL ------------------------
    d.get(f"{base}/")
    wait(d, lambda d: d.current_url.endswith("/ui/login"))
    shoot(d, shots, "login")
    d.find_element(By.ID, "token").send_keys("not-a-token")
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(d, lambda d: "Unknown, expired or revoked token" in d.page_source)
    login(d, base, ROOT_TOKEN)
    cookie = d.get_cookie("nc_console")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert ROOT_TOKEN not in d.current_url
    assert d.execute_script("return document.cookie") == ""  # not readable by scripts

    # -- overview: three keyrings, the planted alert on `default` ------------------------------
    cards = {c.get_attribute("data-keyring"): c for c in d.find_elements(By.CSS_SELECTOR, "article.keyring")}
    assert set(cards) == {"default", "payments", "billing"}
    assert "1 alert" in cards["default"].text and "v1" in cards["default"].text
    assert f"{ROWS:,}" in cards["default"].text
    assert "revoked" in cards["payments"].text and "active" in cards["payments"].text
    shoot(d, shots, "overview")

    d.get(f"{base}/alerts")
    assert "KeyTooOld" in d.page_source and "keyring default: active version 1 is 86.0 days old" in d.page_source
    shoot(d, shots, "alerts")

    # -- a timeline drawn by uPlot under the CSP ---------------------------------------------
    d.get(f"{base}/keyrings/payments")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, ".timeline").get_attribute("data-rendered") == "3")
    assert d.find_elements(By.CSS_SELECTOR, ".timeline canvas")
    assert "Reinstate v1" in d.page_source  # v1 is revoked: reinstate offered, destroy never
    assert "Destroy" not in d.page_source and "destroy" not in d.page_source.lower().replace("destroyed", "")
    shoot(d, shots, "timeline")

    # -- rotate `default` behind a confirmation that names it ---------------------------------
    d.get(f"{base}/keyrings/default")
    d.find_element(By.CSS_SELECTOR, "a.action-rotate").click()
    assert text(d, "h1") == "Rotate keyring default?"
    shoot(d, shots, "confirm")
    d.find_element(By.ID, "confirm").click()
    wait(d, lambda d: "Rotated: v2 is now active." in d.page_source)
    assert vault.status()["active_version"] == 2
    assert "KeyTooOld" not in d.page_source  # the new version is young: the alert is gone

    # -- re-encrypt 20,000 credentials and watch the live progress reach 100 % -------------------
    d.find_element(By.CSS_SELECTOR, "a.action-reencrypt").click()
    assert text(d, "h1") == "Re-encrypt keyring default?"
    assert f"{ROWS:,} credential(s)" in d.page_source
    d.find_element(By.ID, "confirm").click()
    wait(d, lambda d: "Re-encryption started." in d.page_source)
    polled: list[str] = []

    def finished(d: Any) -> bool:
        polled.append(text(d, "#progress .overall .meter-label"))
        # the last poll reloads the page: the versions table then shows every row under v2
        return ("finished:" in text(d, "#progress .state")
                and text(d, 'tr[data-version="2"] td.num') == f"{ROWS:,}")

    wait(d, finished, timeout=180)
    assert not d.find_elements(By.CSS_SELECTOR, "a.action-reencrypt")  # nothing pending any more
    assert text(d, "#progress .overall .meter-label") == "100.0 %"
    assert f"{ROWS:,} of {ROWS:,} under v2" in text(d, "#progress .counts")
    assert "rows/s" in text(d, "#progress .rows-per-second")
    scopes = {r.get_attribute("data-scope"): r.text for r in d.find_elements(By.CSS_SELECTOR, "#progress tr[data-scope]")}
    assert set(scopes) == {"production", "user", "development", "batch"}
    assert all("100.0 %" in row for row in scopes.values()), scopes
    status = vault.status()
    assert status["reencryption"] == {"pending": 0, "total": ROWS, "progress": 1.0}
    shoot(d, shots, "keyring")

    # -- health: the provider round trip and an intact audit chain with its last events ---------------
    d.get(f"{base}/health")
    assert "wrap/unwrap round trip" in d.page_source
    assert "Audit chain intact" in text(d, ".chain-ok")
    events = d.find_elements(By.CSS_SELECTOR, "table.events tbody tr")
    assert 0 < len(events) <= 100
    assert "key.rotate" in d.page_source and "reencrypt.finish" in d.page_source
    shoot(d, shots, "health")
    assert csp_violations(d) == []

    # -- read-only: no buttons, and 403 when it posts anyway ------------------------------------------
    login(d, base, READ_TOKEN)
    d.get(f"{base}/keyrings/payments")
    assert d.find_elements(By.CSS_SELECTOR, "a.button") == []
    assert "Rotate" not in text(d, ".toolbar") and "Reinstate" not in d.page_source
    shoot(d, shots, "readonly")
    csrf = d.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    statuses = d.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const post = (path, body) => fetch(path, {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: new URLSearchParams(body)})
            .then(r => r.status);
        Promise.all([
            post("rotate", {csrf: arguments[0], confirm: "payments"}),
            post("reinstate", {csrf: arguments[0], confirm: "payments/v1", version: "1"}),
        ]).then(done);
        """.replace('post("', f'post("{base}/keyrings/payments/actions/'),
        csrf,
    )
    assert statuses == [403, 403]
    d.get(f"{base}/keyrings/payments/confirm?action=rotate")
    assert "403" in text(d, "h1")
    with vault.store.read() as tx:
        assert [v.status.value for v in sorted(tx.list_versions("payments"), key=lambda v: v.version)] == [
            "revoked", "valid", "active"]
    assert csp_violations(d) == []
    clock.advance(timedelta(seconds=1))
