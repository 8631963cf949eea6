"""The documentation site: builds with --strict, works offline, and its generated
references list every CLI command, config key and metric the code has."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
import yaml

from nebula_credential.cli import cli
from nebula_credential.config import KeyManagementConfig
from nebula_credential.durations import format_duration

ROOT = Path(__file__).resolve().parent.parent


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nebula_docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


def toml_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def command_paths(group: click.Group, prefix: str = "nebula-credential") -> list[str]:
    paths = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazily loaded commands too
        command = group.get_command(ctx, name)
        path = f"{prefix} {name}"
        paths.append(path)
        if isinstance(command, click.Group):
            paths += command_paths(command, path)
    return paths


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_every_config_key_is_documented_and_accepted_by_the_loader() -> None:
    keys = hooks.config_keys()
    sections = {k.section for k in keys}
    assert {"store", "keys", "rotation", "retention", "reencryption", "provider", "audit", "metrics",
            "alerts"} <= sections
    defaults = KeyManagementConfig()
    for k in keys:
        assert k.meaning and k.type and k.default, k
        value = toml_value(getattr(getattr(defaults, k.section), k.key))
        # the documented key is a real key: the loader accepts it with its documented default
        loaded = KeyManagementConfig.from_dict({k.section: {k.key: value}})
        assert getattr(getattr(loaded, k.section), k.key) == getattr(getattr(defaults, k.section), k.key), k


def test_field_docs_come_from_docstrings_or_comments_and_a_missing_one_is_refused() -> None:
    source = (
        "class A:\n"
        "    #: from a comment\n"
        "    a: int = 1\n"
        "    b: int = 2  # trailing\n"
        "    c: int = 3\n"
        '    """from a\n    docstring"""\n'
        "    d: int = 4\n"
    )
    assert hooks._field_docs(source) == {
        "A": {"a": "from a comment", "b": "trailing", "c": "from a docstring", "d": ""}
    }


def test_config_reference_table(tmp_path: Path) -> None:
    table = hooks.config_reference()
    assert "### `[rotation]`" in table
    assert '| `max_key_age` | duration | `"90d"` |' in table
    assert "| `max_encryptions` | int | `1073741824` (2^30) |" in table


def test_site_lists_every_cli_command(site: Path) -> None:
    html = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    paths = command_paths(cli)
    assert len(paths) >= 25
    missing = [p for p in paths if p not in html]
    assert not missing, missing


def test_site_lists_every_config_key_and_metric(site: Path) -> None:
    config_html = (site / "reference" / "config.html").read_text(encoding="utf-8")
    for k in hooks.config_keys():
        assert f"<code>[{k.section}]</code>" in config_html and f"<code>{k.key}</code>" in config_html, k
    metrics_html = (site / "reference" / "metrics.html").read_text(encoding="utf-8")
    for m in hooks.metric_families():
        assert f"<code>{m.name}</code>" in metrics_html, m.name
    api_html = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("KeyManager", "Vault", "KeyStatus", "NebulaCredentialError", "PeriodicRotation"):
        assert f'id="nebula_credential.{name}"' in api_html or f'id="nebula_credential.exceptions.{name}"' in api_html, name


def test_every_page_in_docs_is_in_the_nav_and_built(site: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))

    def pages(nav: Any) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        return [p for v in nav.values() for p in pages(v)]

    in_nav = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == in_nav
    for page in in_nav:
        assert (site / page.replace(".md", ".html")).is_file(), page
    for owned_elsewhere in ("security.md", "lifecycle.md", "asyncio.md", "server.md", "transit.md", "backups.md"):
        assert owned_elsewhere in in_nav


def test_site_loads_nothing_from_the_network(site: Path) -> None:
    """No CDN script, web font or remote stylesheet: the docs work offline."""
    remote = re.compile(r"""<(?:script|img|iframe)[^>]+src=["']https?://|<link[^>]+href=["']https?://[^"']+["'][^>]*>""")
    offenders = {}
    for page in site.rglob("*.html"):
        for m in remote.finditer(page.read_text(encoding="utf-8")):
            if 'rel="canonical"' not in m.group(0) and "rel=canonical" not in m.group(0):
                offenders.setdefault(str(page.relative_to(site)), []).append(m.group(0)[:120])
    assert not offenders, offenders
    css = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.css"))
    assert "fonts.googleapis.com" not in css and "@import url(http" not in css
