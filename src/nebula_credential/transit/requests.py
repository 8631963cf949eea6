"""Vault's Transit request bodies: parsed here into typed values for the engine, answers shaped here.

Beside :mod:`.wire` (the format of one field); each ``handle_*`` takes a
:class:`~nebula_credential.transit.engine.Transit` and a JSON body as Vault's
endpoint would (base64 fields, ``batch_input`` with per-item results and
errors) and calls the engine with bytes, ints and typed settings, so the
HTTP mount is a thin router over them.  A malformed field raises
:class:`TransitInputError` naming it, never a crash.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from time import perf_counter
from typing import Any

from ..config import validate_cron
from ..durations import parse_duration
from ..exceptions import ConfigError, NebulaCredentialError
from ..models import KeyStatus
from . import asym, crypto
from .asym import SignOptions
from .engine import Transit
from .errors import TransitInputError, TransitKeyNotFoundError
from .keys import KeyConfigChange, KeyInfo, LiveKey
from .keytypes import key_type
from .settings import TransitKeyConfig, check_timezone
from .wire import (
    HASHES,
    MIN_AUTO_ROTATE,
    BatchResult,
    Handled,
    Item,
    b64,
    b64decode,
    is_decimal,
    strict_b64decode,
    version_of,
    with_version,
)

MAX_RANDOM_BYTES = 128 * 1024
MAX_PERIOD_DAYS = 100 * 366


# ---- one field -------------------------------------------------------------------------------
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


# ---- batches ------------------------------------------------------------------------------------
def batch_items(body: dict[str, Any], fields: Sequence[str]) -> tuple[list[dict[str, Any]], bool]:
    """The request's items (``batch_input``, or the body's own ``fields`` as one item), and whether batched."""
    batch = body.get("batch_input")
    if batch is None:
        return [{f: body[f] for f in fields if f in body}], False
    if isinstance(batch, str):
        try:
            batch = json.loads(batch)
        except ValueError:
            raise TransitInputError("batch_input is not valid JSON") from None
    if not isinstance(batch, list) or not batch:
        raise TransitInputError("missing batch input to process")
    if not all(isinstance(item, dict) for item in batch):
        raise TransitInputError("batch_input items must be objects")
    return batch, True


def run_batch(body: dict[str, Any], fields: Sequence[str], one: Callable[[dict[str, Any]], Item],
              failed: dict[str, Any] | None = None) -> Handled:
    """One item: its answer or its error; a batch: every item's answer or error, in order
    (a failed item: ``failed``'s fields, then ``error``)."""
    items, batched = batch_items(body, fields)
    if not batched:
        data, version = one(items[0])
        return data, BatchResult([data], False, {version})
    return answer_items(items, one, failed)


def answer_items(items: list[dict[str, Any]], one: Callable[[dict[str, Any]], Item],
                 failed: dict[str, Any] | None = None) -> Handled:
    """A batch's answers: each item's ``one`` answer or its error, in order, with its ``reference``."""
    results: list[dict[str, Any]] = []
    append = results.append
    versions: set[int] = set()
    errors = 0
    for item in items:
        try:
            out, version = one(item)
            versions.add(version)
        except NebulaCredentialError as exc:
            out = {**failed, "error": str(exc)} if failed else {"error": str(exc)}
            errors += 1
        out["reference"] = item.get("reference", "")
        append(out)
    return {"batch_results": results}, BatchResult(results, True, versions, errors)


def observed_batch(transit: Transit, key: LiveKey, operation: str, items: list[dict[str, Any]],
                   one: Callable[[dict[str, Any]], Item]) -> Handled:
    """:func:`answer_items`, seen by the metrics observer once, as one request (observing each item
    cost ~4 µs an item, as much as the item itself)."""
    start = perf_counter()
    handled = answer_items(items, one)
    transit.observe(key, operation, perf_counter() - start, not handled[1].failed)
    return handled


# ---- keys -----------------------------------------------------------------------------------------
def key_body(info: KeyInfo) -> dict[str, Any]:
    """Vault's read shape of a key, plus our own view under ``nebula``."""
    cfg, versions, counts = info.config, info.versions, info.credentials
    latest = max((v.version for v in versions), default=0)
    active = next((v for v in versions if v.status is KeyStatus.ACTIVE), None)
    kt = key_type(cfg.type)
    shown = [v for v in versions if v.version >= cfg.min_decryption_version and v.status is not KeyStatus.DESTROYED]
    keys: dict[str, Any] = {str(v.version): int(v.created_at.timestamp()) for v in shown}
    if kt.asymmetric:
        keys = {
            str(v.version): {
                "name": kt.public_name,
                "public_key": info.public_keys.get(v.version, ""),
                "creation_time": v.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "certificate_chain": "",
            }
            for v in shown
        }
    data: dict[str, Any] = {
        "name": cfg.name,
        "type": cfg.type,
        "keys": keys,
        "latest_version": latest,
        "min_decryption_version": cfg.min_decryption_version,
        "min_encryption_version": cfg.min_encryption_version,
        "min_available_version": cfg.min_available_version,
        "deletion_allowed": cfg.deletion_allowed,
        "auto_rotate_period": cfg.auto_rotate_period,
        "derived": cfg.derived,
        "exportable": cfg.exportable,
        "allow_plaintext_backup": cfg.allow_plaintext_backup,
        "imported_key": False,
        "soft_deleted": False,
        "supports_encryption": kt.encrypts,
        "supports_decryption": kt.encrypts,
        "supports_derivation": kt.derives,
        "supports_signing": kt.signs,
    }
    if kt.family == "hmac":
        data["key_size"] = cfg.key_size
        del data["keys"]  # as Vault: an hmac key's read shows no per-version map
    if cfg.backup_info:
        data["backup_info"] = cfg.backup_info
    if cfg.restore_info:
        data["restore_info"] = cfg.restore_info
    if cfg.derived:
        data["kdf"] = "hkdf_sha256"
        data["convergent_encryption"] = False
    data["nebula"] = {
        "keyring": cfg.keyring,
        "versions": [
            {
                "version": v.version,
                "status": v.status.value,
                "created_at": v.created_at.isoformat(),
                "revoked_at": v.revoked_at.isoformat() if v.revoked_at else None,
                "encryptions": v.encryptions,
                "credentials": counts.get(v.version, 0),
            }
            for v in versions
        ],
        "rotation": {
            "strategy": cfg.strategy_name(),
            "auto_rotation": cfg.auto_rotation,
            "auto_rotate_period": cfg.auto_rotate_period,
            "rotation_cron": cfg.rotation_cron or None,
            "rotation_timezone": cfg.rotation_timezone,
            "max_encryptions": cfg.max_encryptions,
        },
        "usage": {
            "active_version": active.version if active else None,
            "encryptions": active.encryptions if active else 0,
            "max_encryptions": cfg.max_encryptions,
        },
    }
    return data


def read_key(transit: Transit, name: str) -> dict[str, Any]:
    """``GET keys/:name``."""
    return key_body(transit.key_info(name))


def handle_create(transit: Transit, name: str, body: dict[str, Any]) -> TransitKeyConfig:
    """``POST keys/:name`` (and the upsert of ``encrypt/:name``)."""
    period = body.get("auto_rotate_period")
    return transit.create_key(
        name,
        type=str(body.get("type") or "aes256-gcm96"),
        derived=bool_field(body, "derived"),
        exportable=bool_field(body, "exportable"),
        convergent_encryption=bool_field(body, "convergent_encryption"),
        allow_plaintext_backup=bool_field(body, "allow_plaintext_backup"),
        auto_rotate_period=period_field(body, "auto_rotate_period") if period not in (None, "", 0) else 0,
        key_size=int_field(body, "key_size"),
    )


def config_change(body: dict[str, Any]) -> KeyConfigChange:
    """The settings a ``keys/:name/config`` body changes (the engine checks them against the key)."""

    def given(name: str, parse: Callable[[dict[str, Any], str], Any]) -> Any:
        return parse(body, name) if name in body else None

    try:
        cron = body.get("rotation_cron")
        rotation_cron = validate_cron(cron, "rotation_cron") if cron not in (None, "") else (
            "" if "rotation_cron" in body else None)
        timezone = check_timezone(body["rotation_timezone"]) if "rotation_timezone" in body else None
    except ConfigError as exc:
        raise TransitInputError(str(exc)) from None
    return KeyConfigChange(
        min_decryption_version=given("min_decryption_version", int_field),
        min_encryption_version=given("min_encryption_version", int_field),
        deletion_allowed=given("deletion_allowed", bool_field),
        auto_rotation=given("auto_rotation", bool_field),
        auto_rotate_period=given("auto_rotate_period", period_field),
        rotation_cron=rotation_cron,
        rotation_timezone=timezone,
        max_encryptions=given("max_encryptions", int_field),
        exportable=given("exportable", bool_field),
        allow_plaintext_backup=given("allow_plaintext_backup", bool_field),
    )


def handle_configure(transit: Transit, name: str, body: dict[str, Any], *,
                     reinstate_allowed: bool = True) -> TransitKeyConfig:
    """``keys/:name/config``; an unknown key is refused before its body is read.

    ``reinstate_allowed``: whether the caller holds the key's reinstate
    capability (a lowered ``min_decryption_version`` may revive revoked versions).
    """
    transit.key_info(name)
    return transit.configure(name, replace(config_change(body), reinstate_allowed=reinstate_allowed))


def handle_trim(transit: Transit, name: str, body: dict[str, Any]) -> TransitKeyConfig:
    """``keys/:name/trim``."""
    if "min_available_version" not in body:
        raise TransitInputError("missing min_available_version")
    return transit.trim(name, int_field(body, "min_available_version"))


# ---- data -----------------------------------------------------------------------------------------
_ENCRYPT_FIELDS = ("plaintext", "context", "associated_data", "key_version")
_DECRYPT_FIELDS = ("ciphertext", "context", "associated_data")
_MISSING: Any = object()  # an item without the field, not one whose value is null


def handle_encrypt(transit: Transit, name: str, body: dict[str, Any], *, create: bool = True) -> Handled:
    """``encrypt/:name``: creates the key on first use when ``create`` (the policy allows it).

    As in Vault, a key created here is derived when the items carry a
    ``context``.  It is created only if at least one item is valid: a
    request refused as a whole writes nothing.
    """
    top_version = int_field(body, "key_version")
    try:
        key = transit.live_key(name)
    except TransitKeyNotFoundError:
        if not create:
            raise
        items, _ = batch_items(body, _ENCRYPT_FIELDS)
        valid = []
        for item in items:
            with contextlib.suppress(NebulaCredentialError):
                valid.append(_encrypt_item(item, top_version))
        if not valid:
            _encrypt_item(items[0], top_version)  # raises the first item's error
        handle_create(transit, name, body | {"derived": body.get("derived") or any(v[2] for v in valid)})
        key = transit.live_key(name)
    if body.get("batch_input") is None:  # one item, the body itself: its fields read in place, not copied
        ciphertext, version = transit.encrypt_item(key, *_encrypt_fields(body), top_version)
        data = {"ciphertext": ciphertext, "key_version": version}
        return data, BatchResult([data], False, {version})
    return _encrypt_batch(transit, key, batch_items(body, _ENCRYPT_FIELDS)[0], top_version)


def _plaintext(item: dict[str, Any]) -> bytes:
    """An item's plaintext decoded (a non-empty string straight to the strict decoder), or its error."""
    text = item.get("plaintext", _MISSING)
    if text.__class__ is str and text:
        try:
            return strict_b64decode(text)
        except (binascii.Error, ValueError):
            raise TransitInputError("plaintext is not valid base64") from None
    if text is _MISSING:
        raise TransitInputError("missing plaintext to encrypt")
    return b64decode(text, "plaintext") or b""


def _encrypt_fields(item: dict[str, Any]) -> tuple[bytes, bytes | None, bytes | None]:
    """An item's plaintext, associated_data and context: :func:`_encrypt_item`'s checks, in its order
    and with its errors, without its key_version (the caller has it) or a call for an absent field."""
    return (_plaintext(item), *_ad_and_context(item))


def _encrypt_item(item: dict[str, Any], top_version: int) -> tuple[bytes, bytes | None, bytes | None, int]:
    """An item's (plaintext, associated_data, context, key_version), checked in Vault's order."""
    return (*_encrypt_fields(item), int_field(item, "key_version", top_version))


def _encrypt_batch(transit: Transit, key: LiveKey, items: list[dict[str, Any]], top_version: int) -> Handled:
    """Every item under one key, each through :meth:`Sealer.seal`.

    What costs per item is its base64, its AES-GCM call and its answer; the
    item's key_version is read only when it has one.
    """
    seal = crypto.sealer(key).seal

    def one(item: dict[str, Any]) -> Item:
        ciphertext, version = seal(_plaintext(item), *_ad_and_context(item),
                                   int_field(item, "key_version", top_version) if "key_version" in item
                                   else top_version)
        return {"ciphertext": ciphertext, "key_version": version}, version

    return observed_batch(transit, key, "encrypt", items, one)


def _ad_and_context(item: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """An item's ``associated_data`` and ``context``, decoded (a field it does not carry: None, no call)."""
    ad = item.get("associated_data")
    context = item.get("context")
    return (None if ad is None else b64decode(ad, "associated_data"),
            None if context is None else b64decode(context, "context"))


def handle_decrypt(transit: Transit, name: str, body: dict[str, Any]) -> Handled:
    """``decrypt/:name``."""
    key = transit.key_for_data(name)
    if body.get("batch_input") is None:  # one item, the body itself (read in place, not copied)
        plaintext, version = transit.decrypt_under(key, body.get("ciphertext"), *_ad_and_context(body))
        data = {"plaintext": b64(plaintext)}
        return data, BatchResult([data], False, {version})
    items, _ = batch_items(body, _DECRYPT_FIELDS)
    open_ = crypto.opener(key).open

    def one(item: dict[str, Any]) -> Item:
        plaintext, version = open_(item.get("ciphertext"), *_ad_and_context(item))
        return {"plaintext": b64(plaintext)}, version

    return observed_batch(transit, key, "decrypt", items, one)


def handle_rewrap(transit: Transit, name: str, body: dict[str, Any]) -> Handled:
    """``rewrap/:name`` (a batch shares one :class:`Opener` and :class:`Sealer`, observed once)."""
    key = transit.key_for_data(name)
    items, batched = batch_items(body, _DECRYPT_FIELDS)
    if not batched:
        item = items[0]
        data, version = with_version(transit.rewrap_under(
            key, item.get("ciphertext"), b64decode(item.get("associated_data"), "associated_data"),
            b64decode(item.get("context"), "context")))
        return data, BatchResult([data], False, {version})
    open_, seal = crypto.opener(key).open, crypto.sealer(key).seal

    def one(item: dict[str, Any]) -> Item:
        ciphertext = item.get("ciphertext")
        ad, context = _ad_and_context(item)
        plaintext, version = open_(ciphertext, ad, context)
        if version == key.km.current_key().version:
            return {"ciphertext": str(ciphertext), "key_version": version}, version  # current: no new nonce
        out, version = seal(plaintext, ad, context)
        return {"ciphertext": out, "key_version": version}, version

    return observed_batch(transit, key, "rewrap", items, one)  # the items batch_items read above


def handle_datakey(transit: Transit, name: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``datakey/{plaintext,wrapped}/:name``: a fresh key, returned encrypted (and in the clear)."""
    if kind not in ("plaintext", "wrapped"):
        raise TransitInputError(f"invalid type {kind!r}: plaintext or wrapped")
    transit.key_for_data(name)  # an unknown key is refused before the body is read
    made = transit.data_key(name, int_field(body, "bits", 256),
                            associated_data=b64decode(body.get("associated_data"), "associated_data"),
                            context=b64decode(body.get("context"), "context"), plaintext=kind == "plaintext")
    out: dict[str, Any] = {"ciphertext": made.ciphertext, "key_version": made.key_version}
    if made.plaintext is not None:
        out["plaintext"] = b64(made.plaintext)
    return out


def handle_hmac(transit: Transit, name: str, body: dict[str, Any], algorithm: str | None = None) -> Handled:
    """``hmac/:name[/:algorithm]``."""
    key_version = int_field(body, "key_version")
    algo = algorithm or str(body.get("algorithm", "sha2-256"))
    key = transit.key_for_data(name)  # one lookup for the batch

    def one(item: dict[str, Any]) -> Item:
        data = b64decode(item.get("input"), "input", required=True) or b""
        mac = crypto.mac(key, data, algo, key_version)
        return {"hmac": mac}, version_of(mac)

    return run_batch(body, ("input",), one)


def sign_options(body: dict[str, Any], hash_algorithm: str | None) -> SignOptions:
    """Vault's signing parameters of a ``sign``/``verify`` body (the path's hash algorithm wins)."""
    algo = hash_algorithm or str(body.get("hash_algorithm") or body.get("algorithm") or "sha2-256")
    salt: Any = body.get("salt_length", "auto")
    if isinstance(salt, str) and is_decimal(salt):
        salt = int(salt)
    return SignOptions(algo, prehashed=bool_field(body, "prehashed"),
                       signature_algorithm=str(body.get("signature_algorithm") or ""),
                       marshaling=str(body.get("marshaling_algorithm") or "asn1"), salt_length=salt)


def handle_sign(transit: Transit, name: str, body: dict[str, Any], hash_algorithm: str | None = None) -> Handled:
    """``sign/:name[/:hash_algorithm]``."""
    key = transit.key_for_data(name)
    asym.check_signs(key)
    opts = sign_options(body, hash_algorithm)
    key_version = int_field(body, "key_version")

    def one(item: dict[str, Any]) -> Item:
        data = b64decode(item.get("input"), "input") or b""
        signature, version = asym.sign(key, data, opts, context=b64decode(item.get("context"), "context"),
                                       key_version=key_version)
        return {"signature": signature, "key_version": version}, version

    return run_batch(body, ("input", "context"), one, {"key_version": 0})


def handle_verify(transit: Transit, name: str, body: dict[str, Any], hash_algorithm: str | None = None) -> Handled:
    """``verify/:name[/:hash_algorithm]``: a ``signature``, or an ``hmac`` (any key type)."""
    key = transit.key_for_data(name)
    if any(item.get("signature") not in (None, "") for item in batch_items(body, ("signature",))[0]):
        asym.check_signs(key)
    opts = sign_options(body, hash_algorithm)
    algo = hash_algorithm or str(body.get("hash_algorithm") or body.get("algorithm") or "sha2-256")

    def one(item: dict[str, Any]) -> Item:
        data = b64decode(item.get("input"), "input") or b""
        if item.get("hmac") not in (None, ""):
            if item.get("signature") not in (None, ""):
                raise TransitInputError("provide one of 'signature' or 'hmac'")
            mac = item["hmac"]
            version, _ = asym.parse_signed(mac, "hmac")
            asym.verifying_version(key, version)
            return {"valid": asym.verify_mac(str(mac), crypto.mac(key, data, algo, version, checked=True))}, version
        if item.get("signature") in (None, ""):
            raise TransitInputError("missing signature or hmac")
        valid, version = asym.verify(key, data, item["signature"], opts,
                                     context=b64decode(item.get("context"), "context"))
        return {"valid": valid}, version

    return run_batch(body, ("input", "signature", "hmac", "context"), one, {"valid": False})


def handle_export(transit: Transit, name: str, export_type: str, version: str | None = None) -> dict[str, Any]:
    """``export/:type/:name[/:version]``."""
    return transit.export(name, export_type, version)


def handle_backup(transit: Transit, name: str) -> dict[str, Any]:
    """``backup/:name``."""
    return {"backup": transit.backup(name)}


def handle_restore(transit: Transit, name: str | None, body: dict[str, Any]) -> TransitKeyConfig:
    """``restore[/:name]``."""
    return transit.restore(body.get("backup"), name or body.get("name") or None, force=bool_field(body, "force"))


# ---- keyless endpoints --------------------------------------------------------------------------------
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

