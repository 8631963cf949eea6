"""Re-encryption progress for people: a rich bar on a terminal, plain lines otherwise.

Both are fed by the engine's per-batch callback ``(scope, rows)``; they
know the plan (rows pending per scope, in priority order) up front so
they can show totals and an ETA.  Plain lines go to stderr at most every
``interval`` seconds, so logs of a long job under systemd or CI stay short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..reencrypt import Progress as ProgressCallback


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed or 0:,.0f} rows/s")


@contextmanager
def rich_progress(console: Console, plan: dict[str, int], label: str = "re-encrypting") -> Iterator[ProgressCallback]:
    """A bar for all rows and one per scope (in plan order)."""
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, speed_estimate_period=10) as bar:
        overall = bar.add_task(label, total=sum(plan.values()))
        tasks = {scope: bar.add_task(f"  {scope}", total=n) for scope, n in plan.items()}

        def advance(scope: str, rows: int) -> None:
            bar.advance(overall, rows)
            task = tasks.get(scope)
            if task is None:  # a scope that appeared after the plan was read
                task = tasks[scope] = bar.add_task(f"  {scope}", total=None)
            bar.advance(task, rows)

        yield advance


class PlainProgress:
    """Periodic one-line reports: done/total, rows/s, ETA and the scope being worked on."""

    def __init__(self, stream: TextIO, plan: dict[str, int], *, interval: float = 5.0,
                 label: str = "reencrypt") -> None:
        self._stream = stream
        self._label = label
        self._plan = plan
        self._total = sum(plan.values())
        self._interval = interval
        self._done = 0
        self._by_scope: dict[str, int] = {}
        self._start = time.monotonic()
        self._last = self._start

    def __call__(self, scope: str, rows: int) -> None:
        self._done += rows
        self._by_scope[scope] = self._by_scope.get(scope, 0) + rows
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._emit(scope, now)

    def finish(self, scope: str | None = None) -> None:
        self._emit(scope, time.monotonic())

    def _emit(self, scope: str | None, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        left = max(self._total - self._done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = 100.0 if self._total == 0 else 100.0 * self._done / self._total
        line = (f"{self._label}: {self._done}/{self._total} ({pct:.1f}%) {rate:,.0f} rows/s "
                f"eta {eta}")
        if scope is not None:
            line += f" scope {scope} {self._by_scope.get(scope, 0)}/{self._plan.get(scope, '?')}"
        print(line, file=self._stream, flush=True)
