"""Durations as written in config files and flags: ``30s``, ``15m``, ``24h``, ``90d``."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .exceptions import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
#: Longer than any key lifetime anyone means; larger values are typos (and overflow timedelta).
MAX_SECONDS = 100 * 366 * 86400
_EXPECTED = "expected a duration like '30s', '15m', '24h' or '90d'"


def _show(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _seconds(amount: float, field: str, text: object) -> timedelta:
    if not math.isfinite(amount):
        raise ConfigError(field, f"{_EXPECTED}, got {_show(text)}")
    if amount > MAX_SECONDS:
        raise ConfigError(field, f"must be at most 100 years, got {_show(text)}")
    if amount < 0:
        raise ConfigError(field, f"must not be negative, got {_show(text)}")
    return timedelta(seconds=amount)


def parse_duration(text: str | int | float | timedelta, field: str = "duration") -> timedelta:
    """Parse a duration, naming ``field`` in the error; negatives are refused."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, bool):
        raise ConfigError(field, f"expected a duration like '30s', '15m', '24h' or '90d', got {text!r}")
    elif isinstance(text, int | float):
        value = _seconds(float(text) if abs(text) < 1e300 else math.inf, field, text)
    elif isinstance(text, str):
        m = _RE.match(text) if len(text) <= 64 else None
        if not m:
            raise ConfigError(field, f"{_EXPECTED}, got {_show(text)}")
        value = _seconds(float(m.group(1)) * _UNITS[m.group(2)], field, text)
    else:
        raise ConfigError(field, f"expected a duration string, got {type(text).__name__}")
    if value < timedelta(0):
        raise ConfigError(field, f"must not be negative, got {text!r}")
    return value


def format_duration(td: timedelta) -> str:
    total = td.total_seconds()
    if total != int(total):
        return f"{total:g}s"  # sub-second values (retry back-offs) round-trip through parse_duration
    s = int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
