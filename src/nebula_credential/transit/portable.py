"""Key material leaving the server, only under the key's policy: ``export`` and ``backup``/``restore``.

``export/:type/:name[/:version]`` answers only for a key created (or
configured) ``exportable``, except ``public-key``; ``backup/:name`` only when
the key is ``exportable`` and ``allow_plaintext_backup`` (both as Vault,
both one-way switches).  Every export and backup is an audit event naming
the versions that left.

A backup is our own format: base64 of JSON ``{"format", "v", "key", "versions",
"sha256"}`` where each version carries its DEK (and an RSA version its
PKCS#8 key) and ``sha256`` is a digest of the rest, which a restore checks
(integrity: a truncated or edited backup is refused; it is not a signature,
whoever holds a plaintext backup holds the keys anyway).  A restore makes a
new keyring whose versions wrap the same DEKs under this store's root of
trust and keeps the original key's binding, so everything the original
produced decrypts and verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._secret import SecretBytes
from ..models import KeyStatus, KeyVersion, to_epoch
from ..providers.base import WrapContext
from . import asym, crypto
from .errors import TransitInputError
from .keys import LiveKey, material
from .keytypes import key_type, private_key_text, public_key_text, symmetric_key
from .settings import CONFIG_META, TransitKeyConfig
from .wire import b64

if TYPE_CHECKING:
    from .keys import TransitKeys

EXPORT_TYPES = ("encryption-key", "signing-key", "hmac-key", "public-key")
BACKUP_FORMAT = "nebula-credential/transit-backup"
BACKUP_VERSION = 1
_RESTORED = (KeyStatus.ACTIVE, KeyStatus.VALID, KeyStatus.GRACE, KeyStatus.REVOKED)


def export_versions(key: LiveKey, versions: list[KeyVersion], version: str | int | None) -> list[int]:
    """The versions an export covers: one (``latest`` or a number), or every one still decrypting."""
    cfg = key.config
    latest = max((v.version for v in versions), default=0)
    if version in (None, ""):
        return [v.version for v in versions
                if v.version >= cfg.min_decryption_version and v.status is not KeyStatus.DESTROYED]
    if version == "latest":
        return [latest]
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TransitInputError("invalid key version")
    if version > latest:
        raise TransitInputError("version does not exist or cannot be found")
    if version < cfg.min_decryption_version:
        raise TransitInputError("version for export is below minimum decryption version")
    return [version]


def export_one(key: LiveKey, export_type: str, version: int) -> str:
    kt = key_type(key.config.type)
    if export_type == "hmac-key":
        return b64(crypto.hmac_key(key, version))
    if export_type == "encryption-key":
        if kt.family == "aead":
            return b64(symmetric_key(kt, bytes(material(key, version).buffer)))
        if kt.family == "rsa":
            return private_key_text(asym.version_key(key, version))
        raise TransitInputError("encryption key not supported for key type")
    if export_type == "signing-key":
        if not kt.signs:
            raise TransitInputError("signing key not supported for key type")
        return private_key_text(asym.version_key(key, version))
    if export_type == "public-key":
        if not kt.asymmetric:
            raise TransitInputError("public key not supported for key type")
        return public_key_text(kt, asym.version_key(key, version))
    raise TransitInputError(f"invalid export type: {export_type}")


def export(transit: TransitKeys, name: str, export_type: str, version: str | int | None = None) -> dict[str, Any]:
    """``export/:type/:name[/:version]``: Vault's ``{"name", "type", "keys": {"<N>": key}}``."""
    if export_type not in EXPORT_TYPES:
        raise TransitInputError(f"invalid export type: {export_type}")
    key = transit.live_key(name)
    cfg = key.config
    if export_type != "public-key" and not cfg.exportable:
        raise TransitInputError("private key material is not exportable")
    versions = key.km.list()
    wanted = export_versions(key, versions, version)
    keys = {str(v): export_one(key, export_type, v) for v in wanted}
    if export_type != "public-key":
        transit.audit("transit.key.export", cfg.keyring, None, export_type=export_type, versions=wanted)
    return {"name": cfg.name, "type": cfg.type, "keys": keys}


def _rfc3339(transit: TransitKeys) -> str:
    return transit.vault.clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- backup and restore -------------------------------------------------------------------------
def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_KEPT = ("type", "derived", "exportable", "allow_plaintext_backup", "key_size", "deletion_allowed",
         "min_decryption_version", "min_encryption_version", "min_available_version", "auto_rotate_period",
         "rotation_cron", "rotation_timezone", "max_encryptions", "auto_rotation")


def backup(transit: TransitKeys, name: str) -> str:
    """``backup/:name``: every version still holding material, with the key's settings."""
    key = transit.live_key(name)
    cfg = key.config
    if not cfg.exportable:
        raise TransitInputError("exporting is disallowed on the policy")
    if not cfg.allow_plaintext_backup:
        raise TransitInputError("plaintext backup is disallowed on the policy")
    kt = key_type(cfg.type)
    versions = []
    for kv in key.km.list():
        if kv.status is KeyStatus.DESTROYED or kv.wrapped_key is None:
            continue
        item: dict[str, Any] = {"version": kv.version, "status": kv.status.value,
                                "created_at": to_epoch(kv.created_at),
                                "dek": b64(bytes(material(key, kv.version).buffer))}
        if kt.family == "rsa":
            private = asym.version_key(key, kv.version)
            item["rsa"] = b64(private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        versions.append(item)
    doc: dict[str, Any] = {
        "format": BACKUP_FORMAT, "v": BACKUP_VERSION, "name": cfg.name, "binding": cfg.binding,
        "latest_version": max((kv.version for kv in key.km.list()), default=0),
        "key": {f: getattr(cfg, f) for f in _KEPT}, "versions": versions,
    }
    stamp = {"time": _rfc3339(transit), "version": doc["latest_version"]}
    doc["backup_info"] = stamp
    doc["sha256"] = _digest(doc)
    transit.update(key, backup_info=stamp)
    transit.audit("transit.key.backup", cfg.keyring, None, versions=[v["version"] for v in versions])
    return base64.b64encode(json.dumps(doc, sort_keys=True).encode()).decode("ascii")


def parse_backup(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        raise TransitInputError("'backup' must be supplied")
    try:
        doc = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise TransitInputError("invalid backup: not base64 JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT:
        raise TransitInputError("invalid backup: not a nebula-credential Transit backup")
    if doc.get("v") != BACKUP_VERSION:
        raise TransitInputError(f"invalid backup: format version {doc.get('v')!r} is not supported")
    if doc.get("sha256") != _digest(doc):
        raise TransitInputError("invalid backup: its digest does not match (truncated or edited)")
    try:
        key_type(str(doc["key"]["type"]))
        defaults = TransitKeyConfig("", "", 0.0)
        for field_name, value in doc["key"].items():
            wanted = type(getattr(defaults, field_name))
            if field_name not in _KEPT or type(value) is not wanted:
                raise TransitInputError(f"invalid backup: setting {field_name!r}")
        for item in doc["versions"]:
            if type(item["version"]) is not int or item["version"] < 1:
                raise TransitInputError("invalid backup: a version number")
            if len(base64.b64decode(item["dek"], validate=True)) != 32:
                raise TransitInputError(f"invalid backup: version {item['version']}'s key")
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise TransitInputError("invalid backup: malformed key or versions") from None
    return doc


def restore(transit: TransitKeys, backup_text: Any, name: str | None = None, *,
            force: bool = False) -> TransitKeyConfig:
    """``restore[/:name]``: a new key (or generation) with the backup's versions and settings."""
    doc = parse_backup(backup_text)
    name = transit.check_name(name or str(doc.get("name", "")))
    if force:
        raise TransitInputError("force is not supported: delete the key first, then restore")
    existing = transit.read_config(name)
    if existing is not None and not existing.deleted:
        raise TransitInputError(f"key {name!r} already exists")
    settings = doc["key"]
    generation = existing.generation + 1 if existing is not None else 1
    keyring = transit.keyring_for(name, generation)
    cfg = TransitKeyConfig(name=name, keyring=keyring, created_at=transit.vault.clock().timestamp(),
                           generation=generation, origin=str(doc["binding"]),
                           backup_info=doc.get("backup_info"),
                           restore_info={"time": _rfc3339(transit), "version": int(doc.get("latest_version") or 0)},
                           **{k: settings[k] for k in _KEPT if k in settings})
    provider = transit.vault.provider
    by_version = {int(item["version"]): item for item in doc["versions"]}
    latest = int(doc.get("latest_version") or max(by_version, default=0))
    if latest < 1 or not by_version or max(by_version) != latest:
        raise TransitInputError("invalid backup: it must hold the key's latest version")
    wrapped: dict[int, bytes] = {}
    retired: dict[int, KeyStatus] = {}
    rsa_keys: dict[int, str] = {}
    for v in range(1, latest + 1):
        item = by_version.get(v)
        if item is None:  # trimmed (or destroyed) before the backup: its number stays taken
            retired[v] = KeyStatus.DESTROYED
            continue
        status = KeyStatus(item["status"]) if item.get("status") in {s.value for s in _RESTORED} else None
        if status is None:
            raise TransitInputError(f"invalid backup: version {v} has status {item.get('status')!r}")
        if status is KeyStatus.REVOKED:
            retired[v] = status
        dek = SecretBytes(base64.b64decode(item["dek"]))
        try:
            wrapped[v] = provider.wrap(dek, WrapContext(keyring, v))
            if "rsa" in item:
                loaded = serialization.load_der_private_key(base64.b64decode(item["rsa"]), password=None)
                if not isinstance(loaded, rsa.RSAPrivateKey):
                    raise TransitInputError(f"invalid backup: version {v} is not an RSA key")
                rsa_keys[v] = asym.seal_rsa(bytes(dek.buffer), keyring, v, loaded)
        finally:
            dek.wipe()
    _install(transit, cfg, latest, wrapped, retired, rsa_keys)
    transit.forget(name)
    return cfg


def _install(transit: TransitKeys, cfg: TransitKeyConfig, latest: int, wrapped: dict[int, bytes],
             retired: dict[int, KeyStatus], rsa_keys: dict[int, str]) -> None:
    """Write a restored key in one transaction: its settings, and its versions with each step audited
    as the keyring's own lifecycle would (create, rotate, revoke, destroy), so the audit chain
    explains every row.  A refusal writes nothing."""
    vault = transit.vault
    keyring = cfg.keyring
    provider = vault.provider
    now = vault.clock()
    at = to_epoch(now)
    with vault.store.transaction() as tx:
        tx.lock_keyring(keyring)
        current = tx.get_meta(f"{CONFIG_META}{transit.mount}/{cfg.name}")
        if tx.list_versions(keyring) or (current is not None and not TransitKeyConfig.from_json(current).deleted):
            raise TransitInputError(f"key {cfg.name!r} already exists")
        transit.write_config_in(tx, cfg)
        for v in range(1, latest + 1):
            if v > 1:
                tx.set_status(keyring, v - 1, KeyStatus.ACTIVE, KeyStatus.VALID, now)
            tx.insert_version(KeyVersion(
                keyring=keyring, version=v, status=KeyStatus.ACTIVE, created_at=now, provider=provider.name,
                root_key_id=provider.root_key_id(), wrapped_key=wrapped.get(v),
                expires_at=now + vault.config.keys.max_key_age, status_changed_at=now, reason="transit restore"))
            vault.audit.record(tx, "key.create" if v == 1 else "key.rotate", keyring=keyring, version=v,
                               old_version=v - 1 if v > 1 else None, new_version=v, reason="transit restore", at=at)
        for v, status in sorted(retired.items()):
            steps = [(KeyStatus.VALID, KeyStatus.REVOKED, "key.revoke")]
            if status is KeyStatus.DESTROYED:
                steps.append((KeyStatus.REVOKED, KeyStatus.DESTROYED, "key.destroy"))
            for old, new, action in steps:
                tx.set_status(keyring, v, old, new, now)
                vault.audit.record(tx, action, keyring=keyring, version=v, old_status=old.value,
                                   new_status=new.value, reason="transit restore", at=at)
        for v, sealed in rsa_keys.items():
            tx.set_meta(f"{asym.RSA_META}{keyring}:{v}", sealed)
        vault.audit.record(tx, "transit.key.restore", keyring=keyring, version=None, mount=transit.mount,
                           versions=sorted(set(wrapped)), origin=cfg.origin)
