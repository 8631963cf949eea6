"""Envelope format v1: the binary layout of every ciphertext we produce.

::

    offset  size  field
    0       2     magic b"NC"
    2       1     format version = 1
    3       1     algorithm id: 1 = AES-256-GCM
    4       4     key version, uint32 big-endian
    8       12    nonce (random: the OS CSPRNG, drawn in batches by _nonce)
    20      n+16  ciphertext || GCM tag

The AES-GCM associated data is the 20-byte header followed by the caller's
context bytes, so an edited header or a blob moved to another context fails
authentication.  Parsing never trusts the blob: anything that is not an
envelope raises :class:`EnvelopeFormatError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from .exceptions import EnvelopeFormatError

MAGIC = b"NC"
FORMAT_VERSION = 1
ALG_AES_256_GCM = 1
PREFIX = MAGIC + bytes((FORMAT_VERSION, ALG_AES_256_GCM))
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = 20
#: Where the key version sits in the header: bytes KEY_VERSION_OFFSET..KEY_VERSION_END, uint32 big-endian.
KEY_VERSION_OFFSET = 4
KEY_VERSION_END = 8
MIN_SIZE = HEADER_SIZE + TAG_SIZE
MAX_KEY_VERSION = 0xFFFFFFFF

_U32 = struct.Struct(">I")


class Envelope(NamedTuple):
    """A parsed envelope; ``header`` is the 20 bytes that go into the AAD."""

    key_version: int
    nonce: bytes
    ciphertext: bytes  # ciphertext || tag
    header: bytes


def version_prefix(key_version: int) -> bytes:
    """The 8 fixed bytes before the nonce, precomputed once per key version."""
    if not 1 <= key_version <= MAX_KEY_VERSION:
        raise ValueError(f"key version must be 1..{MAX_KEY_VERSION}, got {key_version}")
    return PREFIX + _U32.pack(key_version)


def parse(blob: bytes | bytearray | memoryview) -> Envelope:
    """Split an envelope into its fields, refusing anything malformed."""
    data = _bytes(blob)
    key_version = _checked_version(data)
    return Envelope(key_version, data[8:HEADER_SIZE], data[HEADER_SIZE:], data[:HEADER_SIZE])


def peek_version(blob: bytes | bytearray | memoryview) -> int:
    """The key version an envelope names, after full validation of the header.

    The one reader of the header for code holding an envelope (one it just
    produced, or one from outside): nothing but this module knows where the
    version sits.  Cheaper than :func:`parse`: the ciphertext is not copied.
    """
    return _checked_version(_bytes(blob))


def header_version(blob: bytes | bytearray | memoryview) -> int | None:
    """The key version bytes of a blob that starts like an envelope, else None; no other check.

    For stored rows, which a database writer may have edited: the header,
    not a column, is what decryption goes by, so a reader takes the version
    from here and leaves judging the rest of the blob to decryption.
    """
    # no copy: a slice of bytes, bytearray or memoryview compares with bytes by content
    if len(blob) < KEY_VERSION_END or blob[:2] != MAGIC:
        return None
    return int(_U32.unpack_from(blob, KEY_VERSION_OFFSET)[0])


def key_version_field(field: bytes | bytearray | memoryview) -> int | None:
    """The key version in the header's version field alone (bytes KEY_VERSION_OFFSET..KEY_VERSION_END),
    as a query cut it out of a stored envelope; None if it is not that long."""
    if len(field) != KEY_VERSION_END - KEY_VERSION_OFFSET:
        return None
    return int(_U32.unpack(bytes(field))[0])


def _bytes(blob: object) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise EnvelopeFormatError(f"envelope must be bytes, got {type(blob).__name__}")
    return bytes(blob)


def _checked_version(data: bytes) -> int:
    """The header's key version, refusing a blob that is not a well-formed envelope."""
    if len(data) < MIN_SIZE:
        raise EnvelopeFormatError(
            f"envelope too short: {len(data)} bytes, at least {MIN_SIZE} required"
        )
    if data[: len(MAGIC)] != MAGIC:
        raise EnvelopeFormatError("not a nebula-credential envelope (bad magic)")
    if data[2] != FORMAT_VERSION:
        raise EnvelopeFormatError(f"unsupported envelope format version {data[2]}")
    if data[3] != ALG_AES_256_GCM:
        raise EnvelopeFormatError(f"unsupported algorithm id {data[3]}")
    (key_version,) = _U32.unpack_from(data, KEY_VERSION_OFFSET)
    if key_version == 0:
        raise EnvelopeFormatError("envelope names key version 0, which never exists")
    return int(key_version)


def _field(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _U32.pack(len(raw)) + raw


@lru_cache(maxsize=256)
def _cred_head(keyring: str) -> bytes:
    return b"nc-cred\x00" + _field(keyring)


#: Keyrings and scopes are few and repeat on every call (a re-encryption pass
#: builds one context per row): their encoded fields are kept, ids are not.
_scope_field = lru_cache(maxsize=256)(_field)


def credential_context(keyring: str, credential_id: str, scope: str) -> bytes:
    """Context bytes binding a stored credential to its record.

    Each field is length-prefixed so ("ab", "c") and ("a", "bc") differ.
    """
    return _cred_head(keyring) + _field(credential_id) + _scope_field(scope)


def credential_contexts(keyring: str, scope: str) -> Callable[[str], bytes]:
    """:func:`credential_context` with the keyring and scope fixed: ``id -> context bytes``.

    For a loop over many ids of one keyring and scope (a re-encryption
    batch): the fixed fields are encoded once and each call only encodes
    the id.  The bytes are exactly :func:`credential_context`'s.
    """
    head, tail, pack = _cred_head(keyring), _scope_field(scope), _U32.pack

    def context(credential_id: str) -> bytes:
        raw = credential_id.encode("utf-8")
        return head + pack(len(raw)) + raw + tail

    return context


def dek_context(keyring: str, version: int, purpose: str = "dek") -> bytes:
    """Context bytes a provider binds a wrapped DEK to."""
    return b"nc-wrap\x00" + _field(purpose) + _field(keyring) + _U32.pack(version)
