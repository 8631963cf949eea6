"""What Vault keeps per Transit key beyond the keyring's versions, and how ``maintain`` treats it.

The record is JSON in the store's meta table (``transit.key:<mount>/<name>``),
with a back-reference ``transit.keyring:<keyring>`` so the scheduler can find
the settings of a keyring it is maintaining.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MAX_ENCRYPTIONS
from ..exceptions import ConfigError
from ..policies.rotation import (
    AnyOf,
    ManualRotation,
    PeriodicRotation,
    RotationStrategy,
    ScheduledRotation,
    UsageRotation,
)

if TYPE_CHECKING:
    from ..store import StoreTx
    from ..vault import Vault

CONFIG_META = "transit.key:"
KEYRING_META = "transit.keyring:"


@dataclass(frozen=True, slots=True)
class TransitKeyConfig:
    """What Vault keeps per key beyond the keyring's versions; stored as JSON in meta."""

    name: str
    keyring: str
    created_at: float
    type: str = "aes256-gcm96"
    derived: bool = False
    exportable: bool = False
    allow_plaintext_backup: bool = False
    #: ``hmac`` keys: the key's length in bytes (Vault's ``key_size``).
    key_size: int = 0
    #: The keyring whose identity ciphertexts and derived keys are bound to: this key's own,
    #: or, for a key restored from a backup, the original key's (so its ciphertexts still open).
    origin: str = ""
    deletion_allowed: bool = False
    #: Vault's ``backup_info`` / ``restore_info``: ``{"time": RFC 3339, "version": N}`` of the last one.
    backup_info: dict[str, Any] | None = None
    restore_info: dict[str, Any] | None = None
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    min_available_version: int = 0
    auto_rotate_period: int = 0  # seconds; 0 = off
    rotation_cron: str = ""
    rotation_timezone: str = "UTC"
    max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS
    #: False: no scheduled rotation, and encryption stops at ``max_encryptions``.
    auto_rotation: bool = True
    generation: int = 1
    deleted: bool = False

    @property
    def binding(self) -> str:
        """The keyring name bound into ciphertexts' associated data and derived keys."""
        return self.origin or self.keyring

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TransitKeyConfig:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def strategy(self) -> RotationStrategy:
        """Rotation for this key: its period and cron (if set) plus the usage bound."""
        usage = UsageRotation(self.max_encryptions)
        if not self.auto_rotation:
            return ManualRotation()
        members: list[RotationStrategy] = []
        if self.auto_rotate_period:
            members.append(PeriodicRotation(timedelta(seconds=self.auto_rotate_period)))
        if self.rotation_cron:
            members.append(ScheduledRotation(self.rotation_cron, self.rotation_timezone))
        return AnyOf([*members, usage]) if members else usage

    def strategy_name(self) -> str:
        if not self.auto_rotation:
            return "manual"
        parts = []
        if self.auto_rotate_period:
            parts.append("periodic")
        if self.rotation_cron:
            parts.append("scheduled")
        return "+".join([*parts, "usage"])


def check_timezone(name: str, field_name: str = "rotation_timezone") -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ConfigError(field_name, "expected an IANA time zone name such as 'UTC' or 'Europe/Berlin'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(field_name, f"unknown time zone {name!r}") from None
    return name


@dataclass(frozen=True, slots=True)
class MaintenancePlan:
    """How ``maintain`` treats a Transit keyring (see :func:`maintenance_plan`)."""

    strategy: RotationStrategy | None  # None: the key is deleted, never rotate it


def settings_of(tx: StoreTx, keyring: str) -> TransitKeyConfig | None:
    """The Transit settings of ``keyring`` (None for an ordinary keyring).

    A keyring whose key was deleted, or re-created under a newer keyring,
    reads as deleted.
    """
    ref = tx.get_meta(KEYRING_META + keyring)
    raw = tx.get_meta(CONFIG_META + ref) if ref else None
    if raw is None:
        return None
    cfg = TransitKeyConfig.from_json(raw)
    return cfg if cfg.keyring == keyring else replace(cfg, keyring=keyring, deleted=True)


def maintenance_plan(vault: Vault) -> MaintenancePlan | None:
    """For a Transit keyring, its own rotation and no reference-driven lifecycle.

    Transit ciphertexts live with the clients, not in our store, so "no stored
    credential references this version" says nothing about them: the
    valid -> grace -> revoked automation would revoke versions clients still
    need.  Their versions retire only by ``min_decryption_version`` and
    ``trim``; retention cleanup still destroys what those revoked.  Returns
    None for an ordinary keyring.
    """
    with vault.store.read() as tx:
        cfg = settings_of(tx, vault.keyring_name)
    if cfg is None:
        return None
    return MaintenancePlan(None if cfg.deleted else cfg.strategy())
