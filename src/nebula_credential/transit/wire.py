"""Vault's wire format for Transit: base64 fields, ``vault:v<N>:`` strings, batches, keyless endpoints.

Everything here is pure: parsing a request field, building the AES-GCM
context bytes, shaping a batch answer.  A malformed value raises
:class:`TransitInputError` naming the field, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import envelope as env
from ..exceptions import ConfigError, EnvelopeFormatError
from .errors import TransitInputError

CIPHERTEXT_PREFIX = "vault:v"
MAX_RANDOM_BYTES = 128 * 1024
#: Vault refuses an ``auto_rotate_period`` shorter than an hour (0 disables it).
MIN_AUTO_ROTATE = 3600
MAX_PERIOD_DAYS = 100 * 366
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
        return base64.b64decode(value, validate=True)
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


def int_field(body: dict[str, Any], name: str, default: int = 0) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and is_decimal(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransitInputError(f"{name} must be an integer")
    return value


def bool_field(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise TransitInputError(f"{name} must be true or false")
    return value


def period_field(body: dict[str, Any], name: str) -> int:
    from ..durations import parse_duration

    value = body[name]
    if isinstance(value, str) and is_decimal(value) and not value.startswith("-"):
        value = int(value)
    try:
        seconds = int(parse_duration(value, name).total_seconds())
    except ConfigError as exc:
        raise TransitInputError(str(exc)) from None
    except (OverflowError, ValueError):  # timedelta refuses more than 999,999,999 days
        raise TransitInputError(f"{name}: a duration of at most {MAX_PERIOD_DAYS} days") from None
    if seconds > MAX_PERIOD_DAYS * 86400:
        raise TransitInputError(f"{name}: a duration of at most {MAX_PERIOD_DAYS} days")
    if seconds and seconds < MIN_AUTO_ROTATE:
        raise TransitInputError("auto rotate period must be 0 to disable or at least an hour")
    return seconds


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


def random_bytes(body: dict[str, Any], count: int | None = None, fmt: str | None = None) -> dict[str, Any]:
    """``random[/:bytes]``: ``bytes`` (default 32) from the OS CSPRNG, ``format`` base64|hex."""
    n = count if count is not None else int_field(body, "bytes", 32)
    if not 1 <= n <= MAX_RANDOM_BYTES:
        raise TransitInputError(f"bytes must be 1..{MAX_RANDOM_BYTES}")
    fmt = fmt or str(body.get("format", "base64"))
    data = os.urandom(n)
    if fmt == "hex":
        return {"random_bytes": data.hex()}
    if fmt == "base64":
        return {"random_bytes": b64(data)}
    raise TransitInputError(f"unsupported encoding format {fmt}; must be \"hex\" or \"base64\"")


def hash_input(body: dict[str, Any], algorithm: str | None = None) -> dict[str, Any]:
    """``hash[/:algorithm]``: a digest of base64 ``input``, ``format`` hex|base64."""
    algo = algorithm or str(body.get("algorithm", "sha2-256"))
    if algo not in HASHES:
        raise TransitInputError(f"unsupported hash algorithm {algo}")
    data = b64decode(body.get("input"), "input", required=True) or b""
    digest = HASHES[algo](data).digest()
    fmt = str(body.get("format", "hex"))
    if fmt == "hex":
        return {"sum": digest.hex()}
    if fmt == "base64":
        return {"sum": b64(digest)}
    raise TransitInputError(f"unsupported encoding format {fmt}; must be \"hex\" or \"base64\"")

