"""Root key in a PKCS#11 token (an HSM, or SoftHSM2 in tests).

The root key is a sensitive, non-extractable AES-256 secret key object
generated inside the token under the label ``<key_label>:v<N>``; a root
rotation generates ``v<N+1>`` and keeps the older versions so DEKs wrapped
under them still open until ``provider rotate`` has rewrapped them all.

Every record this provider stores is AES-GCM under a root key version,
computed inside the token, with the record header and the caller's
:class:`WrapContext` (keyring, version, purpose) as associated data::

    tag (2) | root version (4, big-endian) | nonce (12) | ciphertext || GCM tag

Two record kinds, two modes:

* ``P1`` -- the payload is raw key bytes.  ``mode = "wrap"`` (default)
  stores DEKs this way; the KeyManager keeps the unwrapped DEK in a
  software AES-GCM cipher for ``[keys] dek_cache_ttl``.  The audit key and
  the health check always use this kind.
* ``P2`` -- the payload is the CKA_ID of a DEK that is itself a sensitive,
  non-extractable AES key object in the token (``mode = "direct"``): every
  credential encryption is AES-GCM inside the token and the DEK never
  leaves it.  The record binds that reference to its keyring and version.

Either kind opens in either mode, so switching modes affects only new DEKs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag

from .._extras import extra
from .._secret import SecretBytes
from ..config import secret_from
from ..exceptions import (
    ConfigError,
    DecryptionError,
    ProviderError,
    ProviderPermissionError,
)
from .base import Aead, KeyProvider, TransientProviderError, WrapContext

with extra("pkcs11", "python-pkcs11"):
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11 import exceptions as p11e
    from pkcs11.mechanisms import GCMParams

# python-pkcs11's handle classes are loosely typed (Key vs SecretKey mixins);
# handles are kept as ``Any`` here and never leave this module.
Session = Any
SecretKey = Any

MODES = ("wrap", "direct")
_RAW = b"P1"
_REF = b"P2"
_HEADER = 2 + 4 + 12
_REF_LEN = 16
_AAD_DOMAIN = b"nebula-credential pkcs11 record\x00"
_GCM = Mechanism.AES_GCM
#: python-pkcs11 reports a bad GCM tag as a bare GeneralError (SoftHSM's CKR_GENERAL_ERROR).
_TAG_REFUSED: tuple[type[Exception], ...] = (
    p11e.GeneralError,
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
)

#: Errors after which the session (and the handles found through it) is gone.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.UserNotLoggedIn,
)
#: Outside a decryption (where it means a bad tag) SoftHSM reports a vanished
#: token as CKR_GENERAL_ERROR: treat it as a lost session too.
_GONE: tuple[type[Exception], ...] = (*_SESSION_LOST, p11e.GeneralError)
_PIN_REFUSED: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.PinInvalid,
    p11e.PinLenRange,
)

# ``pkcs11.lib`` loads and initialises the module once per process; keep one per path.
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def load_library(path: str) -> Any:
    with _LIBS_LOCK:
        lib = _LIBS.get(path)
        if lib is None:
            if not Path(path).is_file():
                raise ConfigError("provider.library", f"PKCS#11 library {path} does not exist")
            try:
                lib = pkcs11.lib(path)
            except p11e.PKCS11Error as exc:
                raise ConfigError(
                    "provider.library", f"cannot load PKCS#11 library {path}: {exc}"
                ) from None
            _LIBS[path] = lib
        return lib


class HsmAead:
    """The AESGCM shape over a DEK object that never leaves the token."""

    __slots__ = ("_label", "_provider", "_ref")

    def __init__(self, provider: Pkcs11KeyProvider, ref: bytes, label: str) -> None:
        self._provider = provider
        self._ref = ref
        self._label = label

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._provider._gcm(self._ref, self._label, True, nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._provider._gcm(self._ref, self._label, False, nonce, data, associated_data)

    def __repr__(self) -> str:
        return f"HsmAead(object={self._label!r}, key=<in token>)"

    def __reduce__(self) -> Any:
        raise TypeError("key handles cannot be pickled")


class HsmTagError(DecryptionError, InvalidTag):
    """A GCM tag the token refused: opaque, and caught like ``InvalidTag`` by the hot path."""


class Pkcs11KeyProvider(KeyProvider):
    """AES-256 root key (and, in direct mode, the DEKs) inside a PKCS#11 token."""

    name: ClassVar[str] = "pkcs11"

    def __init__(
        self,
        *,
        library: str,
        token_label: str,
        pin: str,
        key_label: str = "nebula-credential-root",
        mode: str = "wrap",
        create: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError("provider.mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
        if not key_label or ":" in key_label:
            raise ConfigError("provider.key_label", "must be a non-empty label without ':'")
        self.library = library
        self.token_label = token_label
        self.key_label = key_label
        self.mode = mode
        self._pin = pin
        self._settings = settings or {}
        self._lock = threading.RLock()
        self._lib = load_library(library)
        self._session: Session | None = None
        self._roots: dict[int, SecretKey] = {}
        self._current = 0
        self._deks: dict[bytes, SecretKey] = {}
        self._connected_once = False
        self._connect()
        if not self._roots:
            if not create:
                raise ConfigError(
                    "provider.key_label",
                    f"token {token_label!r} holds no root key labelled {key_label}:v<N>; "
                    "run `nebula-credential init --provider pkcs11` to generate one",
                )
            self._generate_root(1)

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> Pkcs11KeyProvider:
        library = settings.get("library")
        token_label = settings.get("token_label")
        if not library:
            raise ConfigError("provider.library", "set the path of the PKCS#11 module (.so)")
        if not token_label:
            raise ConfigError(
                "provider.token_label", "set the label of the token holding the root key"
            )
        pin = secret_from(settings, "pin")
        if pin is None:
            raise ConfigError(
                "provider.pin_file", "set pin_file (a path) or pin_env (a variable name)"
            )
        return cls(
            library=str(library),
            token_label=str(token_label),
            pin=pin,
            key_label=str(settings.get("key_label", "nebula-credential-root")),
            mode=str(settings.get("mode", "wrap")),
            create=create,
            settings=settings,
        )

    # ---- session handling ----------------------------------------------------
    def _connect(self) -> Session:
        """Open and log in a session; first-time failures are configuration errors."""
        if self._session is not None:
            return self._session
        try:
            token = self._lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            if self._connected_once:  # it was there: removed, maybe coming back
                raise TransientProviderError(f"token {self.token_label!r} is not present") from None
            raise ConfigError(
                "provider.token_label",
                f"no PKCS#11 token labelled {self.token_label!r} in {self.library}",
            ) from None
        except _GONE as exc:
            raise TransientProviderError(f"token unavailable ({type(exc).__name__})") from None
        try:
            try:
                session = token.open(user_pin=self._pin, rw=True)
            except p11e.UserAlreadyLoggedIn:
                # Login state is per token per process: another provider instance
                # (or another keyring's vault) logged in already; share it.
                session = token.open(rw=True)
        except _PIN_REFUSED as exc:
            raise ProviderPermissionError(
                f"login to token {self.token_label!r} refused ({type(exc).__name__}); "
                "check the PIN in pin_file / pin_env"
            ) from None
        except _SESSION_LOST as exc:
            raise TransientProviderError(f"token unavailable ({type(exc).__name__})") from None
        self._session = session
        self._connected_once = True
        self._roots = self._find_roots(session)
        self._deks = {}
        return session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._roots, self._deks = {}, {}
        if session is not None:
            with contextlib.suppress(p11e.PKCS11Error):  # already gone
                session.close()

    @contextmanager
    def _token(self) -> Iterator[Session]:
        """A live session under the lock; maps token failures to our errors."""
        with self._lock:
            session = self._connect()
            try:
                yield session
            except _GONE as exc:
                self._drop_session()
                raise TransientProviderError(
                    f"PKCS#11 session lost ({type(exc).__name__})"
                ) from None
            except _PIN_REFUSED as exc:
                raise ProviderPermissionError(
                    f"token refused the login ({type(exc).__name__})"
                ) from None
            except p11e.PKCS11Error as exc:
                raise ProviderError(f"PKCS#11 operation failed ({type(exc).__name__})") from None

    def _find_roots(self, session: Session) -> dict[int, SecretKey]:
        prefix = f"{self.key_label}:v"
        roots: dict[int, SecretKey] = {}
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            label = obj.label or ""
            if label.startswith(prefix) and label[len(prefix) :].isdigit():
                roots[int(label[len(prefix) :])] = obj
        self._current = max(roots, default=0)
        return roots

    def _generate_root(self, version: int) -> int:
        with self._token() as session:
            key = session.generate_key(
                KeyType.AES,
                256,
                label=f"{self.key_label}:v{version}",
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                },
            )
            self._roots[version] = key
            self._current = max(self._current, version)
        return version

    @property
    def current_version(self) -> int:
        """The newest root version this process knows (kept across reconnects)."""
        return self._current

    # ---- records -------------------------------------------------------------
    @staticmethod
    def _aad(header: bytes, ctx: WrapContext) -> bytes:
        return _AAD_DOMAIN + header + ctx.as_bytes()

    def _seal(self, kind: bytes, payload: bytes | bytearray, ctx: WrapContext) -> bytes:
        with self._token():
            version = self.current_version
            root = self._roots[version]
            nonce = os.urandom(12)
            header = kind + version.to_bytes(4, "big") + nonce
            ct = root.encrypt(
                bytes(payload),
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, self._aad(header, ctx), 128),
            )
            return header + bytes(ct)

    def _open_record(self, record: bytes, ctx: WrapContext, kind: bytes, size: int) -> bytearray:
        if len(record) != _HEADER + size + 16 or record[:2] != kind:
            raise ProviderError("wrapped key is not in the pkcs11 provider's format for this use")
        version = int.from_bytes(record[2:6], "big")
        header, nonce = record[:_HEADER], record[6:_HEADER]
        with self._token() as session:
            root = self._roots.get(version)
            if root is None:  # another process may have rotated the root key since
                self._roots = self._find_roots(session)
                root = self._roots.get(version)
            if root is None:
                raise DecryptionError(
                    f"data key {ctx.keyring}/v{ctx.version} was wrapped by root key "
                    f"{self.key_label}:v{version}, which token {self.token_label!r} does not hold "
                    "(wrong token or key_label for this store?)"
                )
            try:
                return bytearray(
                    root.decrypt(
                        record[_HEADER:],
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(nonce, self._aad(header, ctx), 128),
                    )
                )
            except _TAG_REFUSED:
                raise DecryptionError(
                    f"data key {ctx.keyring}/v{ctx.version} does not unwrap under root key "
                    f"{self.key_label}:v{version}"
                ) from None

    # ---- hooks -----------------------------------------------------------------
    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        return self._seal(_RAW, dek.buffer, ctx)

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        if wrapped[:2] == _REF:
            raise ProviderError(
                "a direct-mode data key never leaves the token; it cannot be unwrapped"
            )
        return SecretBytes(self._open_record(wrapped, ctx, _RAW, len(wrapped) - _HEADER - 16))

    def _rewrap(self, wrapped: bytes, ctx: WrapContext) -> bytes:
        """Re-seal under the current root version; a direct-mode DEK stays in the token."""
        if wrapped[:2] == _REF:
            with SecretBytes(self._open_record(wrapped, ctx, _REF, _REF_LEN)) as ref:
                return self._seal(_REF, ref.buffer, ctx)
        return super()._rewrap(wrapped, ctx)

    def _open(self, wrapped: bytes, ctx: WrapContext) -> Aead:
        if wrapped[:2] != _REF:
            return super()._open(wrapped, ctx)
        ref = bytes(self._open_record(wrapped, ctx, _REF, _REF_LEN))
        label = self._dek_label(ctx)
        self._dek(ref, label)  # fail now, not at first use, if the object is gone
        return HsmAead(self, ref, label)

    def _destroy(self, wrapped: bytes, ctx: WrapContext) -> None:
        if wrapped[:2] != _REF:
            return  # a wrapped DEK: erasing the stored record was the destruction
        ref = bytes(self._open_record(wrapped, ctx, _REF, _REF_LEN))
        self._deks.pop(ref, None)
        with self._token() as session:
            for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: ref})):
                obj.destroy()

    def _create(self, ctx: WrapContext) -> tuple[Aead, bytes]:
        if self.mode == "wrap":
            return super()._create(ctx)
        ref = os.urandom(_REF_LEN)
        label = self._dek_label(ctx)
        with self._token() as session:
            session.generate_key(
                KeyType.AES,
                256,
                id=ref,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                },
            )
            self._dek(ref, label)
        return HsmAead(self, ref, label), self._seal(_REF, ref, ctx)

    def _rotate(self) -> str:
        with self._token() as session:
            self._roots = self._find_roots(session)  # another process may have rotated
            self._generate_root(self.current_version + 1)
        return self.root_key_id()

    # ---- direct mode -------------------------------------------------------------
    def _dek_label(self, ctx: WrapContext) -> str:
        return f"{self.key_label}:dek:{ctx.keyring}:{ctx.version}"

    def _dek(self, ref: bytes, label: str) -> SecretKey:
        key = self._deks.get(ref)
        if key is not None:
            return key
        with self._token() as session:
            # only the stored object: session copies (ours or another instance's) share its id
            found = list(
                session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.ID: ref,
                        Attribute.TOKEN: True,
                    }
                )
            )
            if len(found) != 1:
                raise DecryptionError(
                    f"data key object {label!r} is not in token "
                    f"{self.token_label!r} (destroyed, or another token?)"
                )
            key = found[0]
            if key.label != label:
                raise DecryptionError(f"token object {key.label!r} is not data key {label!r}")
            # Work on a session copy: SoftHSM re-checks a token object's file on
            # every use, a session object lives in memory.  The copy inherits
            # SENSITIVE and non-EXTRACTABLE (PKCS#11 forbids relaxing them) and
            # vanishes with the session.
            fast: SecretKey = key.copy({Attribute.TOKEN: False})
            self._deks[ref] = fast
            return fast

    def _gcm(
        self, ref: bytes, label: str, seal: bool, nonce: bytes, data: bytes, aad: bytes | None
    ) -> bytes:
        """One AES-GCM operation in the token (the direct-mode hot path).

        The common case is one locked library call on a cached handle; any
        token failure falls back to the full path, whose session loss goes
        through the provider's bounded retries.
        """
        key = self._deks.get(ref)
        if key is not None:
            param = GCMParams(nonce, aad or b"", 128)
            try:
                with self._lock:
                    if seal:
                        return bytes(key.encrypt(data, mechanism=_GCM, mechanism_param=param))
                    return bytes(key.decrypt(data, mechanism=_GCM, mechanism_param=param))
            except p11e.PKCS11Error as exc:
                if not seal and isinstance(exc, _TAG_REFUSED):
                    raise HsmTagError("envelope failed authentication in the token") from None
                # otherwise fall through to the guarded path, which maps and retries

        def op() -> bytes:
            with self._token():
                key = self._dek(ref, label)
                param = GCMParams(nonce, aad or b"", 128)
                if seal:
                    return bytes(key.encrypt(data, mechanism=_GCM, mechanism_param=param))
                try:
                    return bytes(key.decrypt(data, mechanism=_GCM, mechanism_param=param))
                except _TAG_REFUSED:
                    raise HsmTagError("envelope failed authentication in the token") from None

        try:
            return op()
        except TransientProviderError:
            return self._call("gcm", op)

    # ---- facts -------------------------------------------------------------------
    def root_key_id(self) -> str:
        return f"{self.token_label}/{self.key_label}:v{self.current_version}"

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "mode": self.mode,
            "library": self.library,
            "token_label": self.token_label,
            "key_label": self.key_label,
            "root_key_id": self.root_key_id(),
            "root_versions": sorted(self._roots),
        }

    def close(self) -> None:
        with self._lock:
            self._drop_session()

    def root_key_object(self, version: int | None = None) -> Any:
        """The root key's token object (tests and diagnostics; its value is unreadable)."""
        with self._token():
            return self._roots[version or self.current_version]
