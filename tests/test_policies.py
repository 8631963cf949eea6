"""Rotation strategies and retention policies decide correctly around their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import nebula_credential as nc
from nebula_credential.models import KeyStatus, KeyVersion
from nebula_credential.policies import (
    BeforeExpiryRotation,
    ManualRotation,
    MinimumRetention,
    PeriodicRotation,
    ScheduledRotation,
    UntilReEncrypted,
    UsageRotation,
    VersionBased,
    strategy_from_config,
)
from nebula_credential.policies.retention import CallableRetention, RetentionContext

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def kv(version: int = 1, created: datetime = T0, status: KeyStatus = KeyStatus.ACTIVE, **kw: object) -> KeyVersion:
    return KeyVersion(keyring="k", version=version, status=status, created_at=created, provider="local", **kw)  # type: ignore[arg-type]


def test_manual_never_rotates() -> None:
    assert ManualRotation().due(kv(), T0 + timedelta(days=10_000)) is None


def test_periodic_boundary() -> None:
    p = PeriodicRotation(timedelta(days=90))
    assert p.due(kv(), T0 + timedelta(days=90) - S) is None
    assert p.due(kv(), T0 + timedelta(days=90)) is not None


def test_before_expiry_boundary() -> None:
    b = BeforeExpiryRotation(timedelta(days=7), timedelta(days=90))
    expires = T0 + timedelta(days=90)
    assert b.due(kv(expires_at=expires), expires - timedelta(days=7) - S) is None
    reason = b.due(kv(expires_at=expires), expires - timedelta(days=7))
    assert reason is not None and reason.startswith("before-expiry")
    assert b.due(kv(), T0 + timedelta(days=83)) is not None  # falls back to created + max_key_age


def test_usage_boundary_and_default_bound() -> None:
    u = UsageRotation(1000)
    assert u.due(kv(encryptions=999), T0) is None
    assert u.due(kv(encryptions=1000), T0) is not None
    assert UsageRotation().max_encryptions == 2**30


class TestScheduled:
    s = ScheduledRotation("0 2 * * SUN")  # 2026-03-01 is a Sunday

    def test_not_due_before_the_first_fire_after_creation(self) -> None:
        active = kv(created=datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
        assert self.s.due(active, datetime(2026, 3, 8, 1, 59, 59, tzinfo=UTC)) is None

    def test_due_exactly_at_the_fire_time(self) -> None:
        active = kv(created=datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
        assert self.s.due(active, datetime(2026, 3, 8, 2, 0, tzinfo=UTC)) is not None

    def test_late_pass_rotates_once_not_zero_or_twice(self) -> None:
        active = kv(created=datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
        late = datetime(2026, 3, 8, 9, 30, tzinfo=UTC)  # 7.5 h after the fire: the seed's 5-minute window missed this
        assert self.s.due(active, late) is not None
        rotated = kv(version=2, created=late)
        assert self.s.due(rotated, late + timedelta(minutes=1)) is None
        assert self.s.due(rotated, datetime(2026, 3, 15, 1, 0, tzinfo=UTC)) is None
        assert self.s.due(rotated, datetime(2026, 3, 15, 2, 0, tzinfo=UTC)) is not None

    def test_utc_semantics_without_dst(self) -> None:
        # Europe's DST switch is 2026-03-29; in UTC the fire stays at 02:00.
        active = kv(created=datetime(2026, 3, 28, 0, 0, tzinfo=UTC))
        assert self.s.due(active, datetime(2026, 3, 29, 1, 59, tzinfo=UTC)) is None
        assert self.s.due(active, datetime(2026, 3, 29, 2, 0, tzinfo=UTC)) is not None

    def test_six_fields_take_seconds_first_and_seven_are_rejected(self) -> None:
        s6 = ScheduledRotation("30 0 2 * * SUN")  # 02:00:30 every Sunday
        active = kv(created=datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
        assert s6.due(active, datetime(2026, 3, 8, 2, 0, 29, tzinfo=UTC)) is None
        assert s6.due(active, datetime(2026, 3, 8, 2, 0, 30, tzinfo=UTC)) is not None
        with pytest.raises(nc.ConfigError, match="rotation.cron"):
            ScheduledRotation("0 0 0 2 * * SUN")


def test_configured_strategy_always_includes_usage() -> None:
    cfg = nc.KeyManagementConfig.from_dict({"rotation": {"strategy": "periodic", "interval": "1d", "max_encryptions": 5}})
    s = strategy_from_config(cfg)
    assert s.due(kv(encryptions=5), T0) is not None  # usage
    assert s.due(kv(), T0 + timedelta(days=1)) is not None  # periodic
    manual = strategy_from_config(nc.KeyManagementConfig.from_dict({"rotation": {"strategy": "manual"}}))
    assert manual.due(kv(), T0 + timedelta(days=1000)) is None
    assert manual.due(kv(encryptions=2**30), T0) is not None


def _ctx(now: datetime, versions: list[KeyVersion], refs: dict[int, int] | None = None) -> RetentionContext:
    return RetentionContext(now=now, versions=versions, references=refs or {})


def test_minimum_retention_is_measured_from_revocation_not_creation() -> None:
    old = kv(version=1, created=T0 - timedelta(days=400), status=KeyStatus.REVOKED, revoked_at=T0)
    policy = MinimumRetention(timedelta(days=90))
    assert policy.allows(old, _ctx(T0 + timedelta(days=90) - S, [old])) is None
    assert policy.allows(old, _ctx(T0 + timedelta(days=90), [old])) is not None


def test_version_based_keeps_the_newest() -> None:
    vs = [kv(version=i, status=KeyStatus.REVOKED if i < 4 else KeyStatus.ACTIVE) for i in range(1, 5)]
    policy = VersionBased(3)
    assert policy.allows(vs[0], _ctx(T0, vs)) is not None
    assert policy.allows(vs[1], _ctx(T0, vs)) is None
    with pytest.raises(nc.ConfigError, match="retention.max_versions"):
        VersionBased(0)


def test_until_reencrypted_counts_references() -> None:
    v = kv(version=1, status=KeyStatus.REVOKED)
    assert UntilReEncrypted().allows(v, _ctx(T0, [v], {1: 2})) is None
    assert UntilReEncrypted().allows(v, _ctx(T0, [v], {})) is not None


def test_callable_policy_names_itself() -> None:
    policy = CallableRetention(lambda v, c: "odd versions go" if v.version % 2 else None, name="odd")
    assert policy.allows(kv(version=3), _ctx(T0, [])) == "odd: odd versions go"
    assert policy.allows(kv(version=2), _ctx(T0, [])) is None
