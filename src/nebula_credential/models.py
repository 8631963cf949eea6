"""Plain records passed between layers: key versions and stored credentials.

They carry metadata and ciphertext only, never plaintext or raw key bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class KeyStatus(enum.StrEnum):
    """Lifecycle of a key version (DESIGN.md, key lifecycle contract)."""

    ACTIVE = "active"
    VALID = "valid"
    GRACE = "grace"
    REVOKED = "revoked"
    DESTROYED = "destroyed"

    @property
    def can_encrypt(self) -> bool:
        return self is KeyStatus.ACTIVE

    @property
    def can_decrypt(self) -> bool:
        return self in (KeyStatus.ACTIVE, KeyStatus.VALID, KeyStatus.GRACE)


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_epoch(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def from_epoch(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """Metadata of one DEK version; the DEK itself appears only wrapped."""

    keyring: str
    version: int
    status: KeyStatus
    created_at: datetime
    provider: str
    root_key_id: str = ""
    wrapped_key: bytes | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    status_changed_at: datetime | None = None
    revoked_at: datetime | None = None
    destroyed_at: datetime | None = None
    encryptions: int = 0
    reason: str = ""

    def to_json(self, credentials: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "status": str(self.status),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }
        if credentials is not None:
            out["credentials"] = credentials
        return out


@dataclass(frozen=True, slots=True)
class EncryptedCredential:
    """A credential as stored: the envelope plus the fields bound into its AAD."""

    keyring: str
    id: str
    scope: str
    key_version: int
    envelope: bytes = field(repr=False)
    metadata: dict[str, Any]
    revision: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    """A decrypted credential as returned to the application."""

    id: str
    scope: str
    key_version: int
    value: Any = field(repr=False)
    metadata: dict[str, Any]
    revision: int
    #: When the stored record was created and last written (None for a legacy read-through).
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: The version read, when one was asked for (``get_record(id, version=N)``); None for the current one.
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "scope": self.scope,
            "key_version": self.key_version,
            "value": self.value,
            "metadata": self.metadata,
        }
        if self.version is not None:
            out["version"] = self.version
        return out
