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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import envelope as env
from .._secret import SecretBytes
from ..exceptions import DecryptionError, KeyDestroyedError, KeyNotFoundError, PolicyViolationError
from ..keys import seal as aead_seal
from ..providers.base import WrapContext
from .errors import TransitInputError
from .keys import LiveKey
from .wire import CIPHERTEXT_PREFIX, HASHES, b64, format_ciphertext, lp, parse_ciphertext, transit_aad

_U32 = struct.Struct(">I")
DERIVE_DOMAIN = b"nebula-credential transit derive v1\x00"
HMAC_DOMAIN = b"nebula-credential transit hmac v1\x00"
_DERIVED_CACHE = 4096


def material(key: LiveKey, version: int) -> SecretBytes:
    """The version's DEK, unwrapped once per cached key (derivation needs the bytes)."""
    with key.lock:
        secret = key.material.get(version)
        if secret is None:
            kv = key.km.version(version)
            if kv.wrapped_key is None:
                raise KeyDestroyedError(kv.keyring, version)
            secret = key.km.provider.unwrap(kv.wrapped_key, WrapContext(kv.keyring, version))
            key.material[version] = secret
        return secret


def derive(key: LiveKey, version: int, domain: bytes, context: bytes) -> bytes:
    info = domain + lp(key.config.keyring.encode()) + _U32.pack(version) + context
    secret = material(key, version)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes(secret.buffer))


def subkey(key: LiveKey, version: int, context: bytes) -> AESGCM:
    """A per-context key: HKDF-SHA256 over the version's DEK (cached, LRU)."""
    cache_key = (version, context)
    aead = key.derived.get(cache_key)
    if aead is not None:
        return aead
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


def seal(key: LiveKey, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
         key_version: int = 0) -> str:
    """``vault:v<N>:...`` under the active version (or ``key_version``, which must be it)."""
    ctx = derivation_context(key, context)
    if key_version:
        check_encrypt_version(key, key_version, key.km.current_key().version)
    aad = transit_aad(key.config.keyring, associated_data, ctx)
    if ctx is None:
        return format_ciphertext(key.km.encrypt(plaintext, aad))
    vk = key.km.next_active()
    return format_ciphertext(aead_seal(subkey(key, vk.version, ctx), env.version_prefix(vk.version),
                                       plaintext, aad))


def unseal(key: LiveKey, ciphertext: Any, associated_data: bytes | None,
           context: bytes | None) -> tuple[bytes, int]:
    """(plaintext, key version) of a ``vault:v<N>:...`` string; every authentication failure is one error."""
    version, blob = parse_ciphertext(ciphertext)
    ctx = derivation_context(key, context)
    cfg = key.config
    if version < cfg.min_decryption_version:
        raise TransitInputError("ciphertext or signature version is disallowed by policy (too old)")
    aad = transit_aad(cfg.keyring, associated_data, ctx)
    try:
        if ctx is None:
            return key.km.decrypt(blob, aad), version
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


def mac(key: LiveKey, data: bytes, algorithm: str = "sha2-256", key_version: int = 0) -> str:
    """``vault:v<N>:<base64 HMAC>`` with a per-version HMAC key derived from the DEK."""
    if algorithm not in HASHES:
        raise TransitInputError(f"unsupported algorithm {algorithm}")
    version = key_version or key.km.current_key().version
    if version < key.config.min_encryption_version:
        raise TransitInputError("cannot use key version below the minimum encryption version")
    key.km.get_key(version)  # the lifecycle says whether this version may still be used
    mac_key = derive(key, version, HMAC_DOMAIN, b"")
    digest = _hmac.new(mac_key, data, HASHES[algorithm]).digest()
    return f"{CIPHERTEXT_PREFIX}{version}:{b64(digest)}"
