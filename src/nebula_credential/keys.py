"""Versioned data keys: the lifecycle state machine and the encrypt/decrypt hot path.

The hot path is one AES-GCM call plus a header: the active key's 8 header
bytes are precomputed, ciphers (and their bound encrypt/decrypt) are cached
per version, nonces come from a buffered CSPRNG (:mod:`._nonce`), and a
per-process encryption counter reserves counts from the store in blocks, so
no encryption waits on a database write or a system call.  Everything else -- loading keys,
status changes, auditing -- happens on slower paths around it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from cryptography.exceptions import InvalidTag

from . import envelope as env
from ._nonce import refill as _refill_nonces
from ._nonce import take as _take_nonce
from .config import HARD_MAX_ENCRYPTIONS, KeyManagementConfig
from .exceptions import (
    ConcurrencyError,
    DecryptionError,
    KeyDestroyedError,
    KeyNotFoundError,
    KeyRevokedError,
    NebulaCredentialError,
    PolicyViolationError,
    ProviderError,
)
from .models import KeyStatus, KeyVersion, to_epoch, utc_now
from .names import check_keyring, check_keyring_bound
from .providers.base import Aead, KeyProvider, WrapContext

if TYPE_CHECKING:
    from .audit import AuditLog
    from .policies.retention import KeyRetentionPolicy
    from .store import Store, StoreTx

_monotonic = time.monotonic  # one global load on the hot path instead of a module attribute walk
# The envelope's fields as slice objects made once: on Python 3.11 ``blob[8:20]`` builds a
# new slice object per call, and decrypt cuts four (about 0.1 us of a 1 us call).
_PREFIX = slice(None, env.KEY_VERSION_END)  # magic, format, algorithm, key version: the key's dict key
_NONCE = slice(env.KEY_VERSION_END, env.HEADER_SIZE)
_BODY = slice(env.HEADER_SIZE, None)  # ciphertext || tag
_HEADER = slice(None, env.HEADER_SIZE)  # bound as AAD ahead of the caller's context

#: Encryptions reserved from the store per round trip (one write per block). Blocks
#: start small and grow, so short-lived processes do not burn the usage bound.
RESERVATION_BLOCK = 4096
FIRST_RESERVATION = 16

#: Lifecycle transitions an operator or a policy may make (rotation makes active -> valid;
#: only a revoked version may be destroyed, see :func:`~nebula_credential.destroy_guard.check_destroy`).
TRANSITIONS: dict[KeyStatus, frozenset[KeyStatus]] = {
    KeyStatus.ACTIVE: frozenset({KeyStatus.VALID}),
    KeyStatus.VALID: frozenset({KeyStatus.GRACE, KeyStatus.REVOKED}),
    KeyStatus.GRACE: frozenset({KeyStatus.VALID, KeyStatus.REVOKED}),
    KeyStatus.REVOKED: frozenset({KeyStatus.VALID, KeyStatus.DESTROYED}),
    KeyStatus.DESTROYED: frozenset(),
}

#: Statuses a row may be written under: the version still decrypts without an audit trail
#: of each use.  A write that finds its version in any other status is redone or refused.
WRITABLE: frozenset[KeyStatus] = frozenset({KeyStatus.ACTIVE, KeyStatus.VALID})

#: How often a write re-encrypts under a freshly read active version before giving up.
WRITE_ATTEMPTS = 3


class VersionedKey:
    """A usable key version: its cipher and precomputed header prefix.

    The cipher holds the DEK inside OpenSSL; this object never exposes it,
    refuses pickling, and its repr names only the version and status.
    """

    __slots__ = ("_aead", "_count", "_decrypt", "_encrypt", "_limit", "_prefix", "loaded_at", "status", "version")

    def __init__(self, version: int, status: KeyStatus, aead: Aead) -> None:
        self.version = version
        self.status = status
        self._aead = aead
        # bound once: the hot path calls these without an attribute walk per call
        self._encrypt = aead.encrypt
        self._decrypt = aead.decrypt
        self._prefix = env.version_prefix(version)
        self.loaded_at = time.monotonic()
        self._count = itertools.count()
        self._limit = 0

    def __repr__(self) -> str:
        return f"VersionedKey(version={self.version}, status={self.status.value!r}, key=<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key material cannot be pickled")


def seal(aead: Aead, prefix: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Envelope v1 under ``aead``: ``prefix`` (8 header bytes), a random nonce, ciphertext."""
    try:
        nonce = _take_nonce()
    except IndexError:
        nonce = _refill_nonces()
    header = prefix + nonce
    return header + aead.encrypt(nonce, plaintext, header + aad)


class KeyManager:
    """Versions, lifecycle and envelopes for one keyring.

    Construct with a store and a provider (``nc.open`` does this), or use
    :meth:`ephemeral` for an in-memory keyring with a throwaway root key.
    ``clock`` is injectable so policies and expiry are testable without sleeping.
    """

    reservation_block: ClassVar[int] = RESERVATION_BLOCK

    def __init__(
        self,
        store: Store,
        provider: KeyProvider,
        *,
        keyring: str = "default",
        config: KeyManagementConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
        audit: AuditLog | None = None,
    ) -> None:
        check_keyring_bound(keyring)
        self.store = store
        self.provider = provider
        self.keyring = keyring
        self.config = config or KeyManagementConfig()
        self.clock = clock
        self.audit = audit
        self._lock = store.new_lock()
        # Keyed by the 8 fixed header bytes (magic, format, algorithm, version): one
        # slice of the envelope finds the key and validates the prefix at once.
        self._keys = {}
        self._active: VersionedKey | None = None
        self._ttl = self.config.keys.dek_cache_ttl.total_seconds()
        # dek_cache_ttl = 0 means no cache: every operation re-reads and re-unwraps.
        self._refresh_every = self.config.keys.refresh_interval.total_seconds() if self._ttl else 0.0
        self._refresh_at = 0.0

    @property
    def _keys(self) -> dict[bytes, VersionedKey]:
        """The usable versions this process holds, by header prefix (replaced, never changed in place)."""
        return self._cached

    @_keys.setter
    def _keys(self, keys: dict[bytes, VersionedKey]) -> None:
        # Published with each version's bound decrypt beside it: decrypt() looks the
        # function up directly (one attribute load less per call, issue 27 target 4).
        # Every change to the cached versions goes through here, so the two maps name
        # the same versions: a version dropped (revoked, expired) is gone from both.
        self._decrypts: dict[bytes, Callable[[bytes, bytes, bytes | None], bytes]] = {
            vb: key._decrypt for vb, key in keys.items()
        }
        self._cached = keys

    # ---- construction ----------------------------------------------------
    @classmethod
    def ephemeral(cls, keyring: str = "default", **kwargs: Any) -> KeyManager:
        """An in-memory keyring (SQLite ``:memory:``, throwaway root key) with v1 active."""
        from .providers.local import LocalKeyProvider
        from .store import open_store

        km = cls(open_store("sqlite:///:memory:"), LocalKeyProvider.ephemeral(), keyring=keyring, **kwargs)
        km.initialize()
        return km

    def initialize(self) -> KeyVersion:
        """Create version 1 if the keyring is empty; returns the active version."""
        with self.store.read() as tx:
            versions = tx.list_versions(self.keyring)
        for kv in versions:
            if kv.status is KeyStatus.ACTIVE:
                return kv
        if not versions:
            check_keyring(self.keyring)  # a new keyring's name comes from the safe set
        created = self.rotate(reason="init", expected_active=None if not versions else -1)
        if created is None:
            return self.active_version()
        return created

    def initialize_in(self, tx: StoreTx) -> KeyVersion | None:
        """Version 1 of an empty keyring, written in the caller's transaction (None if not empty).

        A new store's init writes its provider record, audit key and first
        version in one transaction, so a provider that refuses the data key
        leaves nothing behind for the next attempt to trip over.
        """
        if tx.list_versions(self.keyring):
            return None
        check_keyring(self.keyring)
        aead, wrapped = self.provider.generate_dek(WrapContext(self.keyring, 1))
        kv = self._install(tx, 1, None, wrapped, "init")
        if kv is not None:
            self._activate(kv.version, aead)
        return kv

    def _record(self, tx: StoreTx, action: str, version: int | None, **details: Any) -> None:
        if self.audit is not None:
            self.audit.record(tx, action, keyring=self.keyring, version=version, **details)

    # ---- queries -----------------------------------------------------------
    def list(self) -> list[KeyVersion]:
        with self.store.read() as tx:
            return tx.list_versions(self.keyring)

    def version(self, version: int) -> KeyVersion:
        with self.store.read() as tx:
            kv = tx.get_version(self.keyring, version)
        if kv is None:
            raise KeyNotFoundError(f"keyring {self.keyring!r} has no key version {version}")
        return kv

    def active_version(self) -> KeyVersion:
        for kv in self.list():
            if kv.status is KeyStatus.ACTIVE:
                return kv
        raise KeyNotFoundError(
            f"keyring {self.keyring!r} has no active key; run `nebula-credential init`"
        )

    def credential_counts(self) -> dict[int, int]:
        with self.store.read() as tx:
            return tx.count_by_version(self.keyring)

    def writable(self, tx: StoreTx, versions: Iterable[int]) -> bool:
        """Inside a write transaction: may rows be written under all of ``versions``?

        Share-locks the versions' rows (PostgreSQL), so a revoke or destroy of
        one of them and this write cannot both commit.  A False answer also
        drops the cached statuses: the caller re-encrypts under the active
        version read afresh and tries again, :data:`WRITE_ATTEMPTS` times in
        all (``Vault.put`` does the same check inside its single upsert
        statement, ``StoreTx.put_credential_checked``).
        """
        wanted = versions if isinstance(versions, tuple) and len(versions) == 1 else tuple(sorted(set(versions)))
        statuses = tx.writable_versions(self.keyring, wanted)
        if all(statuses.get(v) in WRITABLE for v in wanted):
            return True
        self.stale()
        return False

    def stale(self) -> None:
        """Re-read key statuses at the next use (a write found its version retired)."""
        self._refresh_at = 0.0

    def write_refused(self, versions: Iterable[int]) -> NebulaCredentialError:
        """The typed error for a write whose versions stayed unwritable after every retry."""
        self.refresh()
        names = ", ".join(f"v{v}" for v in sorted(set(versions)))
        return ConcurrencyError(
            f"key version {names} of keyring {self.keyring!r} was revoked or destroyed while "
            f"this write was under way, {WRITE_ATTEMPTS} times in a row; nothing was written, retry"
        )

    # ---- key loading -------------------------------------------------------
    def _open(self, kv: KeyVersion) -> VersionedKey:
        if kv.wrapped_key is None:
            raise KeyDestroyedError(self.keyring, kv.version)
        aead = self.provider.open_dek(kv.wrapped_key, WrapContext(self.keyring, kv.version))
        return VersionedKey(kv.version, kv.status, aead)

    def _refresh(self) -> None:
        """Re-read statuses: another process may have rotated or revoked."""
        with self._lock:
            now = time.monotonic()
            if now < self._refresh_at:
                return
            versions = {kv.version: kv for kv in self.list()}
            keep: dict[bytes, VersionedKey] = {}
            for vb, key in self._keys.items():
                kv = versions.get(key.version)
                if kv is None or kv.status not in (KeyStatus.ACTIVE, KeyStatus.VALID):
                    continue
                if now - key.loaded_at >= self._ttl:
                    continue  # re-unwrap after the cache lifetime
                key.status = kv.status
                keep[vb] = key
            self._keys = keep
            active = self._active
            if active is not None and (
                active._prefix not in keep or keep[active._prefix].status is not KeyStatus.ACTIVE
            ):
                self._active = None
            self._refresh_at = now + self._refresh_every

    def refresh(self) -> None:
        """Re-read key statuses now, instead of at the next ``refresh_interval``.

        Batch jobs call this before deciding what is stale: a cached active
        version that another instance has just superseded would otherwise make
        them "re-encrypt" newer rows back under the older version.
        """
        with self._lock:
            self._refresh_at = 0.0
            self._refresh()

    def current_key(self) -> VersionedKey:
        """The active version, loaded and ready to encrypt."""
        if time.monotonic() >= self._refresh_at:
            self._refresh()
        key = self._active
        if key is not None:
            return key
        with self._lock:
            if self._active is None:
                kv = self.active_version()
                key = self._keys.get(env.version_prefix(kv.version)) or self._open(kv)
                key.status = KeyStatus.ACTIVE
                self._keys = {**self._keys, key._prefix: key}
                self._active = key
            return self._active

    def get_key(self, version: int) -> VersionedKey:
        """A version that may decrypt; typed errors say why one may not."""
        vb = env.version_prefix(version)
        key = self._keys.get(vb)
        if key is not None:
            return key
        kv = self.version(version)
        if kv.status is KeyStatus.DESTROYED:
            raise KeyDestroyedError(self.keyring, version)
        if kv.status is KeyStatus.REVOKED:
            raise KeyRevokedError(self.keyring, version)
        with self._lock:
            key = self._keys.get(vb) or self._open(kv)
            if kv.status is not KeyStatus.GRACE:  # grace keys are never cached: each use is audited
                self._keys = {**self._keys, vb: key}
            return key

    # ---- hot path ----------------------------------------------------------
    def next_active(self) -> VersionedKey:
        """The active version with one encryption counted against its usage bound."""
        key = self._active
        if key is None or _monotonic() >= self._refresh_at:
            key = self.current_key()
        if next(key._count) >= key._limit:
            key = self._reserve(key)
        return key

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under the active version; returns an envelope v1.

        :meth:`next_active` and :func:`seal` written out in line: this is the
        hottest call of the library, and two Python calls are a tenth of it.
        """
        key = self._active
        if key is None or _monotonic() >= self._refresh_at:
            key = self.current_key()
        if next(key._count) >= key._limit:
            key = self._reserve(key)
        try:
            nonce = _take_nonce()
        except IndexError:
            nonce = _refill_nonces()
        header = key._prefix + nonce
        return header + key._encrypt(nonce, plaintext, header + aad)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt an envelope with whichever version its header names."""
        if _monotonic() >= self._refresh_at:
            self._refresh()
        try:
            decrypt = self._decrypts[blob[_PREFIX]]  # a subscript, not .get(): no method call on the hot path
        except (KeyError, TypeError):  # not cached, or a bytearray's unhashable slice: the slow path
            return self._decrypt_slow(blob, aad)
        try:
            return decrypt(blob[_NONCE], blob[_BODY], blob[_HEADER] + aad)
        except InvalidTag:
            raise DecryptionError(
                f"envelope failed authentication under key version {env.header_version(blob)} "
                "(tampered, truncated, or bound to another credential)"
            ) from None
        except (TypeError, ValueError):  # a memoryview, or too short to hold a nonce: parse and say why
            return self._decrypt_slow(blob, aad)

    def _decrypt_slow(self, blob: bytes, aad: bytes) -> bytes:
        if isinstance(blob, bytearray | memoryview):
            blob = bytes(blob)
        parsed = env.parse(blob)
        try:
            key = self.get_key(parsed.key_version)
        except KeyRevokedError as exc:
            self._refused(parsed.key_version, exc)
            raise
        except KeyNotFoundError:
            raise KeyNotFoundError(
                f"envelope names key version {parsed.key_version}, which keyring "
                f"{self.keyring!r} does not have (wrong keyring or store?)"
            ) from None
        try:
            plaintext = key._aead.decrypt(parsed.nonce, parsed.ciphertext, parsed.header + aad)
        except InvalidTag:
            raise DecryptionError(
                f"envelope failed authentication under key version {key.version} "
                "(tampered, truncated, or bound to another credential)"
            ) from None
        if key.status is KeyStatus.GRACE:  # grace keys are never cached, so this status is fresh
            self._grace_used(key.version)
        return plaintext

    def _refused(self, version: int, exc: Exception) -> None:
        if self.audit is None:
            return
        with self.store.transaction() as tx:
            self._record(tx, "decrypt.refused", version, outcome_reason=type(exc).__name__)

    def _grace_used(self, version: int) -> None:
        if self.audit is None:
            return
        with self.store.transaction() as tx:
            assert self.audit is not None
            self.audit.record(tx, "key.grace_use", keyring=self.keyring, version=version,
                              outcome="warning")

    def re_encrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt with any live version, encrypt with the active one."""
        plaintext = self.decrypt(blob, aad)
        return self.encrypt(plaintext, aad)

    def _reserve(self, key: VersionedKey) -> VersionedKey:
        """Reserve a block of encryptions for ``key`` from the store (one write).

        Blocks stop exactly at ``rotation.max_encryptions``: the next
        reservation rotates (``auto_rotation`` on) or refuses (off).  The
        version's row is locked while its counter is read, checked and
        raised, so the stored counter never passes the bound, whatever the
        number of processes reserving at once.  The caller has already taken
        one encryption from ``key``'s count; when ``key`` turns out not to be
        the one to use, that encryption is taken again (:meth:`next_active`)
        from the key that is, never handed over uncounted.
        """
        with self._lock:
            if key is not self._active:
                return self.next_active()
            block = min(self.reservation_block, max(FIRST_RESERVATION, key._limit))
            bound = self.config.rotation.max_encryptions
            auto = self.config.keys.auto_rotation
            total = 0
            with self.store.transaction(autonomous=True) as tx:
                kv = tx.lock_version(self.keyring, key.version)
                retired = kv is None or kv.status is not KeyStatus.ACTIVE
                if not retired and kv is not None and kv.encryptions < bound:
                    block = min(block, bound - kv.encryptions)
                    total = tx.add_encryptions(self.keyring, key.version, block)
            if retired:  # another process rotated or revoked it: count this encryption on the active one
                self._refresh_at = 0.0
                self._active = None
                return self.next_active()
            if total > HARD_MAX_ENCRYPTIONS:
                raise PolicyViolationError(
                    f"key version {key.version} of keyring {self.keyring!r} reached the AES-GCM "
                    "usage bound (2^32 encryptions); run `nebula-credential keys rotate`"
                )
            granted = block - max(0, total - bound) if total else 0
            if granted <= 0:
                if not auto:
                    raise self.bound_reached(key.version, bound)
                self.rotate(reason="usage", expected_active=key.version)
                return self.next_active()
            key._limit += granted
            return key

    def bound_reached(self, version: int, bound: int) -> PolicyViolationError:
        """The typed error of a write at the usage bound with auto_rotation off (``put``, ``maintain``)."""
        return PolicyViolationError(
            f"key version {version} of keyring {self.keyring!r} reached max_encryptions ({bound}) "
            "and auto_rotation is off; run `nebula-credential keys rotate`"
        )

    # ---- rotation ------------------------------------------------------------
    def rotate(self, reason: str = "manual", *, expected_active: int | None = None) -> KeyVersion | None:
        """Create a new active version; the old one becomes valid.

        With ``expected_active`` the rotation happens only if that version is
        still active (``-1``: only if none is): a scheduler that lost the race
        to another instance gets ``None`` instead of rotating twice.
        """
        for _ in range(8):
            versions = self.list()
            active = next((v for v in versions if v.status is KeyStatus.ACTIVE), None)
            if expected_active is not None and (active.version if active else -1) != expected_active:
                self._refresh_at = 0.0  # someone else rotated: stop using our cached active version
                return None
            new_version = max((v.version for v in versions), default=0) + 1
            aead, wrapped = self.provider.generate_dek(WrapContext(self.keyring, new_version))
            with self.store.transaction(autonomous=True) as tx:
                kv = self._install(tx, new_version, active, wrapped, reason)
            if kv is None:  # another rotation won the race
                if expected_active is not None:
                    self._refresh_at = 0.0
                    return None
                continue  # build on top of it
            self._activate(new_version, aead)
            return kv
        raise ConcurrencyError(f"could not rotate keyring {self.keyring!r}: too many concurrent rotations")

    def _install(
        self, tx: StoreTx, new_version: int, active: KeyVersion | None, wrapped: bytes, reason: str
    ) -> KeyVersion | None:
        """Write ``new_version`` as the active version in ``tx``; None if the keyring moved since ``active``."""
        tx.lock_keyring(self.keyring)
        current = tx.list_versions(self.keyring)
        cur_active = next((v for v in current if v.status is KeyStatus.ACTIVE), None)
        if max((v.version for v in current), default=0) != new_version - 1 or (
            (cur_active.version if cur_active else None) != (active.version if active else None)
        ):
            return None
        now = self.clock()
        kv = KeyVersion(
            keyring=self.keyring,
            version=new_version,
            status=KeyStatus.ACTIVE,
            created_at=now,
            provider=self.provider.name,
            root_key_id=self.provider.root_key_id(),
            wrapped_key=wrapped,
            expires_at=now + self.config.keys.max_key_age,
            status_changed_at=now,
            reason=reason,
        )
        if cur_active is not None:
            tx.set_status(self.keyring, cur_active.version, KeyStatus.ACTIVE, KeyStatus.VALID, now)
        tx.insert_version(kv)
        self._record(
            tx,
            "key.create" if cur_active is None else "key.rotate",
            new_version,
            old_version=cur_active.version if cur_active else None,
            new_version=new_version,
            reason=reason,
            at=to_epoch(now),
        )
        return kv

    def _activate(self, version: int, aead: Aead) -> None:
        """Make the new version's cipher the one this process encrypts with."""
        with self._lock:
            key = VersionedKey(version, KeyStatus.ACTIVE, aead)
            old = self._active
            if old is not None:
                old.status = KeyStatus.VALID
            self._keys = {**self._keys, key._prefix: key}
            self._active = key

    # ---- lifecycle -------------------------------------------------------------
    def transition(
        self,
        version: int,
        new: KeyStatus,
        *,
        action: str,
        expected: KeyStatus | None = None,
        unreferenced_only: bool = False,
        retention: KeyRetentionPolicy | None = None,
        force_retention: bool = False,
        **details: Any,
    ) -> KeyVersion:
        """Move a version along the lifecycle, checked and audited in one transaction.

        The version's row is locked first (PostgreSQL ``FOR UPDATE``), so a
        write share-locking it (:meth:`writable`) either committed before the
        references are counted or sees the new status.  Destruction goes
        through :func:`~nebula_credential.destroy_guard.check_destroy` whatever the caller.
        """
        now = self.clock()
        with self.store.transaction() as tx:
            tx.lock_keyring(self.keyring)
            kv = tx.lock_version(self.keyring, version)
            if kv is None:
                raise KeyNotFoundError(f"keyring {self.keyring!r} has no key version {version}")
            if expected is not None and kv.status is not expected:
                raise ConcurrencyError(
                    f"key version {version} is {kv.status.value}, expected {expected.value}"
                )
            if new is KeyStatus.DESTROYED:
                # the destroy guard and retention load here: the hot path and start-up never need them
                from .destroy_guard import check_destroy
                from .policies.retention import retention_from_config

                refs, allowed_by = check_destroy(
                    tx, kv, now=now, config=self.config,
                    retention=retention or retention_from_config(self.config),
                    force_retention=force_retention,
                )
                details = {**details, "allowed_by": allowed_by, "forced": force_retention}
            else:
                if new not in TRANSITIONS[kv.status]:
                    active = kv.status is KeyStatus.ACTIVE
                    hint = " (rotate first: the active version cannot be retired)" if active else ""
                    raise PolicyViolationError(
                        f"key version {version} is {kv.status.value}; it cannot become {new.value}{hint}"
                    )
                # by envelope header, like the destroy guard: a row whose column lies still counts
                refs = tx.versions_referenced(self.keyring).get(version, 0)
                if (new is KeyStatus.GRACE or unreferenced_only) and refs:
                    raise PolicyViolationError(
                        f"key version {version} is still used by {refs} credential(s); it cannot become {new.value}"
                    )
            if not tx.set_status(self.keyring, version, kv.status, new, now):
                raise ConcurrencyError(f"key version {version} changed concurrently; retry")
            self._record(tx, action, version, old_status=kv.status.value, new_status=new.value,
                         credentials=refs, at=to_epoch(now), **details)
        with self._lock:
            self._keys = {vb: k for vb, k in self._keys.items() if k.version != version}
            self._refresh_at = 0.0
        if new is KeyStatus.DESTROYED and kv.wrapped_key is not None:
            # After the commit: the decision stands even if the backend step fails.
            try:
                self.provider.destroy_dek(kv.wrapped_key, WrapContext(self.keyring, version))
            except NebulaCredentialError as exc:
                raise ProviderError(
                    f"key version {version} is destroyed in the store, but the {self.provider.name} "
                    f"provider could not erase its own copy ({type(exc).__name__}); remove it by hand"
                ) from exc
        wrapped = None if new is KeyStatus.DESTROYED else kv.wrapped_key
        return replace(kv, status=new, status_changed_at=now, wrapped_key=wrapped)

    def revoke(self, version: int, *, reason: str = "operator") -> KeyVersion:
        return self.transition(version, KeyStatus.REVOKED, action="key.revoke", reason=reason)

    def reinstate(self, version: int) -> KeyVersion:
        kv = self.version(version)
        if kv.status is KeyStatus.DESTROYED:
            raise PolicyViolationError(f"key version {version} was destroyed and cannot be reinstated")
        if kv.status is not KeyStatus.REVOKED:
            raise PolicyViolationError(f"key version {version} is {kv.status.value}, not revoked")
        return self.transition(version, KeyStatus.VALID, action="key.reinstate", expected=KeyStatus.REVOKED)

    def destroy(
        self,
        version: int,
        *,
        force_retention: bool = False,
        retention: KeyRetentionPolicy | None = None,
        policy: str = "operator",
    ) -> KeyVersion:
        """Erase a revoked, unreferenced version's material (the guard: :mod:`~nebula_credential.destroy_guard`).

        ``force_retention`` skips only the retention settings (``keep_versions``
        and the policy's minimum), never the references, the floor or a backup hold.
        """
        return self.transition(version, KeyStatus.DESTROYED, action="key.destroy", retention=retention,
                               force_retention=force_retention, policy=policy)

    def key_age(self, now: datetime | None = None) -> timedelta:
        return (now or self.clock()) - self.active_version().created_at

    def __repr__(self) -> str:
        return f"<KeyManager keyring={self.keyring!r} provider={self.provider.name!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeyManager cannot be pickled")
