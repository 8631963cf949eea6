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

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .exceptions import (  # exactly exceptions.__all__ (tests/test_api.py checks)
    BackupError,
    CheckAndSetError,
    CheckAndSetRequiredError,
    CommitOutcomeUnknownError,
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
    TransientStoreError,
)

if TYPE_CHECKING:
    from .aio import AsyncKeys, AsyncVault, aopen
    from .audit import AuditLog
    from .config import KeyManagementConfig
    from .envelope import Envelope, credential_context
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

#: Public name -> the module that defines it, imported on first access (PEP 562).
#: Importing the package stays cheap: the command line's ``--help`` imports none of
#: the store, the providers or ``cryptography``, and ``nc.Vault`` still works.
#: ``Vault.maintain``/``status`` load the operations layer themselves (vault.OPERATIONS_MODULE).
_LAZY: dict[str, str] = {
    **dict.fromkeys(("AsyncKeys", "AsyncVault", "aopen"), "aio"),
    "AuditLog": "audit",
    "KeyManagementConfig": "config",
    **dict.fromkeys(("Envelope", "credential_context"), "envelope"),
    **dict.fromkeys(("KVSettings", "SecretVersions", "VersionInfo"), "history"),
    **dict.fromkeys(("KeyManager", "VersionedKey"), "keys"),
    "KeyMetrics": "metrics",
    **dict.fromkeys(("Credential", "EncryptedCredential", "KeyStatus", "KeyVersion"), "models"),
    "open": "opening",
    **dict.fromkeys(
        (
            "BeforeExpiryRotation", "KeyRetentionPolicy", "ManualRotation", "MinimumRetention",
            "PeriodicRotation", "RotationStrategy", "ScheduledRotation", "UntilReEncrypted",
            "UsageRotation", "VersionBased",
        ),
        "policies",
    ),
    "KeyProvider": "providers",
    "ReencryptResult": "reencrypt",
    "Vault": "vault",
}


def __getattr__(name: str) -> Any:
    """A public name from its module, or a submodule (``nc.store``), imported on first use."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AsyncKeys",
    "AsyncVault",
    "AuditLog",
    "BackupError",
    "BeforeExpiryRotation",
    "CheckAndSetError",
    "CheckAndSetRequiredError",
    "CommitOutcomeUnknownError",
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
    "TransientStoreError",
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
