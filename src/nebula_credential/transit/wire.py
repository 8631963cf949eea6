"""Vault's wire format for Transit: base64 fields, ``vault:v<N>:`` strings, the AAD, batch results.

Everything here is pure: decoding a base64 field, building the AES-GCM
context bytes, shaping a batch answer (request bodies: :mod:`.requests`).  A malformed value raises
:class:`TransitInputError` naming the field, never a crash.
"""

from __future__ import annotations

import binascii
import functools
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
#: ``lp(None)``: an absent field, distinct from an empty one.
ABSENT = b"\xff\xff\xff\xff"
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


def _binascii_decode(text: str) -> bytes:
    return _a2b(text, strict_mode=True)


def _binascii_encode(data: bytes) -> str:
    return _b2a(data, newline=False).decode("ascii")


def _simd_base64() -> tuple[Callable[[str], bytes], Callable[[bytes], str]]:
    """pybase64's SIMD codec, two to three times binascii's speed on a Transit item (the server
    extra installs it), with binascii's answers; binascii alone without it."""
    try:
        from pybase64 import b64decode as simd_decode
        from pybase64 import b64encode_as_string as simd_encode
    except ImportError:  # pragma: no cover - binascii alone gives the same answers
        return _binascii_decode, _binascii_encode

    def strict_decode(text: str) -> bytes:
        """``binascii.a2b_base64(text, strict_mode=True)``, the SIMD decoder first.

        pybase64's ``validate`` is stricter than binascii's strict mode (it refuses
        some padding binascii accepts) and never laxer, and equal where both accept:
        what it refuses, binascii judges, so the answer is binascii's every time.
        """
        try:
            return simd_decode(text, validate=True)
        except ValueError:  # binascii.Error is one
            return _a2b(text, strict_mode=True)

    return strict_decode, simd_encode


#: Strict standard base64 of a ``str`` (binascii's strict mode: its answer, its errors), and
#: the standard base64 text of bytes.
strict_b64decode, b64 = _simd_base64()
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
        return strict_b64decode(value)  # base64.b64decode(validate=True) without its wrapping
    except (binascii.Error, ValueError):
        raise TransitInputError(f"{field_name} is not valid base64") from None


def lp(data: bytes | None) -> bytes:
    return ABSENT if data is None else _U32.pack(len(data)) + data


def aad_prefix(keyring: str) -> bytes:
    """What every Transit AAD of ``keyring`` starts with (:func:`transit_aad` appends the two fields)."""
    name = keyring.encode("utf-8")
    return _AAD_DOMAIN + _U32.pack(len(name)) + name


def transit_aad(keyring: str, associated_data: bytes | None, context: bytes | None) -> bytes:
    """Context bytes of a Transit ciphertext: its keyring, associated data and derivation context."""
    return aad_prefix(keyring) + lp(associated_data) + lp(context)


#: ``vault:v<N>:`` and N per envelope prefix (magic, format, algorithm, key version): a
#: ciphertext's text head is looked up, not formatted, once per version.
_HEADS: dict[bytes, tuple[str, int]] = {}
_HEADS_MAX = 4096


def ciphertext_head(blob: bytes) -> tuple[str, int]:
    """(``vault:v<N>:``, N) of an envelope this process produced."""
    prefix = blob[:env.KEY_VERSION_END]
    found = _HEADS.get(prefix)
    if found is None:
        version = env.peek_version(blob)
        found = (f"{CIPHERTEXT_PREFIX}{version}:", version)
        if len(_HEADS) < _HEADS_MAX:  # versions are few; a bound keeps a long-lived process small anyway
            _HEADS[prefix] = found
    return found


def format_ciphertext(blob: bytes) -> str:
    return ciphertext_head(blob)[0] + b64(blob)


def versioned_ciphertext(blob: bytes) -> tuple[str, int]:
    """(``vault:v<N>:<base64 envelope>``, N) of an envelope this process produced."""
    head, version = ciphertext_head(blob)
    return head + b64(blob), version


@functools.lru_cache(maxsize=1024)
def _envelope_prefix(version: int) -> bytes:
    return env.version_prefix(version)


def parse_ciphertext(text: Any) -> tuple[int, bytes]:
    """``vault:v<N>:<base64 envelope>`` -> (N, envelope); N must match the envelope header.

    The common case, a well-formed string whose envelope starts with version N's prefix, is
    checked in a few C calls; anything else goes through every check in turn for its message.
    """
    if text.__class__ is str and text.startswith(CIPHERTEXT_PREFIX):
        colon = text.find(":", _PREFIX_LEN, _PREFIX_LEN + 11)  # at most 10 digits
        head = text[_PREFIX_LEN:colon] if colon > 0 else ""
        if head.isdigit() and head.isascii():
            version = int(head)
            if 1 <= version <= env.MAX_KEY_VERSION:
                try:
                    blob = strict_b64decode(text[colon + 1:])
                except (binascii.Error, ValueError):
                    blob = b""
                if len(blob) >= env.MIN_SIZE and blob.startswith(_envelope_prefix(version)):
                    return version, blob  # what the checks below would accept, and nothing else
    return _parse_ciphertext_checked(text)


def _parse_ciphertext_checked(text: Any) -> tuple[int, bytes]:
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


_PREFIX_LEN = len(CIPHERTEXT_PREFIX)


def is_decimal(text: str) -> bool:
    """ASCII digits with an optional minus (``str.isdigit`` also accepts '¹' and other digits)."""
    return re.fullmatch(r"-?[0-9]+", text) is not None


@dataclass(slots=True)
class BatchResult:
    """Per-item results in input order (an item that failed has ``"error"``), the
    key versions the request used (for the audit event, never the data) and how
    many items failed (counted as they fail, not by a walk over the answers)."""

    items: list[dict[str, Any]]
    batched: bool
    versions: set[int] = field(default_factory=set)
    failed: int = 0


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
