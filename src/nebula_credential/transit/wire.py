"""Vault's wire format for Transit: base64 fields, ``vault:v<N>:`` strings, the AAD, batch results.

Everything here is pure: decoding a base64 field, building the AES-GCM
context bytes, shaping a batch answer (request bodies: :mod:`.requests`).  A malformed value raises
:class:`TransitInputError` naming the field, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import envelope as env
from ..exceptions import EnvelopeFormatError
from .errors import TransitInputError

CIPHERTEXT_PREFIX = "vault:v"
#: Vault refuses an ``auto_rotate_period`` shorter than an hour (0 disables it).
MIN_AUTO_ROTATE = 3600
_U32 = struct.Struct(">I")
_AAD_DOMAIN = b"nc-transit\x00"
HASHES: dict[str, Callable[..., Any]] = {
    "sha2-224": hashlib.sha224,
    "sha2-256": hashlib.sha256,
    "sha2-384": hashlib.sha384,
    "sha2-512": hashlib.sha512,
    "sha3-224": hashlib.sha3_224,
    "sha3-256": hashlib.sha3_256,
    "sha3-384": hashlib.sha3_384,
    "sha3-512": hashlib.sha3_512,
}


def b64decode(value: Any, field_name: str, *, required: bool = False) -> bytes | None:
    """Strict standard base64 (what Vault's JSON fields carry); None when absent."""
    if value is None or value == "":
        if required:
            raise TransitInputError(f"missing {field_name}")
        return None
    if not isinstance(value, str):
        raise TransitInputError(f"{field_name} must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # base64.b64decode(validate=True) without its wrapping
    except (binascii.Error, ValueError):
        raise TransitInputError(f"{field_name} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def lp(data: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if data is None else _U32.pack(len(data)) + data


def transit_aad(keyring: str, associated_data: bytes | None, context: bytes | None) -> bytes:
    """Context bytes of a Transit ciphertext: its keyring, associated data and derivation context."""
    name = keyring.encode("utf-8")
    return _AAD_DOMAIN + _U32.pack(len(name)) + name + lp(associated_data) + lp(context)


def format_ciphertext(blob: bytes) -> str:
    return f"{CIPHERTEXT_PREFIX}{env.peek_version(blob)}:{b64(blob)}"


def parse_ciphertext(text: Any) -> tuple[int, bytes]:
    """``vault:v<N>:<base64 envelope>`` -> (N, envelope); N must match the envelope header."""
    if not isinstance(text, str) or not text:
        raise TransitInputError("missing ciphertext")
    if not text.startswith(CIPHERTEXT_PREFIX):
        raise TransitInputError("invalid ciphertext: no prefix")
    head, sep, body = text[len(CIPHERTEXT_PREFIX):].partition(":")
    if not sep or not is_decimal(head) or head.startswith("-") or len(head) > 10:
        raise TransitInputError("invalid ciphertext: could not parse version")
    version = int(head)
    if version < 1:
        raise TransitInputError("invalid ciphertext: version must be at least 1")
    blob = b64decode(body, "ciphertext")
    if blob is None:
        raise TransitInputError("invalid ciphertext: empty")
    try:
        parsed = env.parse(blob)
    except EnvelopeFormatError as exc:
        raise TransitInputError(f"invalid ciphertext: {exc}") from None
    if parsed.key_version != version:
        raise TransitInputError("invalid ciphertext: version does not match its envelope")
    return version, blob


def is_decimal(text: str) -> bool:
    """ASCII digits with an optional minus (``str.isdigit`` also accepts '¹' and other digits)."""
    return re.fullmatch(r"-?[0-9]+", text) is not None


@dataclass(slots=True)
class BatchResult:
    """Per-item results in input order (an item that failed has ``"error"``), and the
    key versions the request used (for the audit event, never the data)."""

    items: list[dict[str, Any]]
    batched: bool
    versions: set[int] = field(default_factory=set)

    @property
    def failed(self) -> int:
        return sum(1 for item in self.items if "error" in item)


#: A response's ``data`` and what happened per item.
Handled = tuple[dict[str, Any], BatchResult]
#: One item's answer and the key version it used.
Item = tuple[dict[str, Any], int]


def version_of(text: str) -> int:
    """N of a ``vault:v<N>:...`` string this module produced."""
    return int(text[len(CIPHERTEXT_PREFIX):].split(":", 1)[0])


def with_version(ciphertext: str) -> Item:
    version = version_of(ciphertext)
    return {"ciphertext": ciphertext, "key_version": version}, version
