"""nebula-credential: key management for credential stores.

Versioned AES-256-GCM data keys wrapped by a root of trust (local key file,
PKCS#11 HSM, AWS KMS, Azure Key Vault, Vault Transit), zero-downtime
rotation with background re-encryption, a key lifecycle with retention, and
a tamper-evident audit trail.

    >>> import nebula_credential as nc
    >>> km = nc.KeyManager.ephemeral()
    >>> km.decrypt(km.encrypt(b"secret", aad=b"ctx"), aad=b"ctx")
    b'secret'
"""

from __future__ import annotations

# the operations layer registers Vault.maintain()/status() on import (see vault.register_operations)
from . import maintenance as _operations  # noqa: F401
from ._version import __version__
from .aio import AsyncKeys, AsyncVault, aopen
from .audit import AuditLog
from .config import KeyManagementConfig
from .envelope import Envelope, credential_context
from .exceptions import (
    ConcurrencyError,
    ConfigError,
    CorruptRecordError,
    CredentialNotFoundError,
    DecryptionError,
    EnvelopeFormatError,
    InvalidInputError,
    KeyDestroyedError,
    KeyNotFoundError,
    KeyRevokedError,
    MissingDependencyError,
    NebulaCredentialError,
    PolicyViolationError,
    ProviderError,
    ProviderPermissionError,
    ProviderUnavailableError,
    StoreError,
    StoreUnavailableError,
)
from .history import KVSettings, SecretVersions, VersionInfo
from .keys import KeyManager, VersionedKey
from .metrics import KeyMetrics
from .models import Credential, EncryptedCredential, KeyStatus, KeyVersion
from .opening import open
from .policies import (
    BeforeExpiryRotation,
    KeyRetentionPolicy,
    ManualRotation,
    MinimumRetention,
    PeriodicRotation,
    RotationStrategy,
    ScheduledRotation,
    UntilReEncrypted,
    UsageRotation,
    VersionBased,
)
from .providers import KeyProvider
from .reencrypt import ReencryptResult
from .vault import Vault

__all__ = [
    "AsyncKeys",
    "AsyncVault",
    "AuditLog",
    "BeforeExpiryRotation",
    "ConcurrencyError",
    "ConfigError",
    "CorruptRecordError",
    "Credential",
    "CredentialNotFoundError",
    "DecryptionError",
    "EncryptedCredential",
    "Envelope",
    "EnvelopeFormatError",
    "InvalidInputError",
    "KVSettings",
    "KeyDestroyedError",
    "KeyManagementConfig",
    "KeyManager",
    "KeyMetrics",
    "KeyNotFoundError",
    "KeyProvider",
    "KeyRetentionPolicy",
    "KeyRevokedError",
    "KeyStatus",
    "KeyVersion",
    "ManualRotation",
    "MinimumRetention",
    "MissingDependencyError",
    "NebulaCredentialError",
    "PeriodicRotation",
    "PolicyViolationError",
    "ProviderError",
    "ProviderPermissionError",
    "ProviderUnavailableError",
    "ReencryptResult",
    "RotationStrategy",
    "ScheduledRotation",
    "SecretVersions",
    "StoreError",
    "StoreUnavailableError",
    "UntilReEncrypted",
    "UsageRotation",
    "Vault",
    "VersionBased",
    "VersionInfo",
    "VersionedKey",
    "__version__",
    "aopen",
    "credential_context",
    "open",
]
