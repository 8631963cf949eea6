"""Timing helpers: median of interleaved repetitions.

Contenders are measured round-robin (rep 1 of each, then rep 2 of each...)
so a burst of load from elsewhere on a shared machine hits all of them
alike instead of sinking one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

Call = Callable[..., Any]


def loop_seconds(call: Call, args: tuple[Any, ...], n: int) -> float:
    """Seconds for ``n`` calls; the loop overhead is the same for every contender."""
    rng = range(n)
    start = time.perf_counter()
    for _ in rng:
        call(*args)
    return time.perf_counter() - start


def calibrate(call: Call, args: tuple[Any, ...], target_seconds: float, n_max: int) -> int:
    """An ``n`` for which one repetition takes about ``target_seconds``."""
    n = 8
    while True:
        spent = loop_seconds(call, args, n)
        if spent >= target_seconds / 2 or n >= n_max:
            break
        n *= 4
    # best of three at the final size, so one stall does not shrink n
    spent = min(spent, loop_seconds(call, args, n), loop_seconds(call, args, n))
    return max(1, min(n_max, int(n * target_seconds / max(spent, 1e-9))))


def interleaved_samples(
    cases: Sequence[tuple[Call, tuple[Any, ...], int]], reps: int
) -> list[list[float]]:
    """Ops/s of every repetition of each (call, args, n), repetitions interleaved."""
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(reps):
        for i, (call, args, n) in enumerate(cases):
            samples[i].append(n / loop_seconds(call, args, n))
    return samples


def interleaved_medians(
    cases: Sequence[tuple[Call, tuple[Any, ...], int]], reps: int
) -> list[float]:
    """Median ops/s of each (call, args, n), repetitions interleaved."""
    return [statistics.median(s) for s in interleaved_samples(cases, reps)]
