"""Transit's cryptography over a loaded key: AES-GCM under the keyring, derived subkeys, HMAC.

Functions of a :class:`~nebula_credential.transit.keys.LiveKey` and typed
values (bytes in, ``vault:v<N>:`` strings out).  The associated data binds a
ciphertext to its keyring, the caller's ``associated_data`` and, for derived
keys, the derivation context (:func:`~nebula_credential.transit.wire.transit_aad`);
a derived key's subkey is HKDF-SHA256 over the version's DEK.  Raw DEK bytes
stay in this module and in the key's wiped cache.
"""

from __future__ import annotations

import hmac as _hmac
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import envelope as env
from ..exceptions import DecryptionError, KeyNotFoundError, PolicyViolationError
from ..keys import seal as aead_seal
from . import asym
from .errors import TransitInputError
from .keys import LiveKey, material
from .keytypes import hkdf, key_type, symmetric_key
from .wire import (
    ABSENT,
    CIPHERTEXT_PREFIX,
    HASHES,
    aad_prefix,
    b64,
    format_ciphertext,
    lp,
    parse_ciphertext,
    transit_aad,
    version_of,
    versioned_ciphertext,
)

_U32 = struct.Struct(">I")
DERIVE_DOMAIN = b"nebula-credential transit derive v1\x00"
HMAC_DOMAIN = b"nebula-credential transit hmac v1\x00"
_DERIVED_CACHE = 4096


def derive(key: LiveKey, version: int, domain: bytes, context: bytes) -> bytes:
    info = domain + lp(key.config.binding.encode()) + _U32.pack(version) + context
    secret = material(key, version)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes(secret.buffer))


def subkey(key: LiveKey, version: int, context: bytes) -> AESGCM:
    """A per-context key: HKDF-SHA256 over the version's DEK (cached, LRU)."""
    cache_key = (version, context)
    found = key.derived.get(cache_key)
    if isinstance(found, AESGCM):
        return found
    aead = AESGCM(derive(key, version, DERIVE_DOMAIN, context))
    with key.lock:
        key.derived[cache_key] = aead
        while len(key.derived) > _DERIVED_CACHE:
            key.derived.popitem(last=False)
    return aead


def derivation_context(key: LiveKey, context: bytes | None) -> bytes | None:
    if not key.config.derived:
        return None  # Vault ignores a context on a key that is not derived
    if not context:
        raise TransitInputError(
            "missing 'context' for key derivation; the key was created using a derived key, which means "
            "additional, per-request information must be included in order to perform operations with the key"
        )
    return context


def check_encrypt_version(key: LiveKey, key_version: int, active: int) -> None:
    if not key_version or key_version == active:
        return
    if key_version < 0:
        raise TransitInputError("key_version cannot be negative")
    if key_version > active:
        raise TransitInputError("requested version for encryption is higher than the latest key version")
    if key_version < key.config.min_encryption_version:
        raise TransitInputError("requested version for encryption is less than the minimum encryption key version")
    raise PolicyViolationError(
        f"version {key_version} of transit key {key.config.name!r} no longer encrypts: only the active "
        f"version {active} does (older versions only decrypt)")


class _KeyUse:
    """What every item of one request under one loaded key shares, worked out once: the key's type
    and derivation, its keyring's associated-data prefix, the AAD of an item with neither
    ``associated_data`` nor ``context``."""

    __slots__ = ("_bare", "_base", "_derived", "_typed", "config", "key")

    def __init__(self, key: LiveKey) -> None:
        cfg = key.config
        self.key = key
        self.config = cfg  #: the settings this was worked out from (a reload replaces the key's)
        self._typed = cfg.type != "aes256-gcm96"
        self._derived = cfg.derived
        self._base = aad_prefix(cfg.binding)
        self._bare = self._base + ABSENT + ABSENT

    def _aad(self, associated_data: bytes | None, ctx: bytes | None) -> bytes:
        if ctx is None:
            return self._bare if associated_data is None else self._base + lp(associated_data) + ABSENT
        return self._base + lp(associated_data) + lp(ctx)


class Sealer(_KeyUse):
    """The encryptions of one request under one loaded key, with what its items share worked out once.

    A 1,000-item batch is 1,000 AES-GCM calls under one key: the key's type and
    derivation, its keyring's associated-data prefix and the AAD of an item with
    neither ``associated_data`` nor ``context`` are the same for every item, so an
    item costs its AES-GCM call (the keyring's reused cipher, a nonce from the
    buffered CSPRNG, the usage count of :meth:`KeyManager.encrypt`) and its base64.
    Every rule is still checked per item, in the order Vault checks them.
    """

    __slots__ = ("_encrypt",)

    def __init__(self, key: LiveKey) -> None:
        super().__init__(key)
        self._encrypt = key.km.encrypt

    def seal(self, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
             key_version: int = 0) -> tuple[str, int]:
        """(``vault:v<N>:...``, N) under the active version (or ``key_version``, which must be it)."""
        key = self.key
        if self._typed:
            text = _seal_typed(key, plaintext, associated_data, context, key_version)
            return text, version_of(text)
        ctx = derivation_context(key, context) if self._derived else None  # Vault ignores it otherwise
        if key_version:
            check_encrypt_version(key, key_version, key.km.current_key().version)
        aad = self._aad(associated_data, ctx)
        if ctx is None:
            return versioned_ciphertext(self._encrypt(plaintext, aad))
        vk = key.km.next_active()
        return versioned_ciphertext(aead_seal(subkey(key, vk.version, ctx), env.version_prefix(vk.version),
                                              plaintext, aad))


class Opener(_KeyUse):
    """The decryptions of one request under one loaded key (what :class:`Sealer` is to encryptions)."""

    __slots__ = ("_decrypt",)

    def __init__(self, key: LiveKey) -> None:
        super().__init__(key)
        self._decrypt = key.km.decrypt

    def open(self, ciphertext: Any, associated_data: bytes | None, context: bytes | None) -> tuple[bytes, int]:
        """(plaintext, key version) of a ``vault:v<N>:...`` string; every authentication failure is one error."""
        key = self.key
        if self._typed:
            return _unseal_typed(key, ciphertext, associated_data, context)
        version, blob = parse_ciphertext(ciphertext)
        ctx = derivation_context(key, context) if self._derived else None
        if version < key.config.min_decryption_version:
            raise TransitInputError("ciphertext or signature version is disallowed by policy (too old)")
        aad = self._aad(associated_data, ctx)
        try:
            if ctx is None:
                return self._decrypt(blob, aad), version
            key.km.get_key(version)  # the lifecycle says whether this version may decrypt
            parsed = env.parse(blob)
            try:
                return subkey(key, version, ctx).decrypt(parsed.nonce, parsed.ciphertext,
                                                         parsed.header + aad), version
            except InvalidTag:
                raise DecryptionError("cipher: message authentication failed") from None
        except DecryptionError:
            raise DecryptionError("cipher: message authentication failed") from None
        except KeyNotFoundError:
            raise TransitInputError("invalid ciphertext: version is too new") from None


def sealer(key: LiveKey) -> Sealer:
    """The key's :class:`Sealer`, kept on the key while its settings are the same.

    What a Sealer works out (type, derivation, AAD prefix) depends on the
    settings alone, so a single encryption no longer builds one per request;
    a reload that replaces the settings gets a new one at its next use.
    """
    found: Sealer | None = key.sealer
    if found is None or found.config is not key.config:
        found = key.sealer = Sealer(key)
    return found


def opener(key: LiveKey) -> Opener:
    """The key's :class:`Opener`, kept as :func:`sealer` keeps its Sealer."""
    found: Opener | None = key.opener
    if found is None or found.config is not key.config:
        found = key.opener = Opener(key)
    return found


def seal(key: LiveKey, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
         key_version: int = 0) -> str:
    """``vault:v<N>:...`` under the active version (or ``key_version``, which must be it)."""
    return sealer(key).seal(plaintext, associated_data, context, key_version)[0]


def unseal(key: LiveKey, ciphertext: Any, associated_data: bytes | None,
           context: bytes | None) -> tuple[bytes, int]:
    """(plaintext, key version) of a ``vault:v<N>:...`` string; every authentication failure is one error."""
    return opener(key).open(ciphertext, associated_data, context)


def mac(key: LiveKey, data: bytes, algorithm: str = "sha2-256", key_version: int = 0, *,
        checked: bool = False) -> str:
    """``vault:v<N>:<base64 HMAC>`` with the version's HMAC key (``checked``: a verify, whose
    version the caller checked against ``min_decryption_version``)."""
    if algorithm not in HASHES:
        raise TransitInputError(f"unsupported algorithm {algorithm}")
    version = key_version or key.km.current_key().version
    if not checked and version < key.config.min_encryption_version:
        raise TransitInputError("cannot use key version below the minimum encryption version")
    key.km.get_key(version)  # the lifecycle says whether this version may still be used
    state = key.macs.get((version, algorithm))
    if state is None:  # keyed once per version and algorithm (an HKDF), then copied per use
        state = _hmac.new(hmac_key(key, version), digestmod=HASHES[algorithm])
        with key.lock:
            key.macs[(version, algorithm)] = state
    one = state.copy()
    one.update(data)
    return f"{CIPHERTEXT_PREFIX}{version}:{b64(one.digest())}"


def hmac_key(key: LiveKey, version: int) -> bytes:
    """A version's HMAC key: an ``hmac`` key's own (``key_size`` bytes), else derived from the DEK."""
    kt = key_type(key.config.type)
    if kt.family == "hmac":
        return symmetric_key(kt, bytes(material(key, version).buffer), key.config.key_size or 32)
    return derive(key, version, HMAC_DOMAIN, b"")


# ---- the other encryption types: aes128-gcm96, chacha20-poly1305 (our envelope), RSA-OAEP ------------
Cipher = AESGCM | ChaCha20Poly1305
_PLAIN = b"\x00plain"


def typed_cipher(key: LiveKey, version: int, ctx: bytes | None) -> Cipher:
    """The AEAD of an ``aes128-gcm96`` or ``chacha20-poly1305`` version (per context when derived)."""
    cache_key = (version, _PLAIN if ctx is None else ctx)
    found = key.derived.get(cache_key)
    if found is not None:
        return found
    kt = key_type(key.config.type)
    dek = bytes(material(key, version).buffer)
    raw = symmetric_key(kt, dek) if ctx is None else hkdf(
        dek, kt.name.encode() + b"-derived", kt.bits // 8, lp(key.config.binding.encode()) + ctx)
    cipher: Cipher = ChaCha20Poly1305(raw) if kt.name == "chacha20-poly1305" else AESGCM(raw)
    with key.lock:
        key.derived[cache_key] = cipher
        while len(key.derived) > _DERIVED_CACHE:
            key.derived.popitem(last=False)
    return cipher


def _seal_typed(key: LiveKey, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
                key_version: int) -> str:
    kt = key_type(key.config.type)
    if kt.family == "rsa":
        return asym.rsa_encrypt(key, plaintext, key_version)
    if kt.family != "aead":
        raise TransitInputError(f"key type {kt.name} does not support encryption")
    ctx = derivation_context(key, context)
    if key_version:
        check_encrypt_version(key, key_version, key.km.current_key().version)
    vk = key.km.next_active()  # counted against the version's usage bound, as every encryption
    aad = transit_aad(key.config.binding, associated_data, ctx)
    return format_ciphertext(aead_seal(typed_cipher(key, vk.version, ctx), env.version_prefix(vk.version),
                                       plaintext, aad))


def _unseal_typed(key: LiveKey, ciphertext: Any, associated_data: bytes | None,
                  context: bytes | None) -> tuple[bytes, int]:
    kt = key_type(key.config.type)
    if kt.family == "rsa":
        return asym.rsa_decrypt(key, ciphertext)
    if kt.family != "aead":
        raise TransitInputError(f"key type {kt.name} does not support decryption")
    version, blob = parse_ciphertext(ciphertext)
    ctx = derivation_context(key, context)
    asym.verifying_version(key, version)
    parsed = env.parse(blob)
    aad = transit_aad(key.config.binding, associated_data, ctx)
    try:
        return typed_cipher(key, version, ctx).decrypt(parsed.nonce, parsed.ciphertext, parsed.header + aad), version
    except InvalidTag:
        raise DecryptionError("cipher: message authentication failed") from None
