"""Command-line start-up: whole processes, timed from outside (issue 27, target 6).

Each command runs ``runs`` times after one warm-up, commands in turn (A B C
A B C ...) so a burst of load falls on all of them; wall seconds from a
monotonic clock around each child, CPU seconds from the kernel's account of
the finished child.  ``python -c pass`` and ``import click`` are the floor
under any Python command line built on click; the ``bao`` binary, when on
PATH, is OpenBao's own start-up for scale.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nebula_credential

SRC = str(Path(nebula_credential.__file__).resolve().parent.parent)


@dataclass(slots=True)
class StartRow:
    name: str
    wall: list[float]
    cpu: list[float]

    @property
    def wall_min(self) -> float:
        return min(self.wall)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def _cli() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("nebula-credential")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nebula_credential"]


def _timed(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run(runs: int = 15) -> list[StartRow]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # as installed: bytecode cached (the warm-up writes it); without it every run compiles every module
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("NEBULA_CREDENTIAL_DB", None)
    env.pop("NEBULA_CREDENTIAL_CONFIG", None)
    cli = _cli()
    with tempfile.TemporaryDirectory(prefix="nc-start-") as tmp:
        subprocess.run([*cli, "init"], cwd=tmp, env=env, capture_output=True, check=True)
        subprocess.run([*cli, "put", "github"], cwd=tmp, env=env, input=b'{"token": "x"}',
                       capture_output=True, check=True)
        cases: list[tuple[str, list[str]]] = [
            ("nebula-credential get github", [*cli, "get", "github"]),
            ("nebula-credential --help", [*cli, "--help"]),
            ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"]),
            ("python -c 'import click' (click floor)", [sys.executable, "-c", "import click"]),
        ]
        bao = shutil.which("bao")
        if bao:
            cases.append(("bao version (OpenBao binary)", [bao, "version"]))
        rows = [StartRow(name, [], []) for name, _ in cases]
        for _, argv in cases:
            _timed(argv, tmp, env)  # warm-up: page cache, .pyc files
        for _ in range(runs):
            for row, (_, argv) in zip(rows, cases):
                wall, cpu = _timed(argv, tmp, env)
                row.wall.append(wall)
                row.cpu.append(cpu)
    return rows


def table(rows: list[StartRow]) -> str:
    lines = ["| command | wall min s | wall median s | CPU median s | runs |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.wall_min:.3f} | {r.wall_median:.3f} | {r.cpu_median:.3f} | {len(r.wall)} |"
              for r in rows]
    return "\n".join(lines)
