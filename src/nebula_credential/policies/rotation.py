"""Rotation strategies: when should a keyring get a new active version?

Each strategy answers ``due(active, now)`` with the reason to rotate, or
``None``.  ``now`` is always passed in (an injectable clock), so every
boundary is testable without sleeping.  Decisions depend only on the active
version's own record, which makes them idempotent: a pass that runs late, or
twice, or in two processes at once reaches the same answer, and the
``expected_active`` guard of :meth:`KeyManager.rotate` lets only one act.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime, timedelta

from ..config import DEFAULT_MAX_ENCRYPTIONS, KeyManagementConfig, validate_cron, validate_timezone
from ..durations import format_duration
from ..exceptions import ConfigError
from ..models import KeyVersion


class RotationStrategy(ABC):
    name: str = "abstract"

    @abstractmethod
    def due(self, active: KeyVersion, now: datetime) -> str | None:
        """The reason to rotate now, or None."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ManualRotation(RotationStrategy):
    """Never rotates by itself; ``keys rotate`` does."""

    name = "manual"

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        return None


class PeriodicRotation(RotationStrategy):
    """Rotate once the active version is ``interval`` old."""

    name = "periodic"

    def __init__(self, interval: timedelta) -> None:
        if interval <= timedelta(0):
            raise ConfigError("rotation.interval", "must be greater than zero")
        self.interval = interval

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        age = now - active.created_at
        if age >= self.interval:
            return (
                f"periodic: v{active.version} is {format_duration(age)} old (interval {format_duration(self.interval)})"
            )
        return None

    def __repr__(self) -> str:
        return f"PeriodicRotation(interval={format_duration(self.interval)!r})"


class BeforeExpiryRotation(RotationStrategy):
    """Rotate ``threshold`` before the active version reaches ``max_key_age``."""

    name = "before-expiry"

    def __init__(self, threshold: timedelta, max_key_age: timedelta = timedelta(days=90)) -> None:
        if threshold < timedelta(0):
            raise ConfigError("rotation.threshold", "must not be negative")
        if threshold >= max_key_age:
            raise ConfigError("rotation.threshold", "must be shorter than keys.max_key_age")
        self.threshold = threshold
        self.max_key_age = max_key_age

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        expires = active.expires_at or (active.created_at + self.max_key_age)
        if now >= expires - self.threshold:
            left = format_duration(self.threshold)
            return f"before-expiry: v{active.version} expires {expires.isoformat()} (threshold {left})"
        return None

    def __repr__(self) -> str:
        return f"BeforeExpiryRotation(threshold={format_duration(self.threshold)!r})"


class ScheduledRotation(RotationStrategy):
    """Rotate at each fire time of a cron expression, evaluated in ``timezone`` (default UTC).

    Five fields (min hour dom month dow) or six with seconds first.  Across
    DST changes a job fires once per day as cron users expect: on the
    spring-forward day a time inside the skipped hour fires once, at the end
    of the gap; on the fall-back day a time inside the repeated hour fires
    only at its first occurrence.

    The seed checked "within 5 minutes of the next fire time", which misses a
    fire whenever a pass runs late.  Here the decision is: has the schedule
    fired since the active version was created?  A late pass still rotates,
    exactly once, because after rotating the new version is newer than that
    fire time.
    """

    name = "scheduled"

    def __init__(self, cron: str, timezone: str = "UTC") -> None:
        self.cron = validate_cron(cron)
        self.timezone = validate_timezone(timezone)
        from zoneinfo import ZoneInfo  # here, not at import: the command line's start-up

        self._tz = ZoneInfo(timezone)

    def previous_fire(self, now: datetime) -> datetime:
        from croniter import croniter

        # croniter's get_prev is strictly before its start; start one second on so a
        # pass that runs exactly at a fire time counts that fire.
        it = croniter(self.cron, (now + timedelta(seconds=1)).astimezone(self._tz), second_at_beginning=True)
        prev: datetime = it.get_prev(datetime)
        before: datetime = it.get_prev(datetime)
        if before.replace(tzinfo=None) == prev.replace(tzinfo=None):
            return before  # the repeated hour of a fall-back day: only the first occurrence fires
        return prev

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        fire = self.previous_fire(now)
        if fire > now:  # pragma: no cover - guarded by the one-second start above
            return None
        if fire > active.created_at:
            return f"scheduled: cron {self.cron!r} fired at {fire.isoformat()}, after v{active.version} was created"
        return None

    def __repr__(self) -> str:
        return f"ScheduledRotation(cron={self.cron!r}, timezone={self.timezone!r})"


class UsageRotation(RotationStrategy):
    """Rotate before a version encrypts too many messages under random nonces.

    NIST SP 800-38D bounds AES-GCM with random 96-bit nonces to 2^32
    invocations per key; the default 2^30 keeps a 4x margin.  The count is
    what processes reserved (a slight over-estimate, the safe direction).
    """

    name = "usage"

    def __init__(self, max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS) -> None:
        if max_encryptions < 1:
            raise ConfigError("rotation.max_encryptions", "must be at least 1")
        self.max_encryptions = max_encryptions

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        if active.encryptions >= self.max_encryptions:
            return f"usage: v{active.version} reached {active.encryptions} encryptions (bound {self.max_encryptions})"
        return None

    def __repr__(self) -> str:
        return f"UsageRotation(max_encryptions={self.max_encryptions})"


class AnyOf(RotationStrategy):
    """Due when any member is; the first reason wins."""

    name = "any-of"

    def __init__(self, strategies: Sequence[RotationStrategy]) -> None:
        self.strategies = tuple(strategies)

    def due(self, active: KeyVersion, now: datetime) -> str | None:
        for s in self.strategies:
            reason = s.due(active, now)
            if reason:
                return reason
        return None

    def __repr__(self) -> str:
        return f"AnyOf({list(self.strategies)!r})"


def strategy_from_config(config: KeyManagementConfig) -> RotationStrategy:
    """The configured strategy, always combined with the usage bound.

    With ``auto_rotation = false`` only the usage bound remains: it protects
    the cipher, not a schedule.
    """
    r = config.rotation
    usage = UsageRotation(r.max_encryptions)
    if not config.keys.auto_rotation or r.strategy in ("manual", "usage"):
        return usage
    base: RotationStrategy
    if r.strategy == "periodic":
        base = PeriodicRotation(r.interval)
    elif r.strategy == "before-expiry":
        base = BeforeExpiryRotation(r.threshold, config.keys.max_key_age)
    elif r.strategy == "scheduled":
        base = ScheduledRotation(r.cron, r.timezone)
    else:  # pragma: no cover - config validation rejects anything else
        raise ConfigError("rotation.strategy", f"unknown strategy {r.strategy!r}")
    return AnyOf([base, usage])
