"""Signing, verification and RSA-OAEP under a loaded Transit key, and each version's typed key.

A version's key comes from its DEK (:mod:`.keytypes`); RSA private keys are
generated once per version and kept sealed under a key derived from that
DEK in the store's meta table (``transit.rsa:<keyring>:<version>``), so the
keyring's lifecycle governs them like every other version: a revoked
version signs nothing, a destroyed (trimmed) one can no longer be opened.
Signatures look like Vault's, ``vault:v<N>:<base64>`` (``jws`` marshaling:
base64url without padding, as Vault).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as _hmac
import os
import re
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._secret import SecretBytes
from ..exceptions import DecryptionError, KeyNotFoundError, KeyRevokedError, StoreError
from .errors import TransitInputError
from .keys import LiveKey, material
from .keytypes import KeyType, PrivateKey, generate_rsa, hkdf, key_type, private_key
from .wire import CIPHERTEXT_PREFIX, HASHES, b64, lp

RSA_META = "transit.rsa:"
_RSA_SEAL = b"rsa-seal"

SIGN_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha2-224": hashes.SHA224,
    "sha2-256": hashes.SHA256,
    "sha2-384": hashes.SHA384,
    "sha2-512": hashes.SHA512,
    "sha3-224": hashes.SHA3_224,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}
_HASHLIB: dict[str, Callable[..., Any]] = {**HASHES, "sha1": hashlib.sha1}
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def type_of(key: LiveKey) -> KeyType:
    return key_type(key.config.type)


# ---- a version's key ------------------------------------------------------------------------
def version_dek(key: LiveKey, version: int) -> SecretBytes:
    return material(key, version)


def _rsa_meta(keyring: str, version: int) -> str:
    return f"{RSA_META}{keyring}:{version}"


def _rsa_seal_key(dek: bytes, keyring: str, version: int) -> tuple[AESGCM, bytes]:
    aad = lp(keyring.encode()) + version.to_bytes(4, "big")
    return AESGCM(hkdf(dek, _RSA_SEAL, 32)), aad


def seal_rsa(dek: bytes, keyring: str, version: int, private: rsa.RSAPrivateKey) -> str:
    """The stored form of an RSA version's private key: AES-GCM under a DEK-derived key."""
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    aead, aad = _rsa_seal_key(dek, keyring, version)
    nonce = os.urandom(12)
    return b64(nonce + aead.encrypt(nonce, der, aad))


def open_rsa(dek: bytes, keyring: str, version: int, stored: str) -> rsa.RSAPrivateKey:
    aead, aad = _rsa_seal_key(dek, keyring, version)
    try:
        blob = base64.b64decode(stored, validate=True)
        der = aead.decrypt(blob[:12], blob[12:], aad)
    except (binascii.Error, ValueError, InvalidTag):
        raise StoreError(f"transit keyring {keyring!r} v{version}: its RSA key does not open") from None
    loaded = serialization.load_der_private_key(der, password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise StoreError(f"transit keyring {keyring!r} v{version}: stored key is not RSA")
    return loaded


def _rsa_key(key: LiveKey, version: int) -> rsa.RSAPrivateKey:
    """The version's RSA key: read, or generated and stored once (the first writer wins)."""
    keyring = key.config.keyring
    dek = bytes(version_dek(key, version).buffer)
    store = key.km.store
    with store.read() as tx:
        stored = tx.get_meta(_rsa_meta(keyring, version))
    if stored is None:
        fresh = seal_rsa(dek, keyring, version, generate_rsa(type_of(key)))
        with store.transaction() as tx:
            tx.lock_keyring(keyring)
            stored = tx.get_meta(_rsa_meta(keyring, version))
            if stored is None:
                tx.set_meta(_rsa_meta(keyring, version), fresh)
                stored = fresh
    return open_rsa(dek, keyring, version, stored)


def version_key(key: LiveKey, version: int, context: bytes = b"") -> PrivateKey:
    """The private key of ``version`` (a derived ed25519 key: of ``context``), cached with the key."""
    cache_key = (version, context)
    with key.lock:
        found = key.private.get(cache_key)
    if found is not None:
        return found
    kt = type_of(key)
    made: PrivateKey = _rsa_key(key, version) if kt.family == "rsa" else private_key(
        kt, bytes(version_dek(key, version).buffer), context)
    with key.lock:
        key.private[cache_key] = made
    return made


def prepare_version(key: LiveKey, version: int) -> None:
    """Make an RSA version's key now (at create and rotate) rather than at its first use."""
    if type_of(key).family == "rsa":
        version_key(key, version)


# ---- strings ----------------------------------------------------------------------------------
def parse_signed(text: Any, what: str = "signature") -> tuple[int, str]:
    """``vault:v<N>:<body>`` -> (N, body)."""
    if not isinstance(text, str) or not text:
        raise TransitInputError(f"missing {what}")
    if not text.startswith(CIPHERTEXT_PREFIX):
        raise TransitInputError(f"invalid {what}: no prefix")
    head, sep, body = text[len(CIPHERTEXT_PREFIX):].partition(":")
    if not sep or re.fullmatch(r"[0-9]{1,10}", head) is None or int(head) < 1:
        raise TransitInputError(f"invalid {what}: could not parse version")
    return int(head), body


def _decode(body: str, urlsafe: bool, what: str) -> bytes:
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise TransitInputError(f"invalid {what}: not valid base64") from None


# ---- version checks ---------------------------------------------------------------------------
def signing_version(key: LiveKey, key_version: int) -> int:
    latest = key.km.current_key().version
    version = key_version or latest
    if version < 0:
        raise TransitInputError("key_version cannot be negative")
    if version > latest:
        raise TransitInputError("requested version for signing is higher than the latest key version")
    if version < key.config.min_encryption_version:
        raise TransitInputError("requested version for signing is less than the minimum encryption key version")
    key.km.get_key(version)  # the lifecycle says whether this version may still be used
    return version


def verifying_version(key: LiveKey, version: int) -> None:
    if version < key.config.min_decryption_version:
        raise TransitInputError("ciphertext or signature version is disallowed by policy (too old)")
    try:
        key.km.get_key(version)
    except KeyNotFoundError:
        raise TransitInputError("invalid version: version is too new") from None
    except KeyRevokedError:
        raise TransitInputError("ciphertext or signature version is disallowed by policy (too old)") from None


# ---- signing ------------------------------------------------------------------------------------
def _digest(data: bytes, hash_algorithm: str, prehashed: bool) -> tuple[bytes, hashes.HashAlgorithm]:
    if hash_algorithm not in SIGN_HASHES:
        raise TransitInputError(f"unsupported hash algorithm {hash_algorithm}")
    algorithm = SIGN_HASHES[hash_algorithm]()
    if prehashed:
        if len(data) != algorithm.digest_size:
            raise TransitInputError(
                f"prehashed input must be {algorithm.digest_size} bytes for {hash_algorithm}, got {len(data)}")
        return data, algorithm
    return _HASHLIB[hash_algorithm](data).digest(), algorithm


def _pss(salt_length: str | int, algorithm: hashes.HashAlgorithm, signing: bool) -> padding.PSS:
    if salt_length == "auto":
        salt: Any = padding.PSS.MAX_LENGTH if signing else padding.PSS.AUTO
    elif salt_length == "hash":
        salt = padding.PSS.DIGEST_LENGTH
    elif isinstance(salt_length, int) and salt_length >= 0:
        salt = salt_length
    else:
        raise TransitInputError(f"salt length {salt_length!r} is invalid: auto, hash or a non-negative integer")
    return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt)


class SignOptions:
    """Vault's signing parameters, checked once per request."""

    __slots__ = ("hash_algorithm", "marshaling", "prehashed", "salt_length", "signature_algorithm")

    def __init__(self, hash_algorithm: str = "sha2-256", *, prehashed: bool = False,
                 signature_algorithm: str = "", marshaling: str = "asn1", salt_length: str | int = "auto") -> None:
        if marshaling not in ("asn1", "jws"):
            raise TransitInputError(f"unknown marshaling type {marshaling}")
        if signature_algorithm not in ("", "pss", "pkcs1v15"):
            raise TransitInputError(f"unsupported signature algorithm {signature_algorithm}")
        if hash_algorithm not in SIGN_HASHES:
            raise TransitInputError(f"unsupported hash algorithm {hash_algorithm}")
        self.hash_algorithm = hash_algorithm
        self.prehashed = prehashed
        self.signature_algorithm = signature_algorithm or "pss"
        self.marshaling = marshaling
        self.salt_length = salt_length


def check_signs(key: LiveKey) -> KeyType:
    """The key's type, if it signs (Vault refuses a whole request on a key that does not)."""
    kt = type_of(key)
    if not kt.signs:
        raise TransitInputError(f"key type {kt.name} does not support signing")
    return kt


def _check_marshaling(kt: KeyType, opts: SignOptions) -> None:
    if opts.marshaling == "jws" and kt.family != "ecdsa":
        raise TransitInputError("'jws' marshaling type is only supported for ECDSA keys")


def sign(key: LiveKey, data: bytes, opts: SignOptions, *, context: bytes | None = None,
         key_version: int = 0) -> tuple[str, int]:
    """(``vault:v<N>:<signature>``, N) over ``data`` with the active version (or ``key_version``)."""
    kt = type_of(key)
    if not kt.signs:
        raise TransitInputError(f"key type {kt.name} does not support signing")
    _check_marshaling(kt, opts)
    version = signing_version(key, key_version)
    ctx = _ed25519_context(key, context)
    private = version_key(key, version, ctx)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        signature = private.sign(data)
    else:
        digest, algorithm = _digest(data, opts.hash_algorithm, opts.prehashed)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            signature = private.sign(digest, ec.ECDSA(Prehashed(algorithm)))
            if opts.marshaling == "jws":
                r, s = decode_dss_signature(signature)
                size = (private.curve.key_size + 7) // 8
                signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
                body = base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")
                return f"{CIPHERTEXT_PREFIX}{version}:{body}", version
        else:
            pad: padding.AsymmetricPadding = (padding.PKCS1v15() if opts.signature_algorithm == "pkcs1v15"
                                              else _pss(opts.salt_length, algorithm, True))
            signature = private.sign(digest, pad, Prehashed(algorithm))
    return f"{CIPHERTEXT_PREFIX}{version}:{b64(signature)}", version


def verify(key: LiveKey, data: bytes, signature_text: Any, opts: SignOptions, *,
           context: bytes | None = None) -> tuple[bool, int]:
    """(valid, version) of a signature; a malformed one, or one from a retired version, is an error."""
    kt = type_of(key)
    if not kt.signs:
        raise TransitInputError(f"key type {kt.name} does not support verification")
    _check_marshaling(kt, opts)
    version, body = parse_signed(signature_text)
    signature = _decode(body, opts.marshaling == "jws", "signature")
    verifying_version(key, version)
    public = version_key(key, version, _ed25519_context(key, context)).public_key()
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
            return True, version
        digest, algorithm = _digest(data, opts.hash_algorithm, opts.prehashed)
        if isinstance(public, ec.EllipticCurvePublicKey):
            if opts.marshaling == "jws":
                size = (public.curve.key_size + 7) // 8
                if len(signature) != 2 * size:
                    return False, version
                signature = encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                                 int.from_bytes(signature[size:], "big"))
            public.verify(signature, digest, ec.ECDSA(Prehashed(algorithm)))
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            pad: padding.AsymmetricPadding = (padding.PKCS1v15() if opts.signature_algorithm == "pkcs1v15"
                                              else _pss(opts.salt_length, algorithm, False))
            public.verify(signature, digest, pad, Prehashed(algorithm))
    except (InvalidSignature, ValueError):
        return False, version
    return True, version


def _ed25519_context(key: LiveKey, context: bytes | None) -> bytes:
    if not key.config.derived:
        return b""
    if not context:
        raise TransitInputError("missing 'context' for key derivation; the key was created using a derived "
                                "key, which means additional, per-request information must be included in "
                                "order to perform operations with the key")
    return context


# ---- RSA-OAEP --------------------------------------------------------------------------------------
def rsa_encrypt(key: LiveKey, plaintext: bytes, key_version: int = 0) -> str:
    version = signing_version(key, key_version)
    private = version_key(key, version)
    assert isinstance(private, rsa.RSAPrivateKey)
    try:
        ct = private.public_key().encrypt(plaintext, _OAEP)
    except ValueError:
        raise TransitInputError("plaintext is too long for an RSA-OAEP encryption under this key") from None
    return f"{CIPHERTEXT_PREFIX}{version}:{b64(ct)}"


def rsa_decrypt(key: LiveKey, ciphertext: Any) -> tuple[bytes, int]:
    version, body = parse_signed(ciphertext, "ciphertext")
    blob = _decode(body, False, "ciphertext")
    verifying_version(key, version)
    private = version_key(key, version)
    assert isinstance(private, rsa.RSAPrivateKey)
    try:
        return private.decrypt(blob, _OAEP), version
    except ValueError:
        raise DecryptionError("failed to RSA decrypt the ciphertext") from None


# ---- HMAC verify -----------------------------------------------------------------------------------
def verify_mac(expected: str, computed: str) -> bool:
    return _hmac.compare_digest(expected.encode(), computed.encode())
