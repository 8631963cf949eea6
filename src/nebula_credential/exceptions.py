"""One exception root, narrow subclasses named for what went wrong.

Authentication failures stay opaque (``DecryptionError`` never says which
byte or why), while facts that are public anyway -- which key version an
envelope names, that it is revoked -- are stated plainly with the fix.
No exception text ever carries key material or plaintext.
"""

from __future__ import annotations


class NebulaCredentialError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(NebulaCredentialError):
    """A configuration value is missing, malformed or out of range."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidInputError(ConfigError, ValueError):
    """A caller-supplied value (id, scope, keyring name, number, JSON) is out of bounds."""


class EnvelopeFormatError(NebulaCredentialError):
    """The blob is not an envelope this version of the library can parse."""


class DecryptionError(NebulaCredentialError):
    """Authentication failed: wrong key, wrong context, or tampered data."""


class KeyNotFoundError(NebulaCredentialError):
    """The key version (or credential) named does not exist."""


class KeyRevokedError(NebulaCredentialError):
    """The key version exists but may not decrypt: it is revoked."""

    def __init__(self, keyring: str, version: int) -> None:
        self.keyring = keyring
        self.version = version
        super().__init__(
            f"key version {version} of keyring {keyring!r} is revoked; "
            f"run `nebula-credential --keyring {keyring} keys reinstate {version}` "
            "to allow decryption again"
        )


class KeyDestroyedError(KeyRevokedError):
    """The key version was destroyed: its material is gone for good."""

    def __init__(self, keyring: str, version: int) -> None:
        self.keyring = keyring
        self.version = version
        NebulaCredentialError.__init__(
            self,
            f"key version {version} of keyring {keyring!r} was destroyed; credentials "
            "under it can only be recovered from a backup taken before the destruction",
        )


class CredentialNotFoundError(KeyNotFoundError):
    """No credential is stored under that id in this keyring."""


class PolicyViolationError(NebulaCredentialError):
    """The operation would break a lifecycle or retention rule."""


class BackupError(NebulaCredentialError):
    """A backup could not be made, verified or restored; nothing was replaced."""


class ConcurrencyError(NebulaCredentialError):
    """Another writer changed the same state first; retry or re-read."""


class CheckAndSetError(ConcurrencyError):
    """A conditional write expected another revision than the stored one."""

    def __init__(self, credential_id: str, expected: int, actual: int | None = None, *,
                 counter: str = "revision") -> None:
        self.expected = expected
        self.actual = actual
        #: "revision" (``put(expected_revision=)``) or "version" (``put(cas=)``, Vault's check-and-set)
        self.counter = counter
        super().__init__(
            f"check-and-set failed for credential {credential_id!r}: expected {counter} {expected}"
            + ("" if actual is None else f", stored {counter} is {actual}")
        )


class CheckAndSetRequiredError(NebulaCredentialError):
    """The credential (or its keyring's KV settings) requires ``cas`` on every write, and none was given."""


class StoreError(NebulaCredentialError):
    """The credential store failed or holds data this library cannot use."""


class CorruptRecordError(StoreError):
    """A stored row is not what its table promises (a column of the wrong type, an
    envelope whose header names another key version than its ``key_version``
    column, unreadable metadata).  The message names the row (credential id,
    key version or audit sequence number), never its secret contents."""

    def __init__(self, message: str, *, record: str = "", key_version: int | None = None) -> None:
        #: printable name of the row (a credential id, ``keyring/vN``, ``audit seq N``)
        self.record = record
        #: the key version the row claims, when it has a readable one
        self.key_version = key_version
        super().__init__(message)


class StoreUnavailableError(StoreError):
    """The store could not be reached (after bounded retries)."""


class TransientStoreError(StoreUnavailableError):
    """The connection failed and the transaction was rolled back: running it again is safe.

    :meth:`Store.run` re-runs the whole transaction on this error with
    bounded backoff; code that holds a transaction open itself sees it as
    a :class:`StoreUnavailableError`.
    """


class CommitOutcomeUnknownError(StoreUnavailableError):
    """The connection failed during COMMIT: the transaction may or may not have applied.

    Only a transaction that can be applied twice without harm (a
    compare-and-swap) may simply be run again; anything else must re-read.
    """


class ProviderError(NebulaCredentialError):
    """The key provider refused or failed an operation."""


class ProviderUnavailableError(ProviderError):
    """The key provider could not be reached (after bounded retries)."""


class ProviderPermissionError(ProviderError):
    """The key provider denied the operation; retrying will not help."""


class MissingDependencyError(NebulaCredentialError, ImportError):
    """An optional backend was selected but its extra is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"the {module!r} package is required for this backend; "
            f"install it with: pip install 'nebula-credential[{extra}]'"
        )


__all__ = [
    "BackupError",
    "CheckAndSetError",
    "CheckAndSetRequiredError",
    "CommitOutcomeUnknownError",
    "ConcurrencyError",
    "ConfigError",
    "CorruptRecordError",
    "CredentialNotFoundError",
    "DecryptionError",
    "EnvelopeFormatError",
    "InvalidInputError",
    "KeyDestroyedError",
    "KeyNotFoundError",
    "KeyRevokedError",
    "MissingDependencyError",
    "NebulaCredentialError",
    "PolicyViolationError",
    "ProviderError",
    "ProviderPermissionError",
    "ProviderUnavailableError",
    "StoreError",
    "StoreUnavailableError",
    "TransientStoreError",
]
