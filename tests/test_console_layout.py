"""The console's looks in a real browser (Debian's chromium): what a screenshot review found, asserted.

- the header fits a 420 px phone (Log out visible and clickable) as well as a desktop window;
- the timeline's time axis is 24-hour and UTC, as every table of the console, and no two of
  its labels overlap (nor the first one the version axis), at a span of minutes or of months;
- keyring names are styled links, not the browser's default blue underline;
- a destructive confirmation (revoke) is a red button, a routine one (rotate, reinstate,
  re-encrypt) is not;
- the "Re-encryption started." banner goes when the pass has ended;
- a read-only token's keyring page says it is read-only where the buttons would be.

Screenshots of the narrow pages go to $NEBULA_SCREENSHOTS (``make docs-screenshots``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential._http import EmbeddedServer
from nebula_credential.console import Principal, create_console

from .helpers import FakeClock, free_port
from .test_console_browser import browser, csp_violations, shoot, shots, text, wait  # noqa: F401

pytest.importorskip("selenium.webdriver")
pytest.importorskip("granian")
from selenium.webdriver.common.by import By

ROOT = "layout-root-token"
READ = "layout-read-token"
NARROW, DESKTOP = 420, 1280


def _principal(token: str) -> Principal | None:
    if token == ROOT:
        return Principal("operator-with-a-long-display-name (root)", lambda capability, path: True)
    if token == READ:
        return Principal("auditor (read-only)", lambda capability, path: capability == "read")
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, FakeClock]]:
    """``archive``: three months of history; then ``recent``: two versions minutes apart (19:14 to 19:33 UTC)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    clock = FakeClock(datetime(2025, 10, 3, 19, 14, tzinfo=UTC))
    folder = tmp_path_factory.mktemp("layout")
    vault = nc.open(f"sqlite:///{folder / 'layout.db'}", create=True, clock=clock)
    archive = vault.keyring("archive")
    archive.keys.initialize()
    archive.put_many((f"a-{i}", {"n": i}, "user", None) for i in range(20))
    for _ in range(2):
        clock.advance(days=45)
        archive.keys.rotate("quarterly")
    recent = vault.keyring("recent")
    recent.keys.initialize()
    recent.put_many((f"r-{i:05d}", {"n": i}, ("production", "batch")[i % 2], None) for i in range(3000))
    clock.advance(minutes=7)
    recent.keys.rotate("short span")
    clock.advance(minutes=12)
    app = Starlette(routes=[Mount("/ui", app=create_console(vault, _principal))])
    port = free_port()
    server = EmbeddedServer(app, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}/ui", vault, clock
    finally:
        server.stop()
        vault.close()


def _width(d: Any, px: int) -> None:
    d.set_window_size(px, 900)
    wait(d, lambda d: abs(d.execute_script("return window.innerWidth") - px) < 40)


def _login(d: Any, base: str, token: str) -> None:
    d.delete_all_cookies()
    d.get(f"{base}/login")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(d, lambda d: d.current_url.endswith("/ui/"))


def _header_fits(d: Any) -> None:
    """No horizontal overflow, and Log out inside the window and the element a click there reaches."""
    facts = d.execute_script("""
        const header = document.querySelector("header"), out = document.querySelector("header .logout button");
        const r = out.getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return {headerScroll: header.scrollWidth, headerWidth: header.clientWidth,
                pageScroll: document.documentElement.scrollWidth, page: document.documentElement.clientWidth,
                window: window.innerWidth,
                left: r.left, right: r.right, top: r.top, bottom: r.bottom, hit: hit === out};
    """)
    assert facts["headerScroll"] <= facts["headerWidth"], facts
    assert facts["pageScroll"] <= facts["page"], facts  # nothing on the page is wider than the window
    assert 0 <= facts["left"] < facts["right"] <= facts["window"] and facts["bottom"] > facts["top"] >= 0, facts
    assert facts["hit"], facts


def _axis(d: Any) -> dict[str, Any]:
    """The timeline's time labels as drawn (text, left and right edge in CSS px), where the plot starts, the width."""
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, ".timeline").get_attribute("data-axis"))
    return dict(d.execute_script('return JSON.parse(document.querySelector(".timeline").dataset.axis)'))


def _no_overlap(axis: dict[str, Any]) -> None:
    """Inside the chart, and a gap of at least 4 px between any two labels (the first one too)."""
    boxes = axis["labels"]
    assert len(boxes) >= 2, axis
    assert boxes[0]["left"] >= 0 and boxes[-1]["right"] <= axis["width"], axis
    for a, b in itertools.pairwise(boxes):
        assert a["right"] + 4 <= b["left"], (a, b)


@pytest.mark.parametrize("width", [NARROW, DESKTOP])
def test_header_and_pages_fit(served: tuple[str, Any, FakeClock], browser: Any, width: int) -> None:  # noqa: F811
    base, _, _ = served
    d = browser
    _width(d, width)
    _login(d, base, ROOT)
    for path in ("/", "/alerts", "/health", "/keyrings/recent", "/keyrings/archive",
                 "/keyrings/recent/confirm?action=rotate"):
        d.get(base + path)
        _header_fits(d)
    d.get(f"{base}/")
    d.find_element(By.CSS_SELECTOR, "header .logout button").click()
    wait(d, lambda d: d.current_url.endswith("/ui/login"))
    assert csp_violations(d) == []


def test_timeline_axis_24h_utc_without_overlap(served: tuple[str, Any, FakeClock], browser: Any) -> None:  # noqa: F811
    base, _, _ = served
    d = browser
    _login(d, base, ROOT)
    for width in (NARROW, DESKTOP):
        _width(d, width)
        d.get(f"{base}/keyrings/recent")  # 19:14 to 19:33 UTC
        axis = _axis(d)
        texts = [b["text"] for b in axis["labels"]]
        assert all(re.fullmatch(r"19:[1-3]\d", t) for t in texts), texts
        assert axis["title"] == "UTC · 2026-01-01"  # the date: in the axis title
        assert not any(re.search(r"[ap]m", t) for t in texts), texts
        _no_overlap(axis)
        d.get(f"{base}/keyrings/archive")  # three months
        axis = _axis(d)
        texts = [b["text"] for b in axis["labels"]]
        assert all(re.fullmatch(r"\d\d-\d\d(\n20\d\d)?|20\d\d-\d\d", t) for t in texts), texts
        assert texts[0].endswith("2025") or texts[0].startswith("2025"), texts  # the year is shown
        _no_overlap(axis)
    assert csp_violations(d) == []


def test_links_and_button_colours(served: tuple[str, Any, FakeClock], browser: Any) -> None:  # noqa: F811
    base, _, _ = served
    d = browser
    _width(d, DESKTOP)
    _login(d, base, ROOT)
    link = d.find_element(By.CSS_SELECTOR, "article.keyring h2 a")
    assert link.value_of_css_property("text-decoration-line") == "none"
    assert link.value_of_css_property("color") != "rgba(0, 0, 238, 1)"  # the browser's default link blue

    def confirm_button(query: str) -> tuple[str, str]:
        d.get(f"{base}/keyrings/archive/confirm?{query}")
        button = d.find_element(By.ID, "confirm")
        return button.get_attribute("class") or "", button.value_of_css_property("background-color")

    revoke_cls, revoke_bg = confirm_button("action=revoke&version=2")
    assert "danger" in revoke_cls.split()
    for query in ("action=rotate", "action=reinstate&version=1", "action=reencrypt"):
        cls, bg = confirm_button(query)
        assert "danger" not in cls.split() and bg != revoke_bg, (query, cls, bg)
    d.get(f"{base}/keyrings/archive")
    rotate = d.find_element(By.CSS_SELECTOR, ".toolbar a.action-rotate")
    revoke = d.find_element(By.CSS_SELECTOR, "a.action-revoke")
    assert rotate.value_of_css_property("color") != revoke.value_of_css_property("color")


def test_reencryption_banner_goes_when_the_pass_ends(served: tuple[str, Any, FakeClock], browser: Any) -> None:  # noqa: F811
    base, vault, _ = served
    d = browser
    _width(d, DESKTOP)
    _login(d, base, ROOT)
    d.get(f"{base}/keyrings/recent/confirm?action=reencrypt")
    d.find_element(By.ID, "confirm").click()
    wait(d, lambda d: "finished:" in text(d, "#progress .state"), timeout=120)
    wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, "p.flash"))
    assert "Re-encryption started." not in d.page_source
    assert vault.keyring("recent").status()["reencryption"]["pending"] == 0
    d.get(f"{base}/keyrings/recent?done=reencrypt")  # an old address, reloaded: the pass is over
    assert "Re-encryption started." not in d.page_source


def test_read_only_is_labelled(served: tuple[str, Any, FakeClock], browser: Any, shots: Path) -> None:  # noqa: F811
    base, _, _ = served
    d = browser
    _login(d, base, READ)
    for width in (DESKTOP, NARROW):
        _width(d, width)
        d.get(f"{base}/keyrings/archive")
        assert d.find_elements(By.CSS_SELECTOR, "a.button") == []
        assert "read-only" in text(d, ".toolbar .read-only").lower()
        assert not d.find_elements(By.CSS_SELECTOR, "table.versions td.actions")  # no empty button column
        _header_fits(d)
    shoot(d, shots, "narrow-readonly")
    _login(d, base, ROOT)
    d.get(f"{base}/keyrings/archive")
    assert not d.find_elements(By.CSS_SELECTOR, ".toolbar .read-only")
    shoot(d, shots, "narrow-keyring")
    _width(d, DESKTOP)
