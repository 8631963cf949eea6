"""When a static role rotates next: a period after the last rotation, or a cron schedule in a time zone.

Every decision takes ``now`` (an injectable clock) and the last rotation
stored, never the wall clock: a clock that jumps forward by ten periods
gives one rotation, not ten; one that jumps back gives none, and a ``ttl``
never longer than the period.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ..config import validate_cron, validate_timezone
from ..exceptions import ConfigError
from .errors import DatabaseInputError


def check_schedule(cron: str, timezone: str) -> tuple[str, str]:
    try:
        return validate_cron(cron, "rotation_schedule"), validate_timezone(timezone, "rotation_timezone")
    except ConfigError as exc:
        raise DatabaseInputError(str(exc)) from None


def _cron(cron: str, start: float, timezone: str) -> object:
    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(start, ZoneInfo(timezone)), second_at_beginning=True)


def next_fire(cron: str, timezone: str, after: float) -> float:
    it = _cron(cron, after, timezone)
    return float(it.get_next(float))  # type: ignore[attr-defined]


def previous_fire(cron: str, timezone: str, now: float) -> float:
    it = _cron(cron, now + 1, timezone)  # get_prev is strictly before its start
    return float(it.get_prev(float))  # type: ignore[attr-defined]


def next_rotation(period: int, cron: str, timezone: str, last: float, now: float) -> float:
    """The due time of the rotation after ``last`` (at most one due time, however far ``now`` is)."""
    if period:
        return last + period
    return next_fire(cron, timezone, last)


def is_due(period: int, cron: str, timezone: str, window: int, last: float, now: float) -> bool:
    if period:
        return now >= last + period
    fire = previous_fire(cron, timezone, now)
    if fire <= last:
        return False
    return not window or now < fire + window


def ttl(period: int, cron: str, timezone: str, window: int, last: float, now: float) -> int:
    """Seconds until the next rotation, within [0, the period] (a clock set back cannot stretch it)."""
    if period:
        return int(max(0.0, min(float(period), last + period - now)))
    if is_due(period, cron, timezone, window, last, now):
        return 0
    return int(max(0.0, next_fire(cron, timezone, max(now, last)) - now))
