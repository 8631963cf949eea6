"""Retention policies: when may a revoked version's material be destroyed?

Retention is measured from revocation, not creation.  A policy only says
whether it *allows* destruction; the lifecycle layer additionally refuses
to destroy any version a stored credential still references, whatever the
policy says.  Backups may still need old versions: ``until-reencrypted``
alone suits a store without backups; a backed-up store wants
``minimum-retention`` longer than the backup window.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..config import KeyManagementConfig
from ..durations import format_duration
from ..exceptions import ConfigError
from ..models import KeyStatus, KeyVersion


@dataclass(frozen=True, slots=True)
class RetentionContext:
    now: datetime
    versions: Sequence[KeyVersion]
    references: dict[int, int]


class KeyRetentionPolicy(ABC):
    """Decides whether a revoked version may be destroyed, and says why."""

    name: str = "abstract"

    @abstractmethod
    def allows(self, kv: KeyVersion, ctx: RetentionContext) -> str | None:
        """The reason destruction is allowed, or None to keep the version."""

    def keeps(self, kv: KeyVersion, ctx: RetentionContext) -> tuple[str, datetime | None] | None:
        """Why this policy keeps ``kv`` and until when (None for the date when it cannot say), or None.

        ``keys cleanup --dry-run`` names what each kept version waits for;
        the decision itself stays :meth:`allows`, so the two never disagree.
        """
        if self.allows(kv, ctx) is not None:
            return None
        return self._keep_reason(kv, ctx)

    def _keep_reason(self, kv: KeyVersion, ctx: RetentionContext) -> tuple[str, datetime | None]:
        return f"retention policy {self.name!r} keeps it for now", None


class MinimumRetention(KeyRetentionPolicy):
    name = "minimum-retention"

    def __init__(self, min_retention: timedelta) -> None:
        if min_retention < timedelta(0):
            raise ConfigError("retention.min_retention", "must not be negative")
        self.min_retention = min_retention

    def allows(self, kv: KeyVersion, ctx: RetentionContext) -> str | None:
        if kv.revoked_at is None:
            return None
        held = ctx.now - kv.revoked_at
        if held >= self.min_retention:
            return f"minimum-retention: revoked {format_duration(held)} ago (>= {format_duration(self.min_retention)})"
        return None

    def _keep_reason(self, kv: KeyVersion, ctx: RetentionContext) -> tuple[str, datetime | None]:
        minimum = format_duration(self.min_retention)
        if kv.revoked_at is None:
            return f"minimum-retention ({minimum}) counts from revocation; v{kv.version} is not revoked", None
        return f"retention minimum {minimum} from revocation", kv.revoked_at + self.min_retention


class VersionBased(KeyRetentionPolicy):
    """Keep the newest ``max_versions`` versions that still hold material."""

    name = "version-based"

    def __init__(self, max_versions: int) -> None:
        if max_versions < 1:
            raise ConfigError("retention.max_versions", "must be at least 1")
        self.max_versions = max_versions

    def allows(self, kv: KeyVersion, ctx: RetentionContext) -> str | None:
        kept = sorted((v.version for v in ctx.versions if v.status is not KeyStatus.DESTROYED), reverse=True)
        if kv.version not in kept[: self.max_versions]:
            return f"version-based: v{kv.version} is older than the newest {self.max_versions} versions"
        return None

    def _keep_reason(self, kv: KeyVersion, ctx: RetentionContext) -> tuple[str, datetime | None]:
        return f"version-based retention keeps the newest {self.max_versions} version(s) with material", None


class UntilReEncrypted(KeyRetentionPolicy):
    """Destroy as soon as no stored credential references the version."""

    name = "until-reencrypted"

    def allows(self, kv: KeyVersion, ctx: RetentionContext) -> str | None:
        refs = ctx.references.get(kv.version, 0)
        if refs == 0:
            return "until-reencrypted: no stored credential references it"
        return None

    def _keep_reason(self, kv: KeyVersion, ctx: RetentionContext) -> tuple[str, datetime | None]:
        return "until-reencrypted keeps it while a stored credential references it", None


class CallableRetention(KeyRetentionPolicy):
    """A Python callable ``(KeyVersion, RetentionContext) -> reason | None``.

    It is asked about every retired version (valid, grace and revoked, used
    or not) so it can reason about all of them; cleanup's guard still applies
    after it: only a revoked, unreferenced version outside ``keep_versions``
    is destroyed, whatever the callable answers.
    """

    def __init__(self, fn: Callable[[KeyVersion, RetentionContext], str | None], name: str = "callable") -> None:
        self.fn = fn
        self.name = name

    def allows(self, kv: KeyVersion, ctx: RetentionContext) -> str | None:
        reason = self.fn(kv, ctx)
        return f"{self.name}: {reason}" if reason else None


def kept_versions(versions: Sequence[KeyVersion], keep: int) -> set[int]:
    """The newest ``keep`` version numbers (the active one and those just before it).

    These are never destroyed whatever the policy says, so ciphertext held
    outside the store (backups, caches, queues) still opens after a rotation.
    """
    return set(sorted((v.version for v in versions), reverse=True)[:keep])


def load_callable(target: str) -> Callable[[KeyVersion, RetentionContext], str | None]:
    """Import ``package.module:function`` named in the process's own config file.

    Only the config file (process configuration, like a plugin setting) names
    code to load; nothing read from the store ever does.
    """
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The usual cause: the module lives beside the operator's code, not on this process's path.
        raise ConfigError("retention.callable", (
            f"cannot load {target!r}: module {module_name!r} is not importable ({exc}); install the package "
            "that provides it, or add its folder to PYTHONPATH of every process that reads this config "
            "(CLI, daemon, server)")) from None
    except ImportError as exc:
        raise ConfigError("retention.callable", f"cannot load {target!r}: importing module {module_name!r} "
                          f"failed: {type(exc).__name__}: {exc}") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ConfigError("retention.callable", f"cannot load {target!r}: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise ConfigError("retention.callable", f"{target!r} is not callable")
    fn: Callable[[KeyVersion, RetentionContext], str | None] = obj
    return fn


def retention_from_config(config: KeyManagementConfig) -> KeyRetentionPolicy:
    r = config.retention
    if r.policy == "custom":
        return CallableRetention(load_callable(r.callable), name=f"custom:{r.callable}")
    if r.policy == "minimum-retention":
        return MinimumRetention(r.min_retention)
    if r.policy == "version-based":
        return VersionBased(r.max_versions)
    if r.policy == "until-reencrypted":
        return UntilReEncrypted()
    raise ConfigError("retention.policy", f"unknown policy {r.policy!r}")  # pragma: no cover
