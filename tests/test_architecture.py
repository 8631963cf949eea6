"""The layering rules import-linter cannot see: surfaces reach state only through the facade.

import-linter (``lint-imports``, run by ``make test``) forbids a surface to *import*
``store`` or ``providers``; this test forbids it to *reach* them through an open
vault (``vault.store``, ``.store.run``) or to name the store's private modules.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "nebula_credential"
SURFACES = ["cli", "server", "console", "daemon.py"]
FORBIDDEN = re.compile(r"vault\.store\b|\.store\.run\b|store\._sql|store\.base\b")


def _surface_files() -> list[Path]:
    files: list[Path] = []
    for name in SURFACES:
        path = PACKAGE / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def test_surfaces_never_touch_the_store() -> None:
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for path in _surface_files()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if FORBIDDEN.search(line)]
    assert found == [], "surfaces reach the store directly:\n" + "\n".join(found)


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    """The pattern catches the forms it is meant to (a rule that matches nothing proves nothing)."""
    for line in ("with vault.store.read() as tx:", "app.vault().store.run(fn)", "from ..store._sql import SqlTx",
                 "from ..store.base import Store"):
        assert FORBIDDEN.search(line), line
    assert not FORBIDDEN.search("vault.storage_type")
