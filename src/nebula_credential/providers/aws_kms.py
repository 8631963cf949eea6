"""Root key in AWS KMS (tested against ``moto_server``).

One symmetric KMS key is the root of trust.  DEKs come from
``GenerateDataKey`` (AES_256); the stored form is KMS's own
``CiphertextBlob``, bound to an encryption context naming the keyring,
version and purpose (``WrapContext.as_dict``), which every ``Decrypt`` and
``ReEncrypt`` must present again.

Root rotation is ``RotateKeyOnDemand``: the key id stays, KMS adds new key
material and keeps the old material for decryption.  ``provider rotate``
then calls ``ReEncrypt`` on every wrapped DEK, so the DEK is moved to the
new material without its plaintext ever leaving KMS
(``server_side_rewrap``).  The root key id we record is the key ARN plus
the number of rotations KMS lists for it.

Retries for throttling and network errors are botocore's (``standard``
mode, bounded attempts); after them the caller gets a clear
:class:`ProviderUnavailableError`, not a botocore traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from .._extras import extra
from .._secret import SecretBytes
from ..exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
    ProviderUnavailableError,
)
from .base import KeyProvider, WrapContext

with extra("aws", "boto3"):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

log = logging.getLogger(__name__)

_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "ServiceUnavailable",
        "InternalFailure",
    }
)
_DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignature",
    }
)
_CIPHERTEXT_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_STATE_CODES = frozenset(
    {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}
)

#: How long ``provider rotate`` waits for KMS to list the new key material.
ROTATION_WAIT_SECONDS = 60.0

#: botocore loggers that print request or response bodies at DEBUG.
_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.httpsession")


class RedactKmsBodies(logging.Filter):
    """Keep DEK plaintext out of botocore's DEBUG logs (``--debug`` turns them on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        if "Plaintext" in message:
            record.msg, record.args = "<KMS body redacted by nebula-credential>", ()
        return True


def install_log_redaction() -> None:
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKmsBodies) for f in logger.filters):
            logger.addFilter(RedactKmsBodies())


def _int(settings: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = settings.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"provider.{name}", f"must be an integer from {lo} to {hi}")
    return value


class AwsKmsKeyProvider(KeyProvider):
    """Envelope encryption under one symmetric AWS KMS key."""

    name: ClassVar[str] = "aws-kms"
    server_side_rewrap: ClassVar[bool] = True

    def __init__(self, client: Any, key_id: str, *, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._client = client
        self._settings = dict(settings or {})
        self._lock = threading.Lock()
        self._created = False  # by from_config, for an init: discard_created_root may undo it
        meta = self._api("describe", lambda: client.describe_key(KeyId=key_id))["KeyMetadata"]
        if (
            meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
            or meta.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT"
        ):
            raise ConfigError(
                "provider.key_id", f"KMS key {key_id} is not a symmetric ENCRYPT_DECRYPT key"
            )
        if meta.get("KeyState") not in (None, "Enabled"):
            raise ProviderError(
                f"KMS key {meta['Arn']} is {meta.get('KeyState')}; enable it to use it"
            )
        self.key_id = key_id
        self.key_arn: str = meta["Arn"]
        self._key_uuid = str(meta.get("KeyId") or meta["Arn"])
        self._rotations = self._count_rotations()

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> AwsKmsKeyProvider:
        client = cls.make_client(settings)
        key_id = settings.get("key_id")
        stored = dict(settings)
        if not key_id:
            if not create:
                raise ConfigError("provider.key_id", "set the KMS key id, ARN or alias/NAME")
            key_id = client.create_key(
                Description="nebula-credential root key",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
                Tags=[{"TagKey": "nebula-credential", "TagValue": "root"}],
            )["KeyMetadata"]["Arn"]
            stored["key_id"] = key_id
            provider = cls(client, str(key_id), settings=stored)
            provider._created = True
            return provider
        return cls(client, str(key_id), settings=stored)

    def discard_created_root(self) -> None:
        """Schedule the deletion of the KMS key :meth:`from_config` created (7 days, cancellable).

        Without it every failed ``init`` on a config without ``key_id`` left a
        key behind, billed and never used.  KMS only deletes after a waiting
        period; ``aws kms cancel-key-deletion`` takes it back.
        """
        if not self._created:
            return
        try:
            self._client.schedule_key_deletion(KeyId=self._key_uuid, PendingWindowInDays=7)
            log.warning("init failed: the KMS key it created, %s, is scheduled for deletion in 7 days "
                        "(aws kms cancel-key-deletion to keep it)", self.key_arn)
        except Exception as exc:  # cleanup of a failing init: the init's own error is the one to report
            log.warning("init failed and the KMS key it created, %s, could not be scheduled for deletion "
                        "(%s): delete it by hand", self.key_arn, type(exc).__name__)

    @staticmethod
    def make_client(settings: dict[str, Any]) -> Any:
        """A KMS client: ``profile`` or the default chain; bounded retries and timeouts."""
        install_log_redaction()
        config = Config(
            retries={
                "mode": "standard",
                "total_max_attempts": _int(settings, "max_attempts", 4, 1, 20),
            },
            connect_timeout=_int(settings, "connect_timeout", 5, 1, 300),
            read_timeout=_int(settings, "read_timeout", 15, 1, 300),
            user_agent_extra="nebula-credential",
        )
        try:
            session = boto3.session.Session(
                profile_name=settings.get("profile"), region_name=settings.get("region")
            )
        except ProfileNotFound:
            raise ConfigError(
                "provider.profile", f"AWS profile {settings.get('profile')!r} not found"
            ) from None
        if session.region_name is None:
            raise ConfigError(
                "provider.region", "set region (or AWS_REGION / the profile's region)"
            )
        return session.client(
            "kms", endpoint_url=settings.get("endpoint_url") or None, config=config
        )

    # ---- error mapping -------------------------------------------------------
    def _api(self, op: str, fn: Any) -> Any:
        """One KMS call; botocore has already retried what was worth retrying."""
        try:
            return fn()
        except ClientError as exc:
            self._raise(op, exc)
        except BotoCoreError as exc:  # connection refused/reset, timeouts, after botocore's retries
            raise ProviderUnavailableError(
                f"AWS KMS unreachable during {op} ({type(exc).__name__}) after bounded retries; "
                "check endpoint_url/network and retry"
            ) from None

    def _raise(self, op: str, exc: ClientError) -> NoReturn:
        code = exc.response.get("Error", {}).get("Code", "")
        key = getattr(self, "key_arn", None) or self._settings.get("key_id")
        if code in _UNAVAILABLE_CODES:
            raise ProviderUnavailableError(
                f"AWS KMS {op} failed with {code} after bounded retries"
            ) from None
        if code in _DENIED_CODES:
            hint = (
                " (the data key may be wrapped under another KMS key: wrong key_id for this store?)"
                if op in ("decrypt", "reencrypt")
                else ""
            )
            raise ProviderPermissionError(
                f"AWS KMS denied {op} with key {key} ({code}){hint}"
            ) from None
        if code in _CIPHERTEXT_CODES:
            raise DecryptionError(
                f"AWS KMS refused the wrapped key during {op} ({code}): wrong key or "
                "encryption context"
            ) from None
        if code == "NotFoundException":
            raise ConfigError("provider.key_id", f"KMS key {key} not found") from None
        if code in _STATE_CODES:
            raise ProviderError(
                f"KMS key {key} cannot be used ({code}); check that it is enabled"
            ) from None
        raise ProviderError(f"AWS KMS {op} failed ({code or 'unknown error'})") from None

    # ---- hooks -------------------------------------------------------------
    def _generate(self, ctx: WrapContext) -> tuple[SecretBytes, bytes]:
        """GenerateDataKey: KMS makes the DEK and returns it with its wrapped form."""
        resp = self._api(
            "generate",
            lambda: self._client.generate_data_key(
                KeyId=self.key_arn, KeySpec="AES_256", EncryptionContext=ctx.as_dict()
            ),
        )
        return SecretBytes(bytearray(resp["Plaintext"])), bytes(resp["CiphertextBlob"])

    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        """Encrypt: for keys made here (the audit key, the health probe)."""
        resp = self._api(
            "encrypt",
            lambda: self._client.encrypt(
                KeyId=self.key_arn, Plaintext=dek.to_bytes(), EncryptionContext=ctx.as_dict()
            ),
        )
        return bytes(resp["CiphertextBlob"])

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        """Decrypt, naming our key: KMS refuses a blob wrapped under any other."""
        resp = self._api(
            "decrypt",
            lambda: self._client.decrypt(
                CiphertextBlob=wrapped, KeyId=self.key_arn, EncryptionContext=ctx.as_dict()
            ),
        )
        if resp.get("KeyId") not in (None, self.key_arn):
            raise DecryptionError(
                "AWS KMS unwrapped the data key with another key than this store's"
            )
        return SecretBytes(bytearray(resp["Plaintext"]))

    def _rewrap(self, wrapped: bytes, ctx: WrapContext) -> bytes:
        """ReEncrypt: the DEK moves to the current key material inside KMS."""
        context = ctx.as_dict()
        resp = self._api(
            "reencrypt",
            lambda: self._client.re_encrypt(
                CiphertextBlob=wrapped,
                SourceKeyId=self.key_arn,
                SourceEncryptionContext=context,
                DestinationKeyId=self.key_arn,
                DestinationEncryptionContext=context,
            ),
        )
        return bytes(resp["CiphertextBlob"])

    def _rotate(self) -> str:
        """RotateKeyOnDemand, then wait (bounded) until KMS lists the new rotation."""
        with self._lock:
            before = self._count_rotations()
            self._api("rotate", lambda: self._client.rotate_key_on_demand(KeyId=self.key_arn))
            deadline = time.monotonic() + ROTATION_WAIT_SECONDS
            while (now := self._count_rotations()) <= before:
                if time.monotonic() > deadline:
                    raise ProviderUnavailableError(
                        f"KMS did not finish rotating {self.key_arn} within "
                        f"{ROTATION_WAIT_SECONDS:.0f}s; "
                        "run `nebula-credential provider rotate` again later"
                    )
                time.sleep(1.0)
            self._rotations = now
        return self.root_key_id()

    def _count_rotations(self) -> int:
        count, marker = 0, None
        while True:
            kwargs: dict[str, Any] = {"KeyId": self.key_arn}
            if marker:
                kwargs["Marker"] = marker
            page = self._api(
                "list-rotations", lambda kw=kwargs: self._client.list_key_rotations(**kw)
            )
            count += len(page.get("Rotations", []))
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return count

    # ---- facts -------------------------------------------------------------
    def root_key_id(self) -> str:
        return f"{self.key_arn}#r{self._rotations}"

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "key_arn": self.key_arn,
            "region": self._client.meta.region_name,
            "endpoint_url": self._settings.get("endpoint_url"),
            "root_key_id": self.root_key_id(),
            "rotations": self._rotations,
        }

    def close(self) -> None:
        self._client.close()
