"""Transit key management: a key's settings, its keyring, and the changes Vault's key endpoints make.

A Transit key is a keyring (:class:`KeyManager`) plus a small settings record
(:class:`TransitKeyConfig`) in the store's meta table.  Everything here takes
and returns typed values; Vault's JSON bodies are parsed in
:mod:`~nebula_credential.transit.requests`.  Versions are retired only through
the keyring's lifecycle: revoke, reinstate, and destroy through the one
destroy guard (:mod:`~nebula_credential.destroy_guard`, via :meth:`KeyManager.destroy`).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .._secret import SecretBytes
from ..config import HARD_MAX_ENCRYPTIONS, validate_cron
from ..exceptions import ConfigError, KeyDestroyedError, PolicyViolationError, StoreError
from ..keys import KeyManager
from ..models import KeyStatus, KeyVersion
from ..names import TRANSIT_KEY_RULE, is_mount_path, is_transit_key_name
from ..providers.base import WrapContext
from .errors import ReinstateRefusedError, TransitInputError, TransitKeyNotFoundError
from .keytypes import DEFAULT_HMAC_KEY_SIZE, MAX_HMAC_KEY_SIZE, SUPPORTED_TYPES, PrivateKey, key_type
from .settings import CONFIG_META, KEYRING_META, TransitKeyConfig, check_timezone
from .wire import MIN_AUTO_ROTATE

if TYPE_CHECKING:
    from ..store import StoreTx
    from ..vault import Vault

DEFAULT_MOUNT = "transit"


@dataclass(slots=True)
class LiveKey:
    """A loaded Transit key: its settings, its keyring's :class:`KeyManager` and the
    per-key material the crypto needs (unwrapped DEKs, derived subkeys), wiped on reload."""

    config: TransitKeyConfig
    km: KeyManager
    loaded_at: float
    material: dict[int, SecretBytes] = field(default_factory=dict)
    derived: OrderedDict[tuple[int, bytes], AESGCM | ChaCha20Poly1305] = field(default_factory=OrderedDict)
    private: dict[tuple[int, bytes], PrivateKey] = field(default_factory=dict)
    #: Keyed HMAC states per (version, algorithm), copied per use: the key stays inside OpenSSL.
    macs: dict[tuple[int, str], hmac.HMAC] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The key's :class:`~.crypto.Sealer` and :class:`~.crypto.Opener` for its current settings, built
    #: at first use rather than per request (:func:`~.crypto.sealer`, :func:`~.crypto.opener`).
    sealer: Any = None
    opener: Any = None

    def wipe(self) -> None:
        for secret in self.material.values():
            secret.wipe()
        self.material.clear()
        self.derived.clear()
        self.private.clear()
        self.macs.clear()
        self.sealer = self.opener = None



def material(key: LiveKey, version: int) -> SecretBytes:
    """The version's DEK, unwrapped once per cached key (derived and typed keys need the bytes)."""
    with key.lock:
        secret = key.material.get(version)
        if secret is None:
            kv = key.km.version(version)
            if kv.wrapped_key is None:
                raise KeyDestroyedError(kv.keyring, version)
            secret = key.km.provider.unwrap(kv.wrapped_key, WrapContext(kv.keyring, version))
            key.material[version] = secret
        return secret


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``GET keys/:name`` shows: the settings, the versions, the rows each version protects."""

    config: TransitKeyConfig
    versions: list[KeyVersion]
    credentials: dict[int, int]
    #: Asymmetric keys: each readable version's public key, in Vault's form.
    public_keys: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeyConfigChange:
    """The settings a ``keys/:name/config`` call changes; ``None`` leaves a setting as it is.

    ``rotation_cron = ""`` clears the schedule; ``auto_rotate_period = 0`` disables it.
    """

    min_decryption_version: int | None = None
    min_encryption_version: int | None = None
    deletion_allowed: bool | None = None
    auto_rotation: bool | None = None
    auto_rotate_period: int | None = None
    rotation_cron: str | None = None
    rotation_timezone: str | None = None
    max_encryptions: int | None = None
    #: Vault's one-way switches: once on, they cannot be turned off.
    exportable: bool | None = None
    allow_plaintext_backup: bool | None = None
    #: Whether lowering ``min_decryption_version`` may bring revoked versions back (a reinstate).
    #: The library caller holds the store and may; the server sets it from the token's
    #: ``reinstate`` capability (:func:`nebula_credential.names.transit_key_need`).
    reinstate_allowed: bool = True


class TransitKeys:
    """Transit keys of one mount over a :class:`Vault`'s store and root of trust."""

    def __init__(self, vault: Vault, mount: str = DEFAULT_MOUNT) -> None:
        if not is_mount_path(mount):
            raise ConfigError("transit mount", f"invalid mount path {mount!r}")
        self.vault = vault
        self.mount = mount.strip("/")
        self._keys: dict[str, LiveKey] = {}
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

    def read_config(self, name: str) -> TransitKeyConfig | None:
        """The stored settings of ``name`` (deleted keys included), checked as :meth:`_read_config`."""
        return self._read_config(self.check_name(name))

    def forget(self, name: str) -> None:
        """Drop the loaded key ``name`` (the next use reads the store)."""
        with self._lock:
            old = self._keys.pop(name, None)
        if old is not None:
            old.wipe()

    def forget_all(self) -> None:
        """Drop every loaded key (another process changed a key: the next use of each reads the store)."""
        with self._lock:
            old, self._keys = self._keys, {}
        for key in old.values():
            key.wipe()

    def _write_config(self, cfg: TransitKeyConfig) -> None:
        with self.vault.store.transaction() as tx:
            self.write_config_in(tx, cfg)

    def write_config_in(self, tx: StoreTx, cfg: TransitKeyConfig) -> None:
        """The key's settings (and the keyring's back-reference), in the caller's transaction."""
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

    def _key(self, name: str, *, fresh: bool = False) -> LiveKey:
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
            key = LiveKey(cfg, self._key_manager(cfg), now)
            self._keys[name] = key
            return key

    def update(self, key: LiveKey, **changes: Any) -> TransitKeyConfig:
        """Write changed settings of a loaded key (the next use reloads it)."""
        return self._update(key, **changes)

    def _update(self, key: LiveKey, **changes: Any) -> TransitKeyConfig:
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
        key_size: int = 0,
    ) -> TransitKeyConfig:
        """Create a key (a new keyring, v1 active); an existing key is left as it is (as Vault does).

        ``exportable`` and ``allow_plaintext_backup`` are recorded in the key's
        settings; export and backup check them (and audit every use).
        """
        self.check_name(name)
        if type not in SUPPORTED_TYPES:
            raise TransitInputError(
                f"unknown key type {type}; supported types: {', '.join(SUPPORTED_TYPES)}"
            )
        kt = key_type(type)
        if derived and not kt.derives:
            raise TransitInputError(f"key derivation and convergent encryption not supported for keys of type {type}")
        if convergent_encryption:
            raise TransitInputError("convergent encryption is not supported")
        if kt.family == "hmac":
            key_size = key_size or DEFAULT_HMAC_KEY_SIZE
            if not 32 <= key_size <= MAX_HMAC_KEY_SIZE:
                raise TransitInputError(f"invalid key_size {key_size}: 32..{MAX_HMAC_KEY_SIZE} bytes")
        elif key_size:
            raise TransitInputError("key_size is only valid for hmac keys")
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
            exportable=exportable,
            allow_plaintext_backup=allow_plaintext_backup,
            key_size=key_size if kt.family == "hmac" else 0,
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
        self.audit("transit.key.create", keyring, 1, key_type=type, derived=derived, exportable=exportable,
                   allow_plaintext_backup=allow_plaintext_backup)
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


    def key_info(self, name: str) -> KeyInfo:
        """The key's settings, its versions and how many stored rows each version protects."""
        key = self._key(name, fresh=True)
        return KeyInfo(key.config, key.km.list(), key.km.credential_counts())

    def configure(self, name: str, change: KeyConfigChange) -> TransitKeyConfig:
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
        if change.min_decryption_version is not None:
            mdv = change.min_decryption_version
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
        if change.min_encryption_version is not None:
            mev = change.min_encryption_version
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
            if getattr(change, flag) is not None:
                changes[flag] = getattr(change, flag)
        for flag in ("exportable", "allow_plaintext_backup"):
            if getattr(change, flag):  # as Vault, ``false`` never turns a switch off (and is no error)
                changes[flag] = True
        if change.auto_rotate_period is not None:
            if change.auto_rotate_period and change.auto_rotate_period < MIN_AUTO_ROTATE:
                raise TransitInputError("auto rotate period must be 0 to disable or at least an hour")
            changes["auto_rotate_period"] = change.auto_rotate_period
        try:
            if change.rotation_cron:
                changes["rotation_cron"] = validate_cron(change.rotation_cron, "rotation_cron")
            elif change.rotation_cron is not None:
                changes["rotation_cron"] = ""
            if change.rotation_timezone is not None:
                changes["rotation_timezone"] = check_timezone(change.rotation_timezone)
        except ConfigError as exc:
            raise TransitInputError(str(exc)) from None
        if change.max_encryptions is not None:
            bound = change.max_encryptions
            if not 1 <= bound <= HARD_MAX_ENCRYPTIONS:
                raise TransitInputError(f"max_encryptions must be 1..{HARD_MAX_ENCRYPTIONS} (the AES-GCM bound)")
            changes["max_encryptions"] = bound
        revived = [v.version for v in versions if v.version >= mdv and v.status is KeyStatus.REVOKED
                   ] if mdv != cfg.min_decryption_version else []
        if revived and not change.reinstate_allowed:
            raise ReinstateRefusedError(
                f"min_decryption_version {mdv} would reinstate revoked version(s) "
                f"{', '.join(map(str, revived))}: that needs the reinstate capability, not only config")
        if mdv != cfg.min_decryption_version:
            self._apply_min_decryption(key.km, versions, mdv)
        new = self._update(key, **changes)
        if changes:
            self.audit("transit.key.config", cfg.keyring, None, changed=sorted(changes), reinstated=revived)
        return new

    def _apply_min_decryption(self, km: KeyManager, versions: Sequence[KeyVersion], mdv: int) -> None:
        reason = f"transit min_decryption_version {mdv}"
        for kv in versions:
            if kv.version < mdv and kv.status in (KeyStatus.VALID, KeyStatus.GRACE):
                km.revoke(kv.version, reason=reason)
            elif kv.version >= mdv and kv.status is KeyStatus.REVOKED:  # audited as key.reinstate
                km.transition(kv.version, KeyStatus.VALID, action="key.reinstate", expected=KeyStatus.REVOKED,
                              reason=reason)


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


    def live_key(self, name: str) -> LiveKey:
        """The loaded key ``name`` (:class:`TransitKeyNotFoundError` if there is none)."""
        return self._key(name)

    def exists(self, name: str) -> bool:
        try:
            self._key(name)
        except (TransitKeyNotFoundError, TransitInputError):
            return False
        return True

