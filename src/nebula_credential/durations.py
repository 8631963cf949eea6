"""Durations as written in config files, flags and Vault API bodies.

One parser for all of them, accepting what Vault accepts (its
``parseutil.ParseDurationSecond``): Go's ``time.ParseDuration`` format
(``1h0m0s``, ``90m``, ``1.5h``, ``300ms``; the ``bao``/``vault`` CLI sends
``-ttl=1h`` as ``1h0m0s``), a plain integer or number as seconds (``300``,
``"300"``), ``0``, and ``d`` (days) as Vault adds it.  We also keep ``w``
(weeks), which config files used before.  Negatives are refused.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .exceptions import ConfigError

_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
    "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
}
#: One term of a Go duration: a decimal number (``1``, ``1.5``, ``.5``, ``1.``) and a unit.
_TERM = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d|w)")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")
#: Longer than any key lifetime anyone means; larger values are typos (and overflow timedelta).
MAX_SECONDS = 100 * 366 * 86400
_EXPECTED = "expected a duration like '30s', '15m', '1h0m0s', '90d' or a number of seconds"


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


def _parse_text(text: str, field: str) -> float:
    """Seconds in ``text`` (Go's format, or plain seconds); raises ConfigError when it is neither."""
    s = text.strip()
    if len(s) > 64 or not s:
        raise ConfigError(field, f"{_EXPECTED}, got {_show(text)}")
    if s.startswith("-"):
        raise ConfigError(field, f"must not be negative, got {_show(text)}")
    s = s.removeprefix("+")
    if _PLAIN.fullmatch(s):  # Vault: a bare number is seconds ("0" included)
        return float(s)
    total = 0.0
    pos = 0
    for m in _TERM.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ConfigError(field, f"{_EXPECTED}, got {_show(text)}")
    return total


def parse_duration(text: str | int | float | timedelta, field: str = "duration") -> timedelta:
    """Parse a duration, naming ``field`` in the error; negatives are refused."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, bool):
        raise ConfigError(field, f"{_EXPECTED}, got {text!r}")
    elif isinstance(text, int | float):
        value = _seconds(float(text) if abs(text) < 1e300 else math.inf, field, text)
    elif isinstance(text, str):
        value = _seconds(_parse_text(text, field), field, text)
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
