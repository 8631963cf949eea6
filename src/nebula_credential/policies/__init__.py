"""Policies: when to rotate (rotation strategies) and when to destroy (retention)."""

from .retention import (
    CallableRetention,
    KeyRetentionPolicy,
    MinimumRetention,
    RetentionContext,
    UntilReEncrypted,
    VersionBased,
    retention_from_config,
)
from .rotation import (
    AnyOf,
    BeforeExpiryRotation,
    ManualRotation,
    PeriodicRotation,
    RotationStrategy,
    ScheduledRotation,
    UsageRotation,
    strategy_from_config,
)

__all__ = [
    "AnyOf",
    "BeforeExpiryRotation",
    "CallableRetention",
    "KeyRetentionPolicy",
    "ManualRotation",
    "MinimumRetention",
    "PeriodicRotation",
    "RetentionContext",
    "RotationStrategy",
    "ScheduledRotation",
    "UntilReEncrypted",
    "UsageRotation",
    "VersionBased",
    "retention_from_config",
    "strategy_from_config",
]
