"""Root key in HashiCorp Vault Transit (tested against OpenBao, same Transit API).

The root key is one named transit key of type ``aes256-gcm96`` created with
``derived=true``.  A DEK is wrapped with ``transit/encrypt/<key>`` and
unwrapped with ``transit/decrypt/<key>``; the stored form is Vault's own
ciphertext string (``vault:vN:...``), which names the transit key version
that wrapped it.

Binding to keyring and version: every call passes the derived-key
``context`` = ``WrapContext.as_bytes()`` (keyring, version and purpose,
length-prefixed).  Vault derives a per-context key from the transit key, so
a wrapped DEK presented with another keyring or version fails to decrypt.
We chose derived-key context over ``associated_data`` because
``transit/rewrap`` accepts ``context`` but takes no associated data: with
context, ``provider rotate`` is transit ``rotate`` followed by ``rewrap`` of
every DEK, and the plaintext DEK never leaves Vault
(``server_side_rewrap = True``).

``min_decryption_version`` is honoured by Vault itself; when it refuses a
DEK wrapped under an older transit key version we say which version, which
minimum, and the fix (``provider rotate`` rewraps every DEK under the
latest version; or lower ``min_decryption_version``).

Errors: 5xx, 429 and connection failures are raised as
:class:`TransientProviderError`, which the base class retries with bounded
backoff before a clear :class:`ProviderUnavailableError`; 403 is a
:class:`ProviderPermissionError` (never retried); a token Vault does not
know is reported as such when the provider is built.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

from .._extras import extra
from .._secret import SecretBytes
from ..config import secret_from
from ..exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
)
from .base import KeyProvider, TransientProviderError, WrapContext

with extra("vault", "hvac"):
    import hvac
    import hvac.exceptions as hvac_errors
    import requests

T = TypeVar("T")

_VERSION_RE = re.compile(r"^vault:v(\d+):")
_TRANSIENT = (
    hvac_errors.InternalServerError,
    hvac_errors.VaultDown,
    hvac_errors.BadGateway,
    hvac_errors.RateLimitExceeded,
    hvac_errors.UnexpectedError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
)


def wrapped_version(wrapped: bytes) -> int | None:
    """The transit key version named by a stored ciphertext (``vault:vN:``), if any."""
    m = _VERSION_RE.match(wrapped.decode("ascii", "replace"))
    return int(m.group(1)) if m else None


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultTransitProvider(KeyProvider):
    """DEKs wrapped by a derived transit key, bound to keyring and version by ``context``."""

    name: ClassVar[str] = "vault-transit"
    server_side_rewrap: ClassVar[bool] = True

    def __init__(
        self,
        client: Any,
        key_name: str,
        *,
        mount: str = "transit",
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self._transit = client.secrets.transit
        self.key_name = key_name
        self.mount = mount
        self._settings = dict(settings or {})
        self._approle = bool(self._settings.get("role_id_file"))
        self._latest = 0
        self._min_decryption = 1
        # retried like any call, but not counted: ``calls`` counts key operations
        self._call("read-key", self._refresh)
        self.calls.pop("read-key", None)

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> VaultTransitProvider:
        for required in ("url", "key_name"):
            if not settings.get(required):
                raise ConfigError(f"provider.{required}", "required for the vault-transit provider")
        mount = str(settings.get("mount") or "transit")
        key_name = str(settings["key_name"])
        client = cls.make_client(settings)
        if create:
            cls._ensure_key(client, mount, key_name)
        return cls(client, key_name, mount=mount, settings=settings)

    @staticmethod
    def make_client(settings: dict[str, Any]) -> Any:
        """An authenticated hvac client: token file/env or AppRole from files; TLS as set."""
        verify: bool | str = settings.get("ca_cert") or settings.get("verify", True)
        cert = None
        if settings.get("client_cert"):
            if not settings.get("client_key"):
                raise ConfigError("provider.client_key", "required with client_cert")
            cert = (str(settings["client_cert"]), str(settings["client_key"]))
        client = hvac.Client(
            url=str(settings["url"]),
            namespace=settings.get("namespace") or None,
            verify=verify,
            cert=cert,
            timeout=int(settings.get("timeout", 15)),
        )
        if settings.get("role_id_file"):
            _approle_login(client, settings)
        else:
            token = secret_from(settings, "token")
            if not token:
                raise ConfigError(
                    "provider.token_file",
                    "set token_file or token_env (or role_id_file and secret_id_file for AppRole)",
                )
            client.token = token
        return client

    @classmethod
    def _ensure_key(cls, client: Any, mount: str, key_name: str) -> None:
        """Create the transit key (aes256-gcm96, derived) unless it exists."""

        def read() -> Any:
            return client.secrets.transit.read_key(name=key_name, mount_point=mount)

        try:
            read()
        except hvac_errors.InvalidPath:
            _vault_call(
                "create-key",
                f"{mount}/{key_name}",
                lambda: client.secrets.transit.create_key(
                    name=key_name, key_type="aes256-gcm96", derived=True, mount_point=mount
                ),
            )
        except Exception as exc:
            _raise_for(exc, "read-key", f"{mount}/{key_name}")

    # ---- one Vault call ---------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.mount}/{self.key_name}"

    def _api(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except hvac_errors.Forbidden:
            if not self._approle:
                raise self._denied(op) from None
        except Exception as exc:
            _raise_for(exc, op, self._where)
        # An AppRole token may have expired: log in again once, then give up.
        _approle_login(self._client, self._settings)
        try:
            return fn()
        except hvac_errors.Forbidden:
            raise self._denied(op) from None
        except Exception as exc:
            _raise_for(exc, op, self._where)

    def _denied(self, op: str) -> ProviderPermissionError:
        return ProviderPermissionError(
            f"Vault denied {op} on transit key {self._where} (403 permission denied): the token "
            f"is invalid or expired, or its policy lacks 'update' on "
            f"{self.mount}/{op}/{self.key_name}"
        )

    def _refresh(self) -> None:
        try:
            data = self._transit.read_key(name=self.key_name, mount_point=self.mount)["data"]
        except hvac_errors.InvalidPath:
            raise ConfigError(
                "provider.key_name",
                f"transit key {self.key_name!r} not found at mount {self.mount!r}; "
                "check key_name/mount, or run `nebula-credential init` to create it",
            ) from None
        except hvac_errors.Forbidden:
            if not self._client.is_authenticated():
                raise ProviderPermissionError(
                    "Vault rejected the token (unknown, revoked or expired); "
                    "check token_file/token_env or the AppRole credentials"
                ) from None
            raise self._denied("read-key") from None
        except Exception as exc:
            _raise_for(exc, "read-key", self._where)
        if data.get("type") != "aes256-gcm96" or not data.get("derived"):
            raise ConfigError(
                "provider.key_name",
                f"transit key {self._where} must be type aes256-gcm96 with derived=true "
                f"(it is {data.get('type')}, derived={data.get('derived')})",
            )
        self._latest = int(data["latest_version"])
        self._min_decryption = int(data.get("min_decryption_version") or 1)

    # ---- hooks -------------------------------------------------------------
    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        resp = self._api(
            "encrypt",
            lambda: self._transit.encrypt_data(
                name=self.key_name,
                plaintext=_b64(dek.buffer),
                context=_b64(ctx.as_bytes()),
                mount_point=self.mount,
            ),
        )
        return str(resp["data"]["ciphertext"]).encode("ascii")

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        try:
            resp = self._api(
                "decrypt",
                lambda: self._transit.decrypt_data(
                    name=self.key_name,
                    ciphertext=wrapped.decode("ascii"),
                    context=_b64(ctx.as_bytes()),
                    mount_point=self.mount,
                ),
            )
        except _TooOld:
            raise self._too_old(wrapped, ctx) from None
        raw = bytearray(base64.b64decode(resp["data"]["plaintext"]))
        return SecretBytes(raw)

    def _rewrap(self, wrapped: bytes, ctx: WrapContext) -> bytes:
        """transit/rewrap: the DEK moves to the latest key version inside Vault."""
        try:
            resp = self._api(
                "rewrap",
                lambda: self._transit.rewrap_data(
                    name=self.key_name,
                    ciphertext=wrapped.decode("ascii"),
                    context=_b64(ctx.as_bytes()),
                    mount_point=self.mount,
                ),
            )
        except _TooOld:
            raise self._too_old(wrapped, ctx) from None
        return str(resp["data"]["ciphertext"]).encode("ascii")

    def _rotate(self) -> str:
        self._api(
            "rotate", lambda: self._transit.rotate_key(name=self.key_name, mount_point=self.mount)
        )
        self._refresh()
        return self.root_key_id()

    def _too_old(self, wrapped: bytes, ctx: WrapContext) -> ProviderError:
        with contextlib.suppress(ProviderError):
            self._refresh()
        version = wrapped_version(wrapped)
        return ProviderError(
            f"data key {ctx.keyring}/v{ctx.version} is wrapped under transit key {self._where} "
            f"version {version}, below its min_decryption_version {self._min_decryption}; "
            "Vault refuses to unwrap it. Lower min_decryption_version on the transit key to "
            f"{version} (or less) to recover, then run `nebula-credential provider rotate`, which "
            "rewraps every data key under the latest version, before raising it again"
        )

    # ---- facts -------------------------------------------------------------
    def root_key_id(self) -> str:
        return f"vault-transit:{self._where}#v{self._latest}"

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "url": self._settings.get("url"),
            "namespace": self._settings.get("namespace"),
            "mount": self.mount,
            "key_name": self.key_name,
            "latest_version": self._latest,
            "min_decryption_version": self._min_decryption,
            "root_key_id": self.root_key_id(),
        }

    def close(self) -> None:
        session = getattr(getattr(self._client, "adapter", None), "session", None)
        if session is not None:
            session.close()


class _TooOld(ProviderError):
    """Vault refused a ciphertext below min_decryption_version (mapped by the hook)."""


def _approle_login(client: Any, settings: dict[str, Any]) -> None:
    role_id = secret_from(settings, "role_id")
    secret_id = secret_from(settings, "secret_id")
    if not role_id or not secret_id:
        raise ConfigError(
            "provider.secret_id_file", "AppRole needs role_id_file and secret_id_file"
        )
    mount = str(settings.get("approle_mount") or "approle")
    try:
        client.auth.approle.login(role_id=role_id, secret_id=secret_id, mount_point=mount)
    except (hvac_errors.InvalidRequest, hvac_errors.Forbidden, hvac_errors.Unauthorized):
        raise ProviderPermissionError(
            f"Vault AppRole login at auth/{mount} was refused; "
            "check role_id_file and secret_id_file"
        ) from None
    except Exception as exc:
        _raise_for(exc, "approle-login", f"auth/{mount}")


def _vault_call(op: str, where: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as exc:
        _raise_for(exc, op, where)


def _raise_for(exc: Exception, op: str, where: str) -> NoReturn:
    """Map an hvac/requests failure to our typed errors; never echo bodies (they may hold data)."""
    if isinstance(exc, requests.exceptions.SSLError):
        raise ProviderError(
            f"TLS to Vault failed during {op}; check ca_cert/client_cert/verify"
        ) from None
    if isinstance(exc, _TRANSIENT):
        raise TransientProviderError(f"Vault {op} on {where}: {type(exc).__name__}") from None
    if isinstance(exc, hvac_errors.Forbidden | hvac_errors.Unauthorized):
        raise ProviderPermissionError(
            f"Vault denied {op} on {where}: the token is invalid or lacks the policy"
        ) from None
    if isinstance(exc, hvac_errors.InvalidPath):
        raise ConfigError(
            "provider.key_name", f"Vault has no {where} ({op} returned 404)"
        ) from None
    if isinstance(exc, hvac_errors.InvalidRequest):
        errors = " ".join(str(e) for e in (exc.errors or []))
        if "too old" in errors or "disallowed by policy" in errors:
            raise _TooOld(errors) from None
        if "message authentication failed" in errors or "invalid ciphertext" in errors:
            raise DecryptionError(
                f"Vault could not unwrap the data key with transit key {where} "
                "(wrong key, or the data key belongs to another keyring/version)"
            ) from None
        raise ProviderError(f"Vault refused {op} on {where}: {errors[:200]}") from None
    if isinstance(exc, hvac_errors.VaultError):
        raise ProviderError(f"Vault {op} on {where} failed: {type(exc).__name__}") from None
    if isinstance(exc, requests.exceptions.RequestException):
        raise TransientProviderError(f"Vault {op} on {where}: {type(exc).__name__}") from None
    raise exc
