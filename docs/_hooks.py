"""MkDocs hook: reference tables generated from the code, so the docs cannot drift.

A page asks for a table with a marker comment on a line of its own:

* ``<!-- nebula:config-reference -->``: every config key (section, key, type,
  default, meaning) from the dataclasses in ``nebula_credential.config``.  The
  meaning is the field's attribute docstring (a string literal right after the
  field) or its ``#:`` comment; a field with neither is an error, not a blank.
* ``<!-- nebula:console-permissions -->``: what each console page or action needs
  (``nebula_credential.console.NEEDS``).
* ``<!-- nebula:metrics-reference -->``: every metric the daemon's exporter and
  the HTTP server expose (``metrics.MetricsExporter`` + ``metrics.SERVER_METRICS``).

The source tree's ``src`` goes first on ``sys.path`` (``on_config``) so the build documents the
checkout it runs in (mkdocs-click imports the CLI from there too).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
import typing
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parent.parent / "src"


def use_source_tree() -> None:
    """Put this checkout's ``src`` first (mkdocs restores sys.path after loading a hook)."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))


#: Dataclass fields that are not TOML keys (bookkeeping of the loader).
NOT_KEYS = {("provider", "settings"), ("provider", "explicit")}



class ConfigKey(typing.NamedTuple):
    section: str
    key: str
    type: str
    default: str
    meaning: str


def _field_docs(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field: doc}}`` from attribute docstrings or ``#:`` / trailing comments."""
    lines = source.splitlines()
    docs: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        found: dict[str, str] = {}
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            doc = ""
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                doc = " ".join(nxt.value.value.split())
            if not doc:
                comments: list[str] = []
                j = stmt.lineno - 2
                while j >= 0 and lines[j].strip().startswith("#:"):
                    comments.insert(0, lines[j].strip()[2:].strip())
                    j -= 1
                doc = " ".join(comments)
            if not doc:
                tail = lines[stmt.end_lineno - 1 if stmt.end_lineno else stmt.lineno - 1]
                m = re.search(r"#\s*(.+)$", tail)
                doc = m.group(1).strip() if m else ""
            found[stmt.target.id] = doc
        docs[node.name] = found
    return docs


def _type_name(tp: Any) -> str:
    if tp is timedelta:
        return "duration"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table"
    return getattr(tp, "__name__", str(tp))


def _default_text(value: Any) -> str:
    from nebula_credential.durations import format_duration

    if isinstance(value, timedelta):
        return f'`"{format_duration(value)}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, int) and value >= 2**16 and (value & (value - 1)) == 0:
        return f"`{value}` (2^{value.bit_length() - 1})"
    return f"`{value}`"


def config_keys() -> list[ConfigKey]:
    """Every TOML key of the config file, in the order the classes declare them."""
    from nebula_credential import config

    docs = _field_docs(Path(config.__file__).read_text(encoding="utf-8"))
    root = config.KeyManagementConfig
    hints = typing.get_type_hints(root)
    keys: list[ConfigKey] = []
    for section in dataclasses.fields(root):
        cls = hints[section.name]
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue  # bookkeeping such as `source`
        instance = cls()
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (section.name, f.name) in NOT_KEYS:
                continue
            meaning = docs.get(cls.__name__, {}).get(f.name, "")
            if not meaning:
                raise ValueError(
                    f"config field {cls.__name__}.{f.name} ([{section.name}] {f.name}) has no docstring: "
                    "add a string literal right after the field in config.py saying what it means"
                )
            keys.append(
                ConfigKey(
                    section=section.name,
                    key=f.name,
                    type=_type_name(sub_hints[f.name]),
                    default=_default_text(getattr(instance, f.name)),
                    meaning=meaning,
                )
            )
    return keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    out: list[str] = []
    section = None
    for k in config_keys():
        if k.section != section:
            section = k.section
            out += ["", f"### `[{section}]`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        out.append(f"| `{k.key}` | {k.type} | {_cell(k.default)} | {_cell(k.meaning)} |")
    return "\n".join(out).strip() + "\n"


def metric_families() -> list[Any]:
    """Every exported metric, collected from a real exporter over a throwaway store."""
    import tempfile

    import nebula_credential as nc
    from nebula_credential import metrics

    with tempfile.TemporaryDirectory() as tmp:
        vault = nc.open(f"sqlite:///{tmp}/docs.db", create=True)
        try:
            exporter = metrics.MetricsExporter(vault)
            return metrics.exported_metrics(exporter)
        finally:
            vault.close()


def metrics_reference() -> str:
    out = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in metric_families():
        label_text = ", ".join(f"`{lbl}`" for lbl in m.labels) or "—"
        out.append(f"| `{m.name}` | {m.type} | {label_text} | {_cell(m.help)} |")
    return "\n".join(out) + "\n"


def on_page_content(html: str, **kwargs: Any) -> str:
    """mkdocs-click prints click 8.2's "no default" sentinel as a default; show none instead."""
    return html.replace("<code>Sentinel.UNSET</code>", "")


def on_config(config: Any) -> Any:
    use_source_tree()
    # The CLI imports a command's module when it is first run (start-up); mkdocs-click
    # walks ``group.commands``, so every command is loaded before it looks.
    from nebula_credential.cli import preload

    preload()
    return config


def console_permissions() -> str:
    from nebula_credential.console import NEEDS, TRANSIT_NEEDS

    out = ["| page or action | KV keyring `<name>` | Transit key `<name>` of mount `<mount>` |", "|---|---|---|"]
    for what, (capability, path) in NEEDS.items():
        t_capability, t_path = TRANSIT_NEEDS[what]
        kv = path.format(keyring="<name>")
        transit = t_path.format(mount="<mount>", name="<name>")
        out.append(f"| {what} | `{capability}` on `{kv}` | `{t_capability}` on `{transit}` |")
    return "\n".join(out) + "\n"


_MARKERS: dict[str, Callable[[], str]] = {
    "<!-- nebula:console-permissions -->": console_permissions,
    "<!-- nebula:config-reference -->": config_reference,
    "<!-- nebula:metrics-reference -->": metrics_reference,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    for marker, render in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
