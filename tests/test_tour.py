"""The documented tours run as written.

The README's CLI tour and every shell block of Getting started are extracted
from the Markdown and run line by line with ``bash`` in a clean folder that
holds a copy of ``examples/`` (as the root of a clone does), with
``nebula-credential`` on ``PATH`` as ``. .venv/bin/activate`` puts it there.
Each line must exit 0.  Skipped, because they need something a test folder
has not or never return:

- ``make ...``: builds the clone's own ``.venv`` (the suite runs inside one);
- ``pip install ...`` and ``python3 -m venv``: network and a new environment;
- ``. .venv/bin/activate``: replaced by the ``PATH`` set here;
- ``nebula-credential daemon`` and ``serve``: long-running servers (their own
  tests start them).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]

SKIPPED = (
    re.compile(r"^make\b"),
    re.compile(r"^pip\b"),
    re.compile(r"^python3 -m venv\b"),
    re.compile(r"^\. \.venv/bin/activate\b"),
    re.compile(r"^nebula-credential\s+(daemon|serve)\b"),
)


def shell_blocks(markdown: str) -> list[str]:
    """The bodies of the ```sh fenced blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.M | re.S)


def section(markdown: str, heading: str) -> str:
    """The text of one ``## heading`` section (up to the next ``## ``)."""
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


def commands(block: str) -> list[str]:
    """The block's command lines, comments kept (bash drops them), skipped lines left out."""
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")
            and not any(p.search(line) for p in SKIPPED)]


def readme_tour() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return commands(shell_blocks(section(text, "CLI tour"))[0])


def getting_started() -> list[str]:
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    return [line for block in shell_blocks(text) for line in commands(block)]


def run_tour(lines: list[str], folder: Path) -> None:
    shutil.copytree(ROOT / "examples", folder / "examples")
    bindir = folder.parent / f"{folder.name}-bin"
    bindir.mkdir()
    shim = bindir / "nebula-credential"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m nebula_credential "$@"\n', encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = cli_env()
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    exports: list[str] = []
    for line in lines:
        if line.startswith("export "):
            exports.append(line)
        script = "\n".join([*exports, line])
        proc = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    lines = readme_tour()
    assert any("examples/github.json" in line for line in lines), lines
    run_tour(lines, tmp_path / "clone")
    assert (tmp_path / "clone" / "creds.db").exists()


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    lines = getting_started()
    assert any(line.startswith("nebula-credential adopt") for line in lines), lines
    run_tour(lines, tmp_path / "clone")
    assert (tmp_path / "clone" / "restored.db").exists()
    assert (tmp_path / "clone" / "backups" / "creds.db").exists()


@pytest.mark.parametrize("doc", ["README.md", "docs/getting-started.md"])
def test_first_run_says_how_to_get_the_command(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert ".venv/bin/activate" in text
    assert "pip install -e ." in text


def test_the_skipped_lines_are_only_the_ones_named() -> None:
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    every = [line.strip() for block in shell_blocks(text) for line in block.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    skipped = [line for line in every if any(p.search(line) for p in SKIPPED)]
    assert [s for s in skipped if s.startswith("nebula-credential")] == [
        next(s for s in skipped if s.startswith("nebula-credential daemon"))]
