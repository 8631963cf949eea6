"""Root key in Azure Key Vault (RSA, RSA-OAEP-256) or Managed HSM (AES, A256KW).

DEKs are wrapped with ``CryptographyClient.wrap_key`` and unwrapped with
``unwrap_key``; credentials themselves are never encrypted with RSA (the
seed's sketch did, which is size-limited and slow): they are AES-256-GCM
under the DEK as with every provider.

Stored form (``azkv1:`` + compact JSON)::

    {"kid": "https://<vault>/keys/<name>/<version>", "alg": "RSA-OAEP-256", "wk": "<base64url>"}

The key *version* is pinned in ``kid``, so after the Azure key is rotated a
DEK wrapped under an older version is still unwrapped by that version;
``provider rotate`` creates a new version (``rotate_key``) and rewraps every
DEK under it.  Key Vault has no server-side rewrap, so a rewrap is
unwrap + wrap here, the plaintext DEK held only for that call
(``server_side_rewrap = False``).  A record whose ``kid`` names another vault
or key is refused before any request is made, so a planted record cannot send
our bearer token elsewhere.

Binding to keyring and version: RSA-OAEP takes no associated data, so the
value wrapped is a small structure, ``SHA-256(label || WrapContext.as_bytes())
|| DEK`` (64 bytes; fits RSA-OAEP-256 with any RSA size and is a multiple of
8 for A256KW).  Unwrap checks the digest in constant time and refuses a DEK
presented for another keyring or version with :class:`DecryptionError`.

Every wrap and unwrap is a Key Vault call (the SDK's local public-key wrap is
turned off): Key Vault then authorises, logs and, for a disabled key,
refuses each operation, and an ``oct-HSM`` key (whose material a GET never
returns) is never "wrapped locally" by the SDK with a stand-in key.

From the asyncio API (``nc.aopen``) wrap and unwrap go through the SDK's own
asyncio client (``azure.keyvault.keys.crypto.aio`` on aiohttp, with an
``azure.identity.aio`` credential), awaited on the caller's event loop, so a
Key Vault round trip holds no thread; the request, the binding check and the
error mapping are this module's, shared by both paths.  Key management calls
(get, create, rotate the key) stay on the synchronous client, which the
asyncio API runs in its thread pool.

Errors: 5xx, 429 and connection failures are retried by the base class
(bounded backoff, the SDK's own retries turned off) and then reported as
:class:`ProviderUnavailableError`; 401/credential failures and 403 are
:class:`ProviderPermissionError`; a disabled key version and a wrong key name
get their own clear messages.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import importlib
import importlib.util
import json
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from .._bridge import await_only, in_bridge
from .._extras import extra, require
from .._secret import SecretBytes
from ..config import secret_from
from ..exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
)
from .base import KeyProvider, TransientProviderError, WrapContext

with extra("azure", "azure-keyvault-keys"):
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.keyvault.keys import KeyClient, KeyVaultKey
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

log = logging.getLogger(__name__)

_PREFIX = b"azkv1:"
_BIND_LABEL = b"nebula-credential azure-keyvault dek binding v1\x00"
_DEK_LEN = 32
#: What the asyncio API may run on its loop (their I/O is awaited); the rest goes to its thread pool.
_AWAITED_OPS = frozenset({"wrap", "unwrap", "generate_dek", "open_dek", "rewrap", "destroy_dek", "check"})
_RSA_TYPES = ("RSA", "RSA-HSM")
_AES_TYPES = ("oct-HSM",)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _binding(ctx: WrapContext) -> bytes:
    return hashlib.sha256(_BIND_LABEL + ctx.as_bytes()).digest()


class AzureKeyVaultProvider(KeyProvider):
    """DEKs wrapped by an Azure Key Vault / Managed HSM key, version pinned per record."""

    name: ClassVar[str] = "azure-keyvault"
    server_side_rewrap: ClassVar[bool] = False

    def __init__(
        self,
        vault_url: str,
        key_name: str,
        credential: Any,
        *,
        settings: dict[str, Any] | None = None,
        create: bool = False,
        owns_credential: bool = False,
        async_credential: Any = None,
    ) -> None:
        """``async_credential`` (an ``azure.identity.aio`` credential, or a callable making
        one) lets the asyncio API await Key Vault; without it that API uses threads."""
        super().__init__()
        self._owns_credential = owns_credential
        self._async_credential = async_credential
        self._aio: _AsyncClients | None = None
        self.vault_url = vault_url.rstrip("/")
        self.key_name = key_name
        self._credential = credential
        self._settings = dict(settings or {})
        self._client_kwargs = _client_kwargs(self._settings)
        self._keys = KeyClient(self.vault_url, credential, **self._client_kwargs)
        self._crypto: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._kid = ""
        self._kty = ""
        self._create_missing = create
        # retried like any call, but not counted: ``calls`` counts key operations
        self._call("get-key", self._load_current)
        self.calls.pop("get-key", None)

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> AzureKeyVaultProvider:
        for required in ("vault_url", "key_name"):
            if not settings.get(required):
                raise ConfigError(
                    f"provider.{required}", "required for the azure-keyvault provider"
                )
        if not str(settings["vault_url"]).lower().startswith("https://"):
            raise ConfigError(
                "provider.vault_url", "must be an https:// URL (Key Vault refuses plain http)"
            )
        key_type = str(settings.get("key_type", "RSA"))
        if key_type not in _RSA_TYPES + _AES_TYPES:
            raise ConfigError("provider.key_type", f"allowed: {', '.join(_RSA_TYPES + _AES_TYPES)}")
        return cls(
            str(settings["vault_url"]),
            str(settings["key_name"]),
            cls.make_credential(settings),
            settings=settings,
            create=create,
            owns_credential=True,
            async_credential=lambda: cls.make_credential(settings, aio=True),
        )

    @staticmethod
    def make_credential(settings: dict[str, Any], *, aio: bool = False) -> Any:
        """A client-secret credential when configured, else ``DefaultAzureCredential``
        (``aio``: their ``azure.identity.aio`` twins, for the asyncio API)."""
        identity = require("azure.identity.aio" if aio else "azure.identity", "azure", "azure-identity")
        ClientSecretCredential, DefaultAzureCredential = (
            identity.ClientSecretCredential, identity.DefaultAzureCredential)
        kwargs: dict[str, Any] = {}
        if settings.get("authority"):
            kwargs["authority"] = str(settings["authority"])
        if settings.get("disable_instance_discovery"):
            kwargs["disable_instance_discovery"] = True
        if settings.get("connection_verify"):
            kwargs["connection_verify"] = str(settings["connection_verify"])
        secret = secret_from(settings, "client_secret")
        if secret is not None:
            for required in ("tenant_id", "client_id"):
                if not settings.get(required):
                    raise ConfigError(f"provider.{required}", "required with client_secret_file")
            return ClientSecretCredential(
                str(settings["tenant_id"]), str(settings["client_id"]), secret, **kwargs
            )
        return DefaultAzureCredential(**kwargs)

    # ---- Key Vault calls ----------------------------------------------------
    def _api(self, op: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:
            self._raise(op, exc)

    def _raise(self, op: str, exc: Exception) -> NoReturn:
        where = f"{self.vault_url}/keys/{self.key_name}"
        if isinstance(exc, ClientAuthenticationError):
            raise ProviderPermissionError(
                f"Azure Key Vault rejected the credential during {op} ({type(exc).__name__}); "
                "check tenant_id/client_id/client_secret_file or the DefaultAzureCredential sources"
            ) from None
        if isinstance(exc, ResourceNotFoundError):
            raise ConfigError(
                "provider.key_name",
                f"Azure key {self.key_name!r} (or the version named) not found in "
                f"{self.vault_url}; "
                "check vault_url/key_name, or run `nebula-credential init` to create it",
            ) from None
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ProviderError(
                    f"TLS verification of {self.vault_url} failed during {op}; "
                    "check connection_verify"
                ) from None
            raise TransientProviderError(f"Azure Key Vault {op}: {type(exc).__name__}") from None
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            code, inner = _error_codes(exc)
            if status == 429 or status >= 500:
                raise TransientProviderError(f"Azure Key Vault {op}: HTTP {status}") from None
            if status == 403 and (inner == "KeyDisabled" or "disabled" in (exc.message or "")):
                raise ProviderError(
                    f"Azure key {where} (version used for {op}) is disabled; enable it "
                    "(az keyvault key set-attributes --enabled true) to use it"
                ) from None
            if status in (401, 403):
                raise ProviderPermissionError(
                    f"Azure Key Vault denied {op} on {where} (HTTP {status} {code or ''}); "
                    "grant the "
                    "identity get, wrapKey and unwrapKey (and rotate for `provider rotate`)"
                ) from None
            if status == 400 and op == "unwrap":
                raise DecryptionError(
                    f"Azure Key Vault could not unwrap the data key with {where} (wrong key?)"
                ) from None
            raise ProviderError(
                f"Azure Key Vault {op} on {where} failed: HTTP {status} {code or ''}"
            ) from None
        if isinstance(exc, ValueError | NotImplementedError):
            raise ProviderError(
                f"Azure Key Vault {op} on {where} failed: {type(exc).__name__}"
            ) from None
        raise exc

    def _load_current(self) -> None:
        try:
            key = self._keys.get_key(self.key_name)
        except ResourceNotFoundError:
            if not self._create_missing:
                self._raise("get-key", ResourceNotFoundError("not found"))
            key = self._api("create-key", self._create_key)
        except Exception as exc:
            self._raise("get-key", exc)
        self._use(key)

    def _create_key(self) -> Any:
        kty = str(self._settings.get("key_type", "RSA"))
        ops = ["wrapKey", "unwrapKey"]
        if kty in _AES_TYPES:
            # A256KW only: key_size applies to RSA keys
            return self._keys.create_oct_key(
                self.key_name, size=256, hardware_protected=True, key_operations=ops
            )
        return self._keys.create_rsa_key(
            self.key_name,
            size=int(self._settings.get("key_size", 3072)),
            hardware_protected=kty == "RSA-HSM",
            key_operations=ops,
        )

    def _use(self, key: KeyVaultKey) -> None:
        kty = str(getattr(key.key_type, "value", key.key_type))
        if kty not in _RSA_TYPES + _AES_TYPES:
            raise ConfigError(
                "provider.key_name",
                f"Azure key {self.key_name!r} is {kty}; use an RSA or oct-HSM key",
            )
        if key.properties.enabled is False:
            raise ProviderError(f"Azure key {key.id} is disabled; enable it to use it")
        self._kid = str(key.id)
        self._kty = kty

    def _algorithm(self, kty: str) -> Any:
        return KeyWrapAlgorithm.rsa_oaep_256 if kty in _RSA_TYPES else KeyWrapAlgorithm.aes_256

    def _crypto_for(self, kid: str) -> Any:
        with self._lock:
            client = self._crypto.get(kid)
            if client is None:
                client = CryptographyClient(kid, self._credential, **self._client_kwargs)
                # Remote operations only (see the module docstring): no GET of the key
                # material, no local wrap with it.
                client._initialized = True
                self._crypto[kid] = client
            return client

    @property
    def awaited_ops(self) -> frozenset[str]:
        """The calls the asyncio API may make on its loop: their Key Vault I/O is awaited there."""
        if self._async_credential is None or not _has_aiohttp():
            return frozenset()
        return _AWAITED_OPS

    def _crypto_call(self, op: str, kid: str, method: str, *args: Any) -> Any:
        """One Key Vault key operation: awaited on the loop when bridged, else the sync client."""
        if in_bridge() and self.awaited_ops:
            client = self._async_clients().crypto_for(kid)
            return self._api(op, lambda: await_only(getattr(client, method)(*args)))
        return self._api(op, lambda: getattr(self._crypto_for(kid), method)(*args))

    def _async_clients(self) -> _AsyncClients:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._aio is None or self._aio.loop is not loop:  # clients belong to the loop that made them
                if self._aio is not None:
                    self._aio.dispose()  # on their own loop, if it still runs
                made = callable(self._async_credential) and not hasattr(self._async_credential, "get_token")
                credential = self._async_credential() if made else self._async_credential
                self._aio = _AsyncClients(loop, credential, owns=made, kwargs=self._client_kwargs)
            return self._aio

    # ---- hooks -------------------------------------------------------------
    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        if len(dek) != _DEK_LEN:
            raise ProviderError("data keys must be 32 bytes")
        kid, alg = self._kid, self._algorithm(self._kty)
        payload = bytearray(_binding(ctx)) + dek.buffer
        with SecretBytes(payload) as structure:
            result = self._crypto_call("wrap", kid, "wrap_key", alg, structure.to_bytes())
        record = {"kid": kid, "alg": str(alg.value), "wk": _b64url(result.encrypted_key)}
        return _PREFIX + json.dumps(record, separators=(",", ":"), sort_keys=True).encode()

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        kid, alg, wk = self._parse(wrapped)
        result = self._crypto_call("unwrap", kid, "unwrap_key", alg, wk)
        with SecretBytes(bytearray(result.key)) as structure:
            buf = structure.buffer
            if len(buf) != 32 + _DEK_LEN or not hmac.compare_digest(bytes(buf[:32]), _binding(ctx)):
                raise DecryptionError(
                    f"data key {ctx.keyring}/v{ctx.version} does not belong to this keyring/version"
                )
            return SecretBytes(bytearray(buf[32:]))

    def _parse(self, wrapped: bytes) -> tuple[str, Any, bytes]:
        try:
            if not wrapped.startswith(_PREFIX):
                raise ValueError
            record = json.loads(wrapped[len(_PREFIX) :])
            kid, alg_name, wk = str(record["kid"]), str(record["alg"]), _unb64url(record["wk"])
            alg = KeyWrapAlgorithm(alg_name)
        except (ValueError, KeyError, TypeError):
            raise ProviderError(
                "wrapped key is not in the azure-keyvault provider's format"
            ) from None
        prefix = f"{self.vault_url}/keys/{self.key_name}/"
        version = kid[len(prefix) :]
        if not kid.startswith(prefix) or not version or "/" in version:
            raise DecryptionError(
                f"data key was wrapped by {kid}, not by a version of {self.vault_url}/keys/"
                f"{self.key_name} (wrong key_name or vault_url for this store?)"
            )
        return kid, alg, wk

    def _rotate(self) -> str:
        key = self._api("rotate", lambda: self._keys.rotate_key(self.key_name))
        self._use(key)
        return self.root_key_id()

    # ---- facts -------------------------------------------------------------
    def root_key_id(self) -> str:
        return self._kid

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "vault_url": self.vault_url,
            "key_name": self.key_name,
            "key_type": self._kty,
            "algorithm": str(self._algorithm(self._kty).value),
            "root_key_id": self.root_key_id(),
        }

    def close(self) -> None:
        aio, self._aio = self._aio, None
        try:
            if aio is not None:
                aio.dispose()
        finally:
            for client in self._crypto.values():
                client.close()
            self._keys.close()
            close = getattr(self._credential, "close", None)
            if self._owns_credential and callable(close):
                close()  # a credential the caller passed in is the caller's to close


class _AsyncClients:
    """The SDK's asyncio clients of one event loop (their aiohttp sessions cannot change loops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, credential: Any, *, owns: bool,
                 kwargs: dict[str, Any]) -> None:
        self.loop = loop
        self._credential = credential
        self._owns = owns
        self._kwargs = kwargs
        self._crypto: dict[str, Any] = {}

    def crypto_for(self, kid: str) -> Any:
        client = self._crypto.get(kid)
        if client is None:
            from azure.keyvault.keys.crypto.aio import CryptographyClient as AsyncCryptographyClient

            client = AsyncCryptographyClient(kid, self._credential, **self._kwargs)
            client._initialized = True  # remote operations only, as the sync client
            self._crypto[kid] = client
        return client

    async def close(self) -> None:
        for client in self._crypto.values():
            await client.close()
        if self._owns:
            await self._credential.close()

    def dispose(self) -> None:
        """Close the clients on their own loop, from wherever the provider is closed.

        Bridged on that loop: awaited.  From another thread: waited for there.
        On the loop's thread outside the bridge (a provider closed by its owner
        in sync code): scheduled, since waiting would stall the loop.  From
        another running loop: handed to the owner's.  A loop that no longer
        runs cannot close an aiohttp session any more: nothing to do.
        """
        if not self.loop.is_running():
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        try:
            if current is self.loop and in_bridge():
                await_only(self.close())
            elif current is self.loop:
                task = self.loop.create_task(self.close())
                _CLOSING.add(task)
                task.add_done_callback(_CLOSING.discard)
            elif current is None:
                await_only(self.close(), self.loop)
            else:
                asyncio.run_coroutine_threadsafe(self.close(), self.loop)
        except Exception as exc:  # closing is best effort; the provider's own close goes on
            log.debug("closing Azure Key Vault's asyncio clients failed: %s", type(exc).__name__)


#: Closes scheduled on a loop from its own thread (the loop keeps only weak references to tasks).
_CLOSING: set[asyncio.Task[None]] = set()


@functools.cache
def _has_aiohttp() -> bool:
    """The SDK's asyncio transport needs aiohttp (the ``azure`` extra installs it)."""
    return importlib.util.find_spec("aiohttp") is not None


def _client_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """SDK client options: our base class retries, so the SDK's own retries are off."""
    kwargs: dict[str, Any] = {"retry_total": 0}
    if settings.get("connection_verify"):
        kwargs["connection_verify"] = str(settings["connection_verify"])
    if settings.get("verify_challenge_resource") is False:
        kwargs["verify_challenge_resource"] = False
    if settings.get("api_version"):
        kwargs["api_version"] = str(settings["api_version"])
    return kwargs


def _error_codes(exc: HttpResponseError) -> tuple[str | None, str | None]:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    inner = None
    details = getattr(error, "innererror", None)
    if isinstance(details, dict):
        inner = details.get("code")
    return code, inner
