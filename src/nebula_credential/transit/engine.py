"""The Transit operations over a :class:`~nebula_credential.vault.Vault`: keys, data, Vault request bodies."""

from __future__ import annotations

import contextlib
import hmac as _hmac
import json
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import envelope as env
from .._secret import SecretBytes
from ..config import HARD_MAX_ENCRYPTIONS, validate_cron
from ..exceptions import (
    ConfigError,
    DecryptionError,
    KeyDestroyedError,
    KeyNotFoundError,
    NebulaCredentialError,
    PolicyViolationError,
    StoreError,
)
from ..keys import KeyManager, seal
from ..models import KeyStatus, KeyVersion
from ..names import TRANSIT_KEY_RULE, is_mount_path, is_transit_key_name
from ..providers.base import WrapContext
from .errors import TransitInputError, TransitKeyNotFoundError
from .settings import CONFIG_META, KEYRING_META, TransitKeyConfig, check_timezone
from .wire import (
    CIPHERTEXT_PREFIX,
    HASHES,
    MIN_AUTO_ROTATE,
    BatchResult,
    Handled,
    Item,
    b64,
    b64decode,
    bool_field,
    format_ciphertext,
    int_field,
    lp,
    parse_ciphertext,
    period_field,
    transit_aad,
    version_of,
    with_version,
)

if TYPE_CHECKING:
    from ..vault import Vault

SUPPORTED_TYPES = ("aes256-gcm96",)
DEFAULT_MOUNT = "transit"
DATAKEY_BITS = (128, 256, 512)
_U32 = struct.Struct(">I")
_DERIVE_DOMAIN = b"nebula-credential transit derive v1\x00"
_HMAC_DOMAIN = b"nebula-credential transit hmac v1\x00"
_DERIVED_CACHE = 4096


@dataclass(slots=True)
class _Key:
    config: TransitKeyConfig
    km: KeyManager
    loaded_at: float
    material: dict[int, SecretBytes] = field(default_factory=dict)
    derived: OrderedDict[tuple[int, bytes], AESGCM] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wipe(self) -> None:
        for secret in self.material.values():
            secret.wipe()
        self.material.clear()
        self.derived.clear()


class Transit:
    """Transit keys of one mount over a :class:`Vault`'s store and root of trust."""

    def __init__(self, vault: Vault, mount: str = DEFAULT_MOUNT) -> None:
        if not is_mount_path(mount):
            raise ConfigError("transit mount", f"invalid mount path {mount!r}")
        self.vault = vault
        self.mount = mount.strip("/")
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()
        self._refresh = vault.config.keys.refresh_interval.total_seconds()

    # ---- names and settings ---------------------------------------------------------
    def check_name(self, name: str) -> str:
        if not is_transit_key_name(name):
            raise TransitInputError(f"invalid key name: {TRANSIT_KEY_RULE}")
        return name

    def keyring_for(self, name: str, generation: int = 1) -> str:
        """The keyring of a key: mount, name and (after a delete) generation, never read from the store."""
        return f"{self.mount}/{name}" + (f"#{generation}" if generation > 1 else "")

    def keyring_of(self, name: str) -> str:
        """The keyring key ``name`` currently is (for ``--keyring`` and audit events)."""
        return self._key(name).config.keyring

    def cached_keyring(self, name: str) -> str | None:
        """The keyring of a key this instance has loaded, without a store read (audit events)."""
        key = self._keys.get(name)
        return None if key is None else key.config.keyring

    def _meta_name(self, name: str) -> str:
        return f"{CONFIG_META}{self.mount}/{name}"

    def _read_config(self, name: str) -> TransitKeyConfig | None:
        """The key's settings; a record naming another key or keyring is refused.

        A database writer could otherwise point key ``b`` at key ``a``'s keyring
        and let a token allowed only ``transit/decrypt/b`` decrypt ``a``'s data.
        """
        with self.vault.store.read() as tx:
            raw = tx.get_meta(self._meta_name(name))
        if raw is None:
            return None
        try:
            cfg = TransitKeyConfig.from_json(raw)
        except (TypeError, ValueError):
            raise StoreError(f"transit key {name!r} has unreadable settings in the store") from None
        if cfg.name != name or not isinstance(cfg.generation, int) or cfg.keyring != self.keyring_for(
                name, cfg.generation):
            raise StoreError(
                f"transit key {name!r}: stored settings name another key or keyring (edited outside "
                "nebula-credential?); refusing to use them")
        return cfg

    def _write_config(self, cfg: TransitKeyConfig) -> None:
        with self.vault.store.transaction() as tx:
            tx.set_meta(self._meta_name(cfg.name), cfg.to_json())
            tx.set_meta(KEYRING_META + cfg.keyring, f"{self.mount}/{cfg.name}")

    def _key_manager(self, cfg: TransitKeyConfig) -> KeyManager:
        vault = self.vault
        base = vault.config
        config = replace(
            base,
            keys=replace(base.keys, auto_rotation=cfg.auto_rotation),
            rotation=replace(base.rotation, max_encryptions=cfg.max_encryptions),
        )
        km = KeyManager(vault.store, vault.provider, keyring=cfg.keyring, config=config,
                        clock=vault.clock, audit=vault.audit)
        return km

    def _key(self, name: str, *, fresh: bool = False) -> _Key:
        """The live key ``name`` (settings re-read every ``refresh_interval``)."""
        key = self._keys.get(name)
        now = time.monotonic()
        if key is not None and not fresh and now - key.loaded_at < self._refresh:
            return key
        self.check_name(name)
        cfg = self._read_config(name)
        if cfg is None or cfg.deleted:
            with self._lock:
                old = self._keys.pop(name, None)
            if old is not None:
                old.wipe()
            raise TransitKeyNotFoundError(f"transit key {name!r} not found")
        with self._lock:
            key = self._keys.get(name)
            if key is not None and key.config.keyring == cfg.keyring and (
                key.config.max_encryptions, key.config.auto_rotation
            ) == (cfg.max_encryptions, cfg.auto_rotation):
                key.config = cfg
                key.loaded_at = now
                return key
            if key is not None:
                key.wipe()
            key = _Key(cfg, self._key_manager(cfg), now)
            self._keys[name] = key
            return key

    def _update(self, key: _Key, **changes: Any) -> TransitKeyConfig:
        cfg = replace(key.config, **changes)
        self._write_config(cfg)
        with self._lock:
            self._keys.pop(cfg.name, None)
        key.wipe()
        return cfg

    def audit(self, action: str, keyring: str, version: int | None = None, **details: Any) -> None:
        with self.vault.store.transaction() as tx:
            self.vault.audit.record(tx, action, keyring=keyring, version=version, mount=self.mount, **details)

    # ---- key management ---------------------------------------------------------------
    def create_key(
        self,
        name: str,
        *,
        type: str = "aes256-gcm96",
        derived: bool = False,
        exportable: bool = False,
        convergent_encryption: bool = False,
        allow_plaintext_backup: bool = False,
        auto_rotate_period: int = 0,
    ) -> TransitKeyConfig:
        """Create a key (a new keyring, v1 active); an existing key is left as it is (as Vault does)."""
        self.check_name(name)
        if type not in SUPPORTED_TYPES:
            raise TransitInputError(
                f"key type {type!r} is not supported; supported types: {', '.join(SUPPORTED_TYPES)}"
            )
        if exportable or allow_plaintext_backup:
            raise TransitInputError(
                "exportable keys are not supported: key material never leaves the key provider's wrapping")
        if convergent_encryption:
            raise TransitInputError("convergent encryption is not supported")
        if auto_rotate_period and auto_rotate_period < MIN_AUTO_ROTATE:
            raise TransitInputError("auto rotate period must be 0 to disable or at least an hour")
        existing = self._read_config(name)
        if existing is not None and not existing.deleted:
            return existing
        generation = existing.generation + 1 if existing is not None else 1
        keyring = self.keyring_for(name, generation)
        cfg = TransitKeyConfig(
            name=name,
            keyring=keyring,
            created_at=self.vault.clock().timestamp(),
            type=type,
            derived=derived,
            auto_rotate_period=auto_rotate_period,
            auto_rotation=self.vault.config.keys.auto_rotation,
            max_encryptions=self.vault.config.rotation.max_encryptions,
            generation=generation,
        )
        km = self._key_manager(cfg)
        # Settings first: a crash between the two leaves a key without versions, which the
        # next create finishes (initialize is idempotent), never versions without settings.
        self._write_config(cfg)
        km.initialize()
        self.audit("transit.key.create", keyring, 1, key_type=type, derived=derived)
        with self._lock:
            self._keys.pop(name, None)
        return cfg

    def key_names(self) -> list[str]:
        prefix = f"{self.mount}/"
        with self.vault.store.read() as tx:
            names = []
            for keyring in tx.keyrings():
                ref = tx.get_meta(KEYRING_META + keyring)
                if ref is None or not ref.startswith(prefix):
                    continue
                raw = tx.get_meta(CONFIG_META + ref)
                if raw is None:
                    continue
                cfg = TransitKeyConfig.from_json(raw)
                if not cfg.deleted and cfg.keyring == keyring:
                    names.append(cfg.name)
        return sorted(names)

    def read_key(self, name: str) -> dict[str, Any]:
        """Vault's read shape, plus our own view under ``nebula``."""
        key = self._key(name, fresh=True)
        cfg = key.config
        versions = key.km.list()
        counts = key.km.credential_counts()
        latest = max((v.version for v in versions), default=0)
        active = next((v for v in versions if v.status is KeyStatus.ACTIVE), None)
        data: dict[str, Any] = {
            "name": cfg.name,
            "type": cfg.type,
            "keys": {
                str(v.version): int(v.created_at.timestamp())
                for v in versions
                if v.version >= cfg.min_decryption_version and v.status is not KeyStatus.DESTROYED
            },
            "latest_version": latest,
            "min_decryption_version": cfg.min_decryption_version,
            "min_encryption_version": cfg.min_encryption_version,
            "min_available_version": cfg.min_available_version,
            "deletion_allowed": cfg.deletion_allowed,
            "auto_rotate_period": cfg.auto_rotate_period,
            "derived": cfg.derived,
            "exportable": False,
            "allow_plaintext_backup": False,
            "imported_key": False,
            "soft_deleted": False,
            "supports_encryption": True,
            "supports_decryption": True,
            "supports_derivation": True,
            "supports_signing": False,
        }
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

    def configure(self, name: str, body: dict[str, Any]) -> TransitKeyConfig:
        """``keys/:name/config``: Vault's settings plus ``rotation_cron``, ``rotation_timezone``,
        ``max_encryptions`` and ``auto_rotation``.

        Everything is validated before anything changes; then versions below a
        raised ``min_decryption_version`` are revoked (and ones at or above a
        lowered one reinstated) through the keyring's lifecycle.
        """
        key = self._key(name, fresh=True)
        cfg = key.config
        versions = key.km.list()
        latest = max((v.version for v in versions), default=0)
        changes: dict[str, Any] = {}
        if "min_decryption_version" in body:
            mdv = int_field(body, "min_decryption_version")
            if mdv < 0:
                raise TransitInputError("min decryption version cannot be negative")
            mdv = max(mdv, 1)
            if mdv > latest:
                raise TransitInputError(
                    f"cannot set min decryption version of {mdv}, latest key version is {latest}")
            if mdv < cfg.min_available_version:
                raise TransitInputError(
                    f"cannot set min decryption version of {mdv} below min available version "
                    f"{cfg.min_available_version}")
            changes["min_decryption_version"] = mdv
        if "min_encryption_version" in body:
            mev = int_field(body, "min_encryption_version")
            if mev < 0:
                raise TransitInputError("min encryption version cannot be negative")
            if mev > latest:
                raise TransitInputError(
                    f"cannot set min encryption version of {mev}, latest key version is {latest}")
            changes["min_encryption_version"] = mev
        mdv = changes.get("min_decryption_version", cfg.min_decryption_version)
        mev = changes.get("min_encryption_version", cfg.min_encryption_version)
        if mev > 0 and mev < mdv:
            raise TransitInputError("cannot set a minimum decryption version greater than minimum encryption version")
        for flag in ("deletion_allowed", "auto_rotation"):
            if flag in body:
                changes[flag] = bool_field(body, flag)
        if bool_field(body, "exportable") or bool_field(body, "allow_plaintext_backup"):
            raise TransitInputError("exportable keys are not supported")
        if "auto_rotate_period" in body:
            changes["auto_rotate_period"] = period_field(body, "auto_rotate_period")
        try:
            if body.get("rotation_cron") not in (None, ""):
                changes["rotation_cron"] = validate_cron(body["rotation_cron"], "rotation_cron")
            elif "rotation_cron" in body:
                changes["rotation_cron"] = ""
            if "rotation_timezone" in body:
                changes["rotation_timezone"] = check_timezone(body["rotation_timezone"])
        except ConfigError as exc:
            raise TransitInputError(str(exc)) from None
        if "max_encryptions" in body:
            bound = int_field(body, "max_encryptions")
            if not 1 <= bound <= HARD_MAX_ENCRYPTIONS:
                raise TransitInputError(f"max_encryptions must be 1..{HARD_MAX_ENCRYPTIONS} (the AES-GCM bound)")
            changes["max_encryptions"] = bound
        if mdv != cfg.min_decryption_version:
            self._apply_min_decryption(key.km, versions, mdv)
        new = self._update(key, **changes)
        if changes:
            self.audit("transit.key.config", cfg.keyring, None, changed=sorted(changes))
        return new

    def _apply_min_decryption(self, km: KeyManager, versions: Sequence[KeyVersion], mdv: int) -> None:
        for kv in versions:
            if kv.version < mdv and kv.status in (KeyStatus.VALID, KeyStatus.GRACE):
                km.revoke(kv.version, reason=f"transit min_decryption_version {mdv}")
            elif kv.version >= mdv and kv.status is KeyStatus.REVOKED:
                km.reinstate(kv.version)

    def rotate(self, name: str, *, reason: str = "transit rotate") -> KeyVersion:
        key = self._key(name)
        kv = key.km.rotate(reason=reason)
        assert kv is not None  # without expected_active, rotate always rotates or raises
        return kv

    def trim(self, name: str, min_available_version: int) -> TransitKeyConfig:
        """Destroy versions below ``min_available_version`` through :meth:`KeyManager.destroy`.

        The guard decides (revoked, unreferenced, past the floor, outside
        ``[retention] keep_versions`` and the retention minimum); a refusal is
        raised (HTTP 400) after the versions it allowed were destroyed, and
        ``min_available_version`` records what was reached.  Stricter than
        Vault on purpose: with the default keep_versions = 2 the version just
        before the active one is kept, as for every keyring.
        """
        key = self._key(name, fresh=True)
        cfg = key.config
        mav = min_available_version
        if mav <= 0:
            raise TransitInputError("minimum available version should be positive")
        if cfg.min_encryption_version <= 0:
            raise TransitInputError(
                "minimum available version cannot be set when minimum encryption version is not set")
        if mav > cfg.min_encryption_version:
            raise TransitInputError("minimum available version cannot be greater than minimum encryption version")
        if mav > cfg.min_decryption_version:
            raise TransitInputError("minimum available version cannot be greater than minimum decryption version")
        if mav < cfg.min_available_version:
            raise TransitInputError("minimum available version cannot be decremented")
        reached = cfg.min_available_version
        refusal: PolicyViolationError | None = None
        for kv in key.km.list():
            if kv.version >= mav:
                break
            if kv.status is not KeyStatus.DESTROYED:
                try:
                    key.km.destroy(kv.version, policy="transit trim")
                except PolicyViolationError as exc:
                    refusal = exc
                    break
            reached = kv.version + 1
        new = self._update(key, min_available_version=max(reached, cfg.min_available_version))
        if refusal is not None:
            raise PolicyViolationError(
                f"trim of transit key {name!r} stopped below version {mav}: {refusal}") from refusal
        return new

    def delete_key(self, name: str) -> None:
        """Delete a key that allows it and guards no stored credential.

        Every version is revoked at once (no encrypt, no decrypt); the retention
        policy destroys the material later, as for any revoked version.  A key
        created again under this name is a new keyring: old ciphertexts stay dead.
        """
        key = self._key(name, fresh=True)
        cfg = key.config
        if not cfg.deletion_allowed:
            raise TransitInputError(f"error deleting policy {name}: deletion is not allowed for this key")
        refs = sum(key.km.credential_counts().values())
        if refs:
            raise PolicyViolationError(
                f"transit key {name!r} (keyring {cfg.keyring!r}) still protects {refs} stored credential(s)")
        self._update(key, deleted=True)
        for kv in key.km.list():
            if kv.status is KeyStatus.ACTIVE:
                key.km.transition(kv.version, KeyStatus.VALID, action="key.status", expected=KeyStatus.ACTIVE,
                                  reason="transit key deleted")
            if kv.status in (KeyStatus.ACTIVE, KeyStatus.VALID, KeyStatus.GRACE):
                key.km.revoke(kv.version, reason="transit key deleted")
        self.audit("transit.key.delete", cfg.keyring, None)

    # ---- data: bytes level ---------------------------------------------------------------
    def _material(self, key: _Key, version: int) -> SecretBytes:
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

    def _derive(self, key: _Key, version: int, domain: bytes, context: bytes) -> bytes:
        info = domain + lp(key.config.keyring.encode()) + _U32.pack(version) + context
        secret = self._material(key, version)
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes(secret.buffer))

    def _subkey(self, key: _Key, version: int, context: bytes) -> AESGCM:
        """A per-context key: HKDF-SHA256 over the version's DEK (cached, LRU)."""
        cache_key = (version, context)
        aead = key.derived.get(cache_key)
        if aead is not None:
            return aead
        aead = AESGCM(self._derive(key, version, _DERIVE_DOMAIN, context))
        with key.lock:
            key.derived[cache_key] = aead
            while len(key.derived) > _DERIVED_CACHE:
                key.derived.popitem(last=False)
        return aead

    def _context(self, key: _Key, context: bytes | None) -> bytes | None:
        if not key.config.derived:
            return None  # Vault ignores a context on a key that is not derived
        if not context:
            raise TransitInputError(
                "missing 'context' for key derivation; the key was created using a derived key, which means "
                "additional, per-request information must be included in order to perform operations with the key"
            )
        return context

    def _check_encrypt_version(self, key: _Key, key_version: int, active: int) -> None:
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

    def _encrypt(self, key: _Key, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
                 key_version: int = 0) -> str:
        observer = self.vault.observer
        if observer is None:
            return self._seal(key, plaintext, associated_data, context, key_version)
        start, ok = time.perf_counter(), False
        try:
            out = self._seal(key, plaintext, associated_data, context, key_version)
            ok = True
            return out
        finally:
            observer(key.config.keyring, "encrypt", time.perf_counter() - start, ok)

    def _decrypt(self, key: _Key, ciphertext: Any, associated_data: bytes | None,
                 context: bytes | None) -> tuple[bytes, int]:
        observer = self.vault.observer
        if observer is None:
            return self._open(key, ciphertext, associated_data, context)
        start, ok = time.perf_counter(), False
        try:
            out = self._open(key, ciphertext, associated_data, context)
            ok = True
            return out
        finally:
            observer(key.config.keyring, "decrypt", time.perf_counter() - start, ok)

    def _seal(self, key: _Key, plaintext: bytes, associated_data: bytes | None, context: bytes | None,
              key_version: int = 0) -> str:
        ctx = self._context(key, context)
        if key_version:
            self._check_encrypt_version(key, key_version, key.km.current_key().version)
        aad = transit_aad(key.config.keyring, associated_data, ctx)
        if ctx is None:
            return format_ciphertext(key.km.encrypt(plaintext, aad))
        vk = key.km.next_active()
        return format_ciphertext(seal(self._subkey(key, vk.version, ctx), env.version_prefix(vk.version),
                                      plaintext, aad))

    def _open(self, key: _Key, ciphertext: Any, associated_data: bytes | None,
              context: bytes | None) -> tuple[bytes, int]:
        version, blob = parse_ciphertext(ciphertext)
        ctx = self._context(key, context)
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
                return self._subkey(key, version, ctx).decrypt(parsed.nonce, parsed.ciphertext,
                                                               parsed.header + aad), version
            except InvalidTag:
                raise DecryptionError("cipher: message authentication failed") from None
        except DecryptionError:
            raise DecryptionError("cipher: message authentication failed") from None
        except KeyNotFoundError:
            raise TransitInputError("invalid ciphertext: version is too new") from None

    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None,
                context: bytes | None = None, key_version: int = 0) -> str:
        """``vault:v<N>:...`` under the active version of ``name``."""
        return self._encrypt(self._key(name), plaintext, associated_data, context, key_version)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes | None = None,
                context: bytes | None = None) -> bytes:
        return self._decrypt(self._key(name), ciphertext, associated_data, context)[0]

    def rewrap(self, name: str, ciphertext: str, *, associated_data: bytes | None = None,
               context: bytes | None = None) -> str:
        """The same plaintext under the active version (unchanged if it is already there)."""
        return self._rewrap(self._key(name), ciphertext, associated_data, context)

    def _rewrap(self, key: _Key, ciphertext: Any, associated_data: bytes | None, context: bytes | None) -> str:
        plaintext, version = self._decrypt(key, ciphertext, associated_data, context)
        if version == key.km.current_key().version:
            return str(ciphertext)  # authentic and current: spend no nonce on it
        return self._encrypt(key, plaintext, associated_data, context)

    def rewrap_many(self, name: str, ciphertexts: Iterable[str], *, associated_data: bytes | None = None,
                    context: bytes | None = None) -> Iterable[str | NebulaCredentialError]:
        """Stream of rewrapped ciphertexts, or the error of each item that failed."""
        key = self._key(name)
        for ct in ciphertexts:
            try:
                yield self._rewrap(key, ct, associated_data, context)
            except NebulaCredentialError as exc:
                yield exc

    def hmac(self, name: str, data: bytes, *, algorithm: str = "sha2-256", key_version: int = 0) -> str:
        """``vault:v<N>:<base64 HMAC>`` with a per-version HMAC key derived from the DEK."""
        key = self._key(name)
        if algorithm not in HASHES:
            raise TransitInputError(f"unsupported algorithm {algorithm}")
        version = key_version or key.km.current_key().version
        if version < key.config.min_encryption_version:
            raise TransitInputError("cannot use key version below the minimum encryption version")
        key.km.get_key(version)  # the lifecycle says whether this version may still be used
        mac_key = self._derive(key, version, _HMAC_DOMAIN, b"")
        digest = _hmac.new(mac_key, data, HASHES[algorithm]).digest()
        return f"{CIPHERTEXT_PREFIX}{version}:{b64(digest)}"

    # ---- data: Vault request bodies -------------------------------------------------------
    def _items(self, body: dict[str, Any], fields: Sequence[str]) -> tuple[list[dict[str, Any]], bool]:
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

    def _run_batch(self, body: dict[str, Any], fields: Sequence[str],
                   one: Callable[[dict[str, Any]], Item]) -> Handled:
        items, batched = self._items(body, fields)
        if not batched:
            data, version = one(items[0])
            return data, BatchResult([data], False, {version})
        results = []
        versions = set()
        for item in items:
            try:
                out, version = one(item)
                versions.add(version)
            except NebulaCredentialError as exc:
                out = {"error": str(exc)}
            out["reference"] = item.get("reference", "")
            results.append(out)
        return {"batch_results": results}, BatchResult(results, True, versions)

    def handle_create(self, name: str, body: dict[str, Any]) -> TransitKeyConfig:
        """``POST keys/:name`` (and the upsert of ``encrypt/:name``)."""
        period = body.get("auto_rotate_period")
        return self.create_key(
            name,
            type=str(body.get("type") or "aes256-gcm96"),
            derived=bool_field(body, "derived"),
            exportable=bool_field(body, "exportable"),
            convergent_encryption=bool_field(body, "convergent_encryption"),
            allow_plaintext_backup=bool_field(body, "allow_plaintext_backup"),
            auto_rotate_period=period_field(body, "auto_rotate_period") if period not in (None, "", 0) else 0,
        )

    def handle_trim(self, name: str, body: dict[str, Any]) -> TransitKeyConfig:
        if "min_available_version" not in body:
            raise TransitInputError("missing min_available_version")
        return self.trim(name, int_field(body, "min_available_version"))

    def exists(self, name: str) -> bool:
        try:
            self._key(name)
        except (TransitKeyNotFoundError, TransitInputError):
            return False
        return True

    def handle_encrypt(self, name: str, body: dict[str, Any], *, create: bool = True) -> Handled:
        """``encrypt/:name``: creates the key on first use when ``create`` (the policy allows it).

        As in Vault, a key created here is derived when the items carry a
        ``context``.  It is created only if at least one item is valid: a
        request refused as a whole writes nothing.
        """
        top_version = int_field(body, "key_version")
        fields = ("plaintext", "context", "associated_data", "key_version")

        def parse(item: dict[str, Any]) -> tuple[bytes, bytes | None, bytes | None, int]:
            if "plaintext" not in item:
                raise TransitInputError("missing plaintext to encrypt")
            return (b64decode(item["plaintext"], "plaintext") or b"",
                    b64decode(item.get("associated_data"), "associated_data"),
                    b64decode(item.get("context"), "context"),
                    int_field(item, "key_version", top_version))

        try:
            key = self._key(name)
        except TransitKeyNotFoundError:
            if not create:
                raise
            items, _ = self._items(body, fields)
            valid = []
            for item in items:
                with contextlib.suppress(NebulaCredentialError):
                    valid.append(parse(item))
            if not valid:
                parse(items[0])  # raises the first item's error
            self.handle_create(name, body | {"derived": body.get("derived") or any(v[2] for v in valid)})
            key = self._key(name)

        def one(item: dict[str, Any]) -> Item:
            plaintext, ad, context, version = parse(item)
            return with_version(self._encrypt(key, plaintext, ad, context, version))

        return self._run_batch(body, fields, one)

    def handle_decrypt(self, name: str, body: dict[str, Any]) -> Handled:
        key = self._key_for_data(name)

        def one(item: dict[str, Any]) -> Item:
            plaintext, version = self._decrypt(key, item.get("ciphertext"),
                                               b64decode(item.get("associated_data"), "associated_data"),
                                               b64decode(item.get("context"), "context"))
            return {"plaintext": b64(plaintext)}, version

        return self._run_batch(body, ("ciphertext", "context", "associated_data"), one)

    def handle_rewrap(self, name: str, body: dict[str, Any]) -> Handled:
        key = self._key_for_data(name)

        def one(item: dict[str, Any]) -> Item:
            return with_version(self._rewrap(key, item.get("ciphertext"),
                                              b64decode(item.get("associated_data"), "associated_data"),
                                              b64decode(item.get("context"), "context")))

        return self._run_batch(body, ("ciphertext", "context", "associated_data"), one)

    def _key_for_data(self, name: str) -> _Key:
        try:
            return self._key(name)
        except TransitKeyNotFoundError:
            raise TransitInputError("encryption key not found") from None

    def handle_datakey(self, name: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """``datakey/{plaintext,wrapped}/:name``: a fresh key, returned encrypted (and in the clear)."""
        if kind not in ("plaintext", "wrapped"):
            raise TransitInputError(f"invalid type {kind!r}: plaintext or wrapped")
        key = self._key_for_data(name)
        bits = int_field(body, "bits", 256)
        if bits not in DATAKEY_BITS:
            raise TransitInputError("invalid bit length")
        data_key = SecretBytes.random(bits // 8)
        with data_key:
            ct = self._encrypt(key, bytes(data_key.buffer), b64decode(body.get("associated_data"), "associated_data"),
                               b64decode(body.get("context"), "context"))
            out, _ = with_version(ct)
            if kind == "plaintext":
                out["plaintext"] = b64(bytes(data_key.buffer))
        return out

    def handle_hmac(self, name: str, body: dict[str, Any], algorithm: str | None = None) -> Handled:
        key_version = int_field(body, "key_version")
        algo = algorithm or str(body.get("algorithm", "sha2-256"))
        self._key_for_data(name)

        def one(item: dict[str, Any]) -> Item:
            data = b64decode(item.get("input"), "input", required=True) or b""
            mac = self.hmac(name, data, algorithm=algo, key_version=key_version)
            return {"hmac": mac}, version_of(mac)

        return self._run_batch(body, ("input",), one)
