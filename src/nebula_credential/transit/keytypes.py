"""Vault's Transit key types: what each one can do, and its per-version key from the version's DEK.

Every Transit key version is a keyring version whose secret is the 32-byte
DEK the key provider wraps (the keyring's lifecycle, backups, escrow and
audit chain cover it like any other).  The type-specific key is made from
that DEK, never stored beside it in the clear:

* ``aes256-gcm96``: the DEK itself (the keyring's own envelope, unchanged);
* ``aes128-gcm96``, ``chacha20-poly1305``, ``hmac``, ``ed25519`` and the
  ECDSA curves: HKDF-SHA256 over the DEK with a per-type label (an ECDSA
  scalar is the derived bytes reduced into ``[1, n-1]``);
* ``rsa-*``: RSA keys cannot be derived from a seed with ``cryptography``, so
  a generated private key (PKCS#8 DER) is sealed with AES-GCM under a key
  HKDF-derived from the DEK and kept in the store's meta table
  (:mod:`.rsastore`).  Destroying the version's DEK (trim, retention)
  makes it unreadable as it does every other type's key.

Every primitive is ``cryptography``'s; nothing here is hand-made crypto.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import TransitInputError

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_LABEL = b"nebula-credential transit key v1\x00"

# Group orders (FIPS 186-4, D.1.2): a derived scalar is reduced into [1, n-1].
_ORDERS = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                 "581A0DB248B0A77AECEC196ACCC52973", 16),
    "P-521": int("01FF" + "FFFFFFFF" * 7 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D0"
                 "3BB5C9B8899C47AEBB6FB71E91386409", 16),
}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


@dataclass(frozen=True, slots=True)
class KeyType:
    """One of Vault's Transit key types and what its keys support."""

    name: str
    family: str  # "aead", "hmac", "ed25519", "ecdsa", "rsa"
    curve: str = ""  # ECDSA: P-256, P-384, P-521
    bits: int = 0  # RSA modulus bits, or the AEAD key bits

    @property
    def encrypts(self) -> bool:
        return self.family in ("aead", "rsa")

    @property
    def signs(self) -> bool:
        return self.family in ("ed25519", "ecdsa", "rsa")

    @property
    def derives(self) -> bool:
        return self.family == "aead" or self.family == "ed25519"

    @property
    def asymmetric(self) -> bool:
        return self.signs

    @property
    def public_name(self) -> str:
        """The ``name`` Vault shows beside a version's public key."""
        return self.curve or self.name


KEY_TYPES: dict[str, KeyType] = {t.name: t for t in (
    KeyType("aes128-gcm96", "aead", bits=128),
    KeyType("aes256-gcm96", "aead", bits=256),
    KeyType("chacha20-poly1305", "aead", bits=256),
    KeyType("ed25519", "ed25519"),
    KeyType("ecdsa-p256", "ecdsa", curve="P-256"),
    KeyType("ecdsa-p384", "ecdsa", curve="P-384"),
    KeyType("ecdsa-p521", "ecdsa", curve="P-521"),
    KeyType("rsa-2048", "rsa", bits=2048),
    KeyType("rsa-3072", "rsa", bits=3072),
    KeyType("rsa-4096", "rsa", bits=4096),
    KeyType("hmac", "hmac"),
)}
SUPPORTED_TYPES = tuple(KEY_TYPES)
DEFAULT_HMAC_KEY_SIZE = 32
MAX_HMAC_KEY_SIZE = 512


def key_type(name: str) -> KeyType:
    found = KEY_TYPES.get(name)
    if found is None:
        raise TransitInputError(f"unknown key type {name}")
    return found


def hkdf(dek: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """HKDF-SHA256 over a version's DEK: ``label`` names the use, ``context`` a derived key's context."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=_LABEL + label + b"\x00" + context).derive(dek)


def symmetric_key(kt: KeyType, dek: bytes, key_size: int = DEFAULT_HMAC_KEY_SIZE) -> bytes:
    """The raw key of an AEAD or ``hmac`` version (``aes256-gcm96``: the DEK itself)."""
    if kt.name == "aes256-gcm96":
        return dek
    if kt.family == "hmac":
        return hkdf(dek, b"hmac-key", key_size)
    return hkdf(dek, kt.name.encode(), kt.bits // 8)


def private_key(kt: KeyType, dek: bytes, context: bytes = b"") -> PrivateKey:
    """The ed25519 or ECDSA private key of a version (RSA keys are stored: see :mod:`.rsastore`)."""
    if kt.family == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(hkdf(dek, b"ed25519", 32, context))
    if kt.family == "ecdsa":
        order = _ORDERS[kt.curve]
        wide = hkdf(dek, kt.name.encode(), (order.bit_length() + 7) // 8 + 16)
        scalar = int.from_bytes(wide, "big") % (order - 1) + 1
        return ec.derive_private_key(scalar, _CURVES[kt.curve])
    raise TransitInputError(f"key type {kt.name} has no derived private key")


def generate_rsa(kt: KeyType) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=kt.bits)


def public_key_text(kt: KeyType, key: PrivateKey) -> str:
    """Vault's form of a public key: base64 of the raw 32 bytes (ed25519), PEM otherwise."""
    pub = key.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def private_key_text(key: PrivateKey) -> str:
    """Vault's ``signing-key`` export: ed25519 as base64 of seed + public key, ECDSA as an
    ``EC PRIVATE KEY`` PEM, RSA as an ``RSA PRIVATE KEY`` PEM."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(seed + pub).decode("ascii")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode("ascii")
