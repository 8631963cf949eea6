"""The facade applications use: put/get/delete/list credentials, rotate, re-encrypt.

A :class:`Vault` ties one store, one provider and one keyring together.
Values are JSON; each is encrypted with the keyring's active version and
bound (AAD) to its keyring, id and scope, so a ciphertext moved to another
record fails to decrypt.
"""

from __future__ import annotations

import builtins
import importlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from . import history
from .access import AccessCounter
from .audit import MAX_KEY_VERSION, AuditLog
from .config import KeyManagementConfig
from .envelope import credential_context, peek_version
from .exceptions import (
    CheckAndSetError,
    CommitOutcomeUnknownError,
    CorruptRecordError,
    CredentialNotFoundError,
    DecryptionError,
    EnvelopeFormatError,
    InvalidInputError,
    NebulaCredentialError,
)
from .keys import WRITABLE, WRITE_ATTEMPTS, KeyManager
from .models import Credential, EncryptedCredential, utc_now
from .names import check_credential_id, check_lookup_id, check_scope_configured
from .providers import KeyProvider
from .store import Page, Store, StoreTx, redact_url

if TYPE_CHECKING:
    # For annotations only; the code that runs them imports them where it is used, so a
    # get or put does not load re-encryption, legacy keys, holds or the lifecycle (issue 27).
    from .audit import Event
    from .holds import Hold
    from .legacy import LegacyKeySet
    from .lifecycle import MaintainReport
    from .models import KeyVersion
    from .mounttables import MountTables
    from .reencrypt import Progress, ReencryptResult
    from .servertables import AuthTables, ServerTables, ServerTx
    from .store import AuditRow

LEGACY_FALLBACKS_META = "legacy_fallbacks"
LEGACY_LAST_META = "legacy_last_fallback"
DEFAULT_SCOPE = "default"


def _check_id(credential_id: str, scope: str, config: KeyManagementConfig) -> None:
    """The one check of what a write names: every write path (put, import, adopt, the server) comes here."""
    check_credential_id(credential_id)
    check_scope_configured(scope, config.reencryption.priority)


def _encode(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        raise ValueError("credential value must be JSON-serialisable") from None


ON_EXISTING = ("fail", "skip", "overwrite")
_json_decode = json.JSONDecoder().decode


class VersionPut(NamedTuple):
    """One KV write of a group commit (:meth:`Vault.put_versions`): what :meth:`Vault.put_version` takes."""

    vault: Vault
    credential_id: str
    value: Any
    scope: str
    cas: int | None


class KVRead(NamedTuple):
    """One version as a KV v2 read answers it (:meth:`Vault.read_kv`)."""

    #: The version's metadata; None if there is no such version (never written, or removed).
    info: history.VersionInfo | None
    settings: history.KVSettings
    #: The latest version number (0: none).
    current_version: int
    #: The version decrypted; None if it is not readable (deleted, destroyed, no such version).
    record: Credential | None


class _Refused(Exception):
    """The one write of a group without a savepoint was refused: roll its transaction back (see put_versions)."""

    def __init__(self, error: NebulaCredentialError) -> None:
        super().__init__()
        self.error = error


class GroupCommit(NamedTuple):
    """What a group commit did: each write's new version or its error, in order; the events' error, if any."""

    puts: list[history.VersionInfo | Exception]
    events_error: Exception | None


@dataclass(slots=True)
class _Operations:
    """``maintain()``/``status()`` as the operations layer composes them.

    They need rotation strategies, the alert rules and metrics, all of
    which use the facade; so the facade does not import them.
    :mod:`nebula_credential.maintenance` registers its functions here when
    it is imported.  If nothing has imported it yet, the first call loads it
    by name (:data:`OPERATIONS_MODULE`, through importlib): the one place
    the facade reaches the operations layer, at run time only, so the layer
    contract holds and importing the package stays cheap (CLI start-up).
    ``vault.maintain()`` and ``vault.status()`` work however the vault was opened.
    """

    maintain: Callable[..., MaintainReport] | None = None
    status: Callable[[Vault], dict[str, Any]] | None = None


_operations = _Operations()
_F = TypeVar("_F")
T = TypeVar("T")


def register_operations(
    *, maintain: Callable[..., MaintainReport], status: Callable[[Vault], dict[str, Any]]
) -> None:
    """Called once by :mod:`nebula_credential.maintenance` (see :class:`_Operations`)."""
    _operations.maintain = maintain
    _operations.status = status


#: The module that registers ``maintain``/``status`` on import (see :class:`_Operations`).
OPERATIONS_MODULE = "nebula_credential.maintenance"


def _registered(fn: _F | None, name: str) -> _F:
    if fn is None:  # nothing imported the operations layer yet: load it by name, it registers itself
        importlib.import_module(OPERATIONS_MODULE)
        fn = getattr(_operations, name)
    if fn is None:
        raise NebulaCredentialError(f"Vault.{name}: {OPERATIONS_MODULE} did not register it")
    return fn


@dataclass(slots=True)
class ImportCounts:
    """What a bulk import did so far, updated as each batch commits."""

    created: int = 0
    overwritten: int = 0
    skipped: int = 0

    @property
    def written(self) -> int:
        return self.created + self.overwritten

    def to_json(self) -> dict[str, int]:
        return {"created": self.created, "overwritten": self.overwritten, "skipped": self.skipped,
                "imported": self.written}


class KeyOverview(NamedTuple):
    """What :meth:`Vault.key_overview` reads: versions, counts by version, pending rows by scope."""

    versions: list[KeyVersion]
    counts: dict[int, int]
    pending_by_scope: dict[str, int]


class Vault:
    """Credentials of one keyring in one store, under one root of trust."""

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
        self.store = store
        self.provider = provider
        self.config = config or KeyManagementConfig()
        self.clock = clock
        self.audit = audit or AuditLog(
            store, provider, actor=self.config.audit.actor or None, clock=clock,
            mirror_to_log=self.config.audit.log,
        )
        self.keys = KeyManager(
            store, provider, keyring=keyring, config=self.config, clock=clock, audit=self.audit
        )
        self._audit_credentials = self.config.audit.credentials
        #: Reads and failed reads per version, flushed to the store in blocks (the access alert).
        self.access = AccessCounter(store, clock)
        #: Called as (keyring, "encrypt"|"decrypt", seconds, ok) for each credential
        #: operation when set (the metrics layer); None costs nothing on the hot path.
        self.observer: Callable[[str, str, float, bool], None] | None = None
        self._legacy: tuple[LegacyKeySet, Callable[[str], str | bytes | None]] | None = None

    @property
    def keyring_name(self) -> str:
        return self.keys.keyring

    def keyring(self, name: str) -> Vault:
        """The same store and root of trust, another keyring (one per tenant)."""
        other = Vault(self.store, self.provider, keyring=name, config=self.config, clock=self.clock, audit=self.audit)
        other.observer = self.observer
        other.access = self.access
        return other

    # ---- credentials ------------------------------------------------------
    def put(
        self,
        credential_id: str,
        value: Any,
        *,
        scope: str = DEFAULT_SCOPE,
        metadata: dict[str, Any] | None = None,
        expected_revision: int | None = None,
        cas: int | None = None,
    ) -> int:
        """Store (or replace) a credential; returns its new revision.

        Every write is a new version of the credential (see :meth:`put_version`).
        ``metadata`` replaces the stored metadata, except its ``"kv"`` entry
        (the credential's version settings), which is kept unless given.
        With ``expected_revision`` the write is a check-and-set: it lands only
        if the stored revision is that number (0: no credential yet), checked
        by the write statement itself, else :class:`CheckAndSetError`.
        ``cas`` is Vault's check-and-set instead: the latest version number.
        """
        return self._put(credential_id, value, scope, metadata, expected_revision, cas)[0]

    def put_version(
        self,
        credential_id: str,
        value: Any,
        *,
        scope: str = DEFAULT_SCOPE,
        metadata: dict[str, Any] | None = None,
        cas: int | None = None,
    ) -> history.VersionInfo:
        """Write a new version; returns it.  ``cas`` (Vault's check-and-set) is the version this write
        replaces (0: none yet): if another writer got there first, :class:`CheckAndSetError`
        (``counter == "version"``).  Writes without ``cas`` never fail for a concurrent writer: they
        serialise on the credential's row, and each gets its own version number."""
        return self._put(credential_id, value, scope, metadata, None, cas)[1]

    def _put(self, credential_id: str, value: Any, scope: str, metadata: dict[str, Any] | None,
             expected_revision: int | None, cas: int | None) -> tuple[int, history.VersionInfo]:
        _check_id(credential_id, scope, self.config)
        keys = self.keys
        plaintext = _encode(value)
        aad = credential_context(keys.keyring, credential_id, scope)
        races = 0
        attempts = 0
        while attempts < WRITE_ATTEMPTS:
            attempts += 1
            blob = self._seal(plaintext, aad)
            version = peek_version(blob)
            try:
                done = self._write_once(credential_id, scope, metadata, expected_revision, cas, blob)
            except history.WriteRace:
                races += 1  # two first writes crossed: the next attempt locks the row the other made
                if races > WRITE_ATTEMPTS:
                    raise
                attempts -= 1  # not a refused key version: it does not use up an attempt
                continue
            if done is not None:
                return done
            keys.stale()  # revoked or destroyed under us: nothing written, encrypt again
        raise keys.write_refused((version,))

    def _seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """The envelope of one write under the keyring's active version (timed for the observer)."""
        observer = self.observer
        if observer is None:
            return self.keys.encrypt(plaintext, aad)
        start = time.perf_counter()
        blob = self.keys.encrypt(plaintext, aad)
        observer(self.keys.keyring, "encrypt", time.perf_counter() - start, True)
        return blob

    def _write_once(self, credential_id: str, scope: str, metadata: dict[str, Any] | None,
                    expected_revision: int | None, cas: int | None,
                    blob: bytes) -> tuple[int, history.VersionInfo] | None:
        """One write transaction: the current row and its new version; None if the key version was retired."""
        with self.store.transaction() as tx:
            return self._write_in(tx, credential_id, scope, metadata, expected_revision, cas, blob)

    def _write_in(self, tx: StoreTx, credential_id: str, scope: str, metadata: dict[str, Any] | None,
                  expected_revision: int | None, cas: int | None, blob: bytes,
                  mount: history.KVSettings | None = None) -> tuple[int, history.VersionInfo] | None:
        """A write's statements inside ``tx``: the current row and its new version; None if the key version
        was retired (then nothing was written).  ``mount``: the keyring's KV settings if already read in ``tx``."""
        kr = self.keys.keyring
        version = peek_version(blob)
        if mount is None:  # writers of one id serialise on the row lock; its settings read with it
            old, raw = tx.lock_credential_and_meta(kr, credential_id, history.mount_key(kr))
            mount = history.settings_from(raw)
        else:
            old = tx.lock_credential(kr, credential_id)
        now = self.clock()
        plan = history.plan_write(tx, kr, credential_id, metadata=metadata, old=old, now=now, cas=cas,
                                  mount=mount)
        # the write and its version's status check in one statement (see KeyManager.writable); the latest
        # version number is read after it (the row lock orders concurrent first writes), in one round trip
        revision, latest = tx.put_credential_checked_then_latest(
            kr, credential_id, scope, version, blob, plan.metadata, now, WRITABLE, expected_revision=expected_revision,
            unchanged=old is not None and old.scope == scope and old.key_version == version)
        if revision is None:
            if expected_revision is not None:
                row = tx.get_credential(kr, credential_id)
                actual = row.revision if row is not None else 0
                if actual != expected_revision:
                    raise CheckAndSetError(credential_id, expected_revision, actual)
            return None
        number, info = history.record_write(tx, kr, credential_id, scope=scope, key_version=version,
                                            plan=plan, old=old, now=now, cas=cas, latest=latest)
        if self._audit_credentials:
            self.audit.record(tx, "credential.write", keyring=kr, credential_id=credential_id,
                              version=version, scope=scope, credential_version=number)
        return revision, info

    def put_versions(self, puts: Sequence[VersionPut], events: Sequence[Event] = ()) -> GroupCommit:
        """Several KV writes (of any keyrings of this store) and a batch of audit events in one transaction.

        Why: a server's writers each paid a transaction (its ``BEGIN``, its
        commit, the file's writer lock) and their request audit events
        another; a group pays one.  The writes run in order, each in its own
        savepoint (a lone write in none: its refusal rolls the group back),
        so each sees the ones before it exactly as if they had been
        committed just before it (several versions of one path go in
        that order), and a refused write (check-and-set, ``cas_required``, a
        bad id) takes back only its own statements and gets its own error.
        A write whose key version was retired under it, or whose first write
        crossed another process's, is run again alone after the commit, as
        :meth:`put_version` runs it again.  If the group fails as a whole
        (the store, the commit) nothing of it was written, and each write and
        the events are run alone: every caller gets the answer it would have
        had alone, and none before the commit that holds its write.
        """
        results: list[history.VersionInfo | Exception | None] = [None] * len(puts)
        sealed: list[tuple[int, VersionPut, bytes]] = []
        for i, put in enumerate(puts):
            try:
                member = put.vault
                _check_id(put.credential_id, put.scope, member.config)
                aad = credential_context(member.keys.keyring, put.credential_id, put.scope)
                sealed.append((i, put, member._seal(_encode(put.value), aad)))  # outside the transaction
            except Exception as exc:  # as put_version would have raised it, before any statement
                results[i] = exc
        again: list[int] = []
        # A group of one write (most groups under a light load) takes no savepoint: if the write is refused
        # after some of its statements, the whole transaction is rolled back instead and the events are
        # written alone (_Refused): two statements fewer for every write that is not refused.
        alone = len(sealed) == 1
        try:
            with self.store.transaction() as tx:
                mounts: dict[str, history.KVSettings] = {}  # each keyring's settings, read once per group
                for i, put, blob in sealed:
                    kr = put.vault.keys.keyring
                    if kr not in mounts:
                        mounts[kr] = history.mount_settings(tx, kr)
                    try:
                        if alone:
                            done = put.vault._write_in(tx, put.credential_id, put.scope, None, None, put.cas, blob,
                                                       mounts[kr])
                        else:
                            with tx.savepoint():
                                done = put.vault._write_in(tx, put.credential_id, put.scope, None, None, put.cas,
                                                           blob, mounts[kr])
                    except NebulaCredentialError as exc:  # WriteRace included
                        if alone:
                            raise _Refused(exc) from None
                        if isinstance(exc, history.WriteRace):
                            again.append(i)
                        else:
                            results[i] = exc
                    else:
                        if done is None:  # its key version was retired: nothing of it was written
                            put.vault.keys.stale()
                            again.append(i)
                        else:
                            results[i] = done[1]
                if events:
                    self.audit.record_many(tx, list(events))
        except CommitOutcomeUnknownError as exc:
            # the group may have been applied: running it again could apply a write twice, so every
            # caller is told, as a write alone would have been, and re-reads before acting on it
            for i, _, _ in sealed:
                results[i] = exc
            return GroupCommit([r for r in results if r is not None], exc)
        except _Refused as refused:  # the lone write was refused: rolled back whole, its error is its answer
            i = sealed[0][0]
            if isinstance(refused.error, history.WriteRace):
                again = [i]
            else:
                results[i] = refused.error
            events_error = self._events_alone(events)
        except Exception:  # nothing of the group was written: each alone, as if there had been no group
            again = [i for i, _, _ in sealed]
            events_error = self._events_alone(events)
        else:
            events_error = None
        for i in again:
            put = puts[i]
            try:
                results[i] = put.vault.put_version(put.credential_id, put.value, scope=put.scope, cas=put.cas)
            except Exception as exc:
                results[i] = exc
        answers: list[history.VersionInfo | Exception] = []
        for result in results:
            assert result is not None  # every write was sealed and written, or refused, or run again
            answers.append(result)
        return GroupCommit(answers, events_error)

    def _events_alone(self, events: Sequence[Event]) -> Exception | None:
        if not events:
            return None
        try:
            self.record_events(events)
        except Exception as exc:
            return exc
        return None

    def put_many(
        self,
        items: Iterable[tuple[str, Any, str, dict[str, Any] | None]],
        *,
        batch_size: int = 1000,
        on_existing: str = "overwrite",
        counts: ImportCounts | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Bulk import of (id, value, scope, metadata), one transaction per batch.

        ``on_existing`` says what happens to an id that is already stored:
        ``overwrite`` (a new revision), ``skip`` (left as it is) or ``fail``
        (:class:`InvalidInputError`, and that batch is not written).  The
        check runs inside each batch's write transaction.  ``counts`` (if
        given) is filled in as batches commit, so a caller still knows what
        was written when a later batch fails; ``progress(rows)`` is called
        after each commit.  Returns how many rows were written.
        """
        if on_existing not in ON_EXISTING:
            raise InvalidInputError("on_existing", f"got {on_existing!r}; allowed: {', '.join(ON_EXISTING)}")
        counts = counts if counts is not None else ImportCounts()
        batch: list[tuple[str, bytes, str, dict[str, Any]]] = []
        for credential_id, value, scope, metadata in items:
            _check_id(credential_id, scope, self.config)
            batch.append((credential_id, _encode(value), scope, metadata or {}))
            if len(batch) >= batch_size:
                self._flush(batch, on_existing, counts, progress)
        if batch:
            self._flush(batch, on_existing, counts, progress)
        return counts.written

    def _flush(self, batch: list[tuple[str, bytes, str, dict[str, Any]]], on_existing: str,
               counts: ImportCounts, progress: Callable[[int], None] | None) -> None:
        """Encrypt and write one batch; again under a fresh active version if its version was retired."""
        keys = self.keys
        kr = keys.keyring
        total = len(batch)
        versions: set[int] = set()
        for _ in range(WRITE_ATTEMPTS):
            rows = []
            for credential_id, plaintext, scope, metadata in batch:
                blob = keys.encrypt(plaintext, credential_context(kr, credential_id, scope))
                rows.append((credential_id, scope, peek_version(blob), blob, metadata))
            versions = {r[2] for r in rows}
            with self.store.transaction() as tx:
                if not keys.writable(tx, versions):
                    continue
                existing = tx.existing_ids(kr, [r[0] for r in rows])
                if existing and on_existing == "fail":
                    first = next(r[0] for r in rows if r[0] in existing)
                    raise InvalidInputError("id", f"credential {first!r} already exists (and {len(existing) - 1} "
                                            "more in this batch); nothing of this batch was written")
                if existing and on_existing == "skip":
                    rows = [r for r in rows if r[0] not in existing]
                if rows:
                    now = self.clock()
                    if existing:
                        history.archive_before_import(tx, kr, [r[0] for r in rows if r[0] in existing])
                    tx.put_credentials(kr, rows, now)
                    history.record_imported(tx, kr, [(i, sc, v) for i, sc, v, _, _ in rows], now)
                if self._audit_credentials:
                    self.audit.record(tx, "credential.import", keyring=kr, count=len(rows))
            if on_existing == "skip":
                counts.skipped += len(existing)
            else:
                counts.overwritten += len(existing)
            counts.created += len(rows) - (0 if on_existing == "skip" else len(existing))
            batch.clear()
            if progress is not None:
                progress(total)
            return
        raise keys.write_refused(versions)

    def get_record(self, credential_id: str, *, version: int | None = None) -> Credential:
        """The decrypted credential with its scope, key version and metadata.

        ``version`` reads that version of the credential's history; without
        it, the current one.  A version (or the current one) that is
        soft-deleted, destroyed, removed past ``max_versions`` or never
        written raises :class:`CredentialNotFoundError`.
        """
        kr = self.keys.keyring
        if version is not None:
            return self._get_version(check_lookup_id(credential_id), version)
        row = self.store.read_credential(kr, check_lookup_id(credential_id))
        if row is None:
            if self._legacy is not None:
                return self._read_through(credential_id)
            raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
        deleted_at, destroyed = history.current_flags(row.metadata)
        if history.is_placeholder(row.metadata) or destroyed or (
                deleted_at is not None and deleted_at <= self.clock()):
            raise CredentialNotFoundError(f"credential {credential_id!r} in keyring {kr!r} is deleted")
        value = self._open(row)
        return Credential(row.id, row.scope, row.key_version, value, row.metadata, row.revision,
                          row.created_at, row.updated_at)

    def _get_version(self, credential_id: str, version: int) -> Credential:
        record = self.read_kv(credential_id, version).record
        if record is None:
            raise CredentialNotFoundError(f"no readable version {version} of credential {credential_id!r} "
                                          f"in keyring {self.keys.keyring!r}")
        return record

    def read_version(self, credential_id: str, version: int | None = None
                     ) -> tuple[history.SecretVersions, Credential | None]:
        """The history and that version (default: the current one) decrypted, from one read transaction;
        the credential is None if that version is not readable (deleted, destroyed, removed, never written).
        What a KV read answers with."""
        kr = self.keys.keyring
        cid = check_lookup_id(credential_id)
        found = self.store.read_one(lambda tx: history.read(tx, kr, cid))  # one statement
        if found is None:
            raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
        head, versions, rows = found
        number = version or versions.current_version
        row = history.stored_row(head, versions, rows, number, self.clock())
        if row is None:
            return versions, None
        return versions, self._version_record(head, row, rows[number].created_at, number)

    def read_kv(self, credential_id: str, version: int | None = None) -> KVRead:
        """One version (None or 0: the current one) as a KV v2 read answers it, from one statement.

        Why not :meth:`read_version`: a KV read shows one version's metadata,
        so reading and decoding every version of the history (up to
        ``max_versions`` rows) and building the whole :class:`~.history.SecretVersions`
        was most of its store side.  The answer is the same: the version's
        info (None: no such version), the secret's settings, the latest
        version number, and the value decrypted (None: not readable).
        """
        kr = self.keys.keyring
        found = self.store.read_credential_version(kr, check_lookup_id(credential_id), version or None)
        if found is None:
            raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
        head, row, latest = found
        settings = history.settings_of(head.metadata)
        if row is None:
            return KVRead(None, settings, latest, None)
        shown = history.info(row)
        stored = history.envelope_of(head, row, latest) if shown.readable(self.clock()) else None
        if stored is None:
            return KVRead(shown, settings, latest, None)
        return KVRead(shown, settings, latest, self._version_record(head, stored, row.created_at, row.version))

    def _version_record(self, head: EncryptedCredential, stored: EncryptedCredential, created: datetime,
                        number: int) -> Credential:
        """Version ``number`` of a secret decrypted (``stored``: the envelope that holds it), as
        :meth:`read_version` and :meth:`read_kv` answer it."""
        return Credential(stored.id, stored.scope, peek_version(stored.envelope), self._open(stored), head.metadata,
                          head.revision, created, created, number)

    def _open(self, row: EncryptedCredential) -> Any:
        """Decrypt a stored row (current or past version), counting and auditing as every read does."""
        kr = self.keys.keyring
        credential_id = row.id
        observer = self.observer
        start = time.perf_counter() if observer is not None else 0.0
        try:
            value = self.decrypt_row(row)
        except (DecryptionError, EnvelopeFormatError) as exc:
            # A failed tag on a stored row is a tamper or corruption signal: audit it.
            # a garbage header may name any uint32; the audit column holds versions that can exist
            version = row.key_version if row.key_version <= MAX_KEY_VERSION else None
            with self.store.transaction() as tx:
                self.audit.record(tx, "decrypt.failed", keyring=kr, credential_id=credential_id,
                                  version=version, outcome="error", error=type(exc).__name__)
            self.access.record(kr, row.key_version, False)
            if observer is not None:
                observer(kr, "decrypt", time.perf_counter() - start, False)
            raise
        except NebulaCredentialError:
            self.access.record(kr, row.key_version, False)
            if observer is not None:
                observer(kr, "decrypt", time.perf_counter() - start, False)
            raise
        self.access.record(kr, row.key_version, True)
        if observer is not None:
            observer(kr, "decrypt", time.perf_counter() - start, True)
        if self._audit_credentials:
            with self.store.transaction() as tx:
                self.audit.record(tx, "credential.read", keyring=kr, credential_id=credential_id,
                                  version=row.key_version)
        return value

    # ---- version history (Vault's KV v2 rules live in .history) -------------------
    def versions(self, credential_id: str) -> history.SecretVersions:
        """The credential's version history and KV settings (never a value)."""
        kr = self.keys.keyring
        with self.store.read() as tx:
            found = history.history(tx, kr, check_lookup_id(credential_id))
        if found is None:
            raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
        return found

    def _versions_change(self, credential_id: str, action: str,
                         change: Callable[[StoreTx, str, str], list[int]], versions: Iterable[Any]) -> list[int]:
        kr = self.keys.keyring
        check_lookup_id(credential_id)
        numbers = history.parse_versions(versions)
        with self.store.transaction() as tx:
            if tx.lock_credential(kr, credential_id) is None:
                raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
            changed = change(tx, kr, credential_id) if numbers else []
            if changed and self._audit_credentials:
                self.audit.record(tx, action, keyring=kr, credential_id=credential_id, versions=changed)
        return changed

    def delete_versions(self, credential_id: str, versions: Iterable[Any] | None = None) -> list[int]:
        """Soft-delete versions (default: the latest); undelete brings them back. Returns those changed."""
        numbers = None if versions is None else history.parse_versions(versions)
        now = self.clock()

        def change(tx: StoreTx, kr: str, cid: str) -> list[int]:
            latest = tx.latest_version(kr, cid)  # "the latest" read under the row lock, not before it
            wanted = numbers if numbers is not None else [latest] if latest else []
            return history.soft_delete(tx, kr, cid, wanted, now)

        return self._versions_change(credential_id, "credential.delete_versions", change,
                                     numbers if numbers is not None else [0])

    def undelete(self, credential_id: str, versions: Iterable[Any]) -> list[int]:
        """Undo soft deletes of versions (a destroyed version stays destroyed)."""
        numbers = history.parse_versions(versions)
        return self._versions_change(credential_id, "credential.undelete",
                                     lambda tx, kr, cid: history.undelete(tx, kr, cid, numbers), numbers)

    def destroy_versions(self, credential_id: str, versions: Iterable[Any]) -> list[int]:
        """Erase versions' envelopes for good; returns those destroyed.

        Destroying the current version also replaces the current row's
        envelope (its copy of that version) by one of ``null``, so no
        ciphertext of the destroyed value is left in either table.
        """
        numbers = history.parse_versions(versions)
        now = self.clock()
        keys = self.keys

        def change(tx: StoreTx, kr: str, cid: str) -> list[int]:
            latest = tx.latest_version(kr, cid)
            done = history.destroy(tx, kr, cid, numbers, now)
            if latest in done:
                head = tx.get_credential(kr, cid)
                assert head is not None
                blob = keys.encrypt(b"null", credential_context(kr, cid, head.scope))
                if not keys.writable(tx, (peek_version(blob),)):
                    raise keys.write_refused((peek_version(blob),))
                tx.replace_envelope(kr, cid, peek_version(blob), blob, head.metadata, now)
            return done

        return self._versions_change(credential_id, "credential.destroy_versions", change, numbers)

    def set_settings(self, credential_id: str, settings: history.KVSettings, *,
                     scope: str | None = None) -> None:
        """Set a credential's KV settings (Vault's ``metadata`` write); creates a metadata-only entry if
        the credential has no version yet, as Vault does."""
        kr = self.keys.keyring
        check_credential_id(credential_id)
        if scope is not None:
            check_scope_configured(scope, self.config.reencryption.priority)
        for _ in range(WRITE_ATTEMPTS):
            blob = self.keys.encrypt(b"null", credential_context(kr, credential_id, scope or DEFAULT_SCOPE))
            with self.store.transaction() as tx:
                head = tx.lock_credential(kr, credential_id)
                if head is None:
                    first = history.KVSettings(settings.max_versions, settings.cas_required,
                                               settings.delete_version_after, settings.custom_metadata, 1)
                    metadata = {history.KV_META: {**first.to_json(), "placeholder": True}}
                    written = tx.put_credential_checked(kr, credential_id, scope or DEFAULT_SCOPE,
                                                        peek_version(blob), blob, metadata, self.clock(), WRITABLE,
                                                        expected_revision=0)
                    if written is None:
                        self.keys.stale()
                        continue
                else:
                    history.set_settings(tx, head, settings)
                if self._audit_credentials:
                    self.audit.record(tx, "credential.settings", keyring=kr, credential_id=credential_id)
                return
        raise self.keys.write_refused((peek_version(blob),))

    def past_versions(self, *, page: int = 1000) -> Iterator[EncryptedCredential]:
        """Every live past version of the keyring's credentials as stored rows (ciphertext, never values),
        in (id, version) order: for checks that read every envelope back (backup verification)."""
        kr = self.keys.keyring

        def fetch(tx: StoreTx, after: Any, size: int) -> Page[EncryptedCredential]:
            rows = tx.versions_for_reencryption(kr, -1, after, size)  # key version -1: none is excluded
            out: Page[EncryptedCredential] = Page()
            for r in rows:
                assert r.envelope is not None
                out.append(EncryptedCredential(kr, f"{r.id}", r.scope, r.key_version, r.envelope, {}, r.version,
                                               r.created_at, r.created_at))
            out.fetched = len(rows)
            out.last_id = (rows[-1].id, rows[-1].version) if rows else None
            return out

        return self.store.iter_pages(fetch, page=page)

    def kv_config(self) -> history.KVSettings:
        """The keyring's KV settings (Vault's mount ``config``): defaults for its credentials."""
        with self.store.read() as tx:
            return history.mount_settings(tx, self.keys.keyring)

    def set_kv_config(self, settings: history.KVSettings) -> None:
        with self.store.transaction() as tx:
            history.set_mount_settings(tx, self.keys.keyring, settings)
            self.audit.record(tx, "kv.config", keyring=self.keys.keyring, **settings.to_json())

    # ---- migration window -----------------------------------------------------
    def enable_read_through(self, keys: LegacyKeySet, lookup: Callable[[str], str | bytes | None]) -> None:
        """Serve ids not yet adopted from the legacy store, recording each fallback.

        ``lookup(id)`` returns the legacy token (or None).  Every fallback is
        counted in the store and audited, so ``doctor`` can tell the operator
        when the legacy key is no longer needed.
        """
        self._legacy = (keys, lookup)

    def _read_through(self, credential_id: str) -> Credential:
        assert self._legacy is not None
        keys, lookup = self._legacy
        kr = self.keys.keyring
        token = lookup(credential_id)
        if token is None:
            raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r} nor in the legacy store")
        from .legacy import decode_value

        value = decode_value(keys.decrypt(token))
        with self.store.transaction() as tx:
            count = int(tx.get_meta(f"{LEGACY_FALLBACKS_META}:{kr}") or 0) + 1
            tx.set_meta(f"{LEGACY_FALLBACKS_META}:{kr}", str(count))
            tx.set_meta(f"{LEGACY_LAST_META}:{kr}", self.clock().isoformat())
            self.audit.record(tx, "legacy.fallback", keyring=kr, credential_id=credential_id, outcome="warning")
        return Credential(credential_id, "legacy", 0, value, {"legacy": True}, 0)

    def legacy_fallbacks(self) -> tuple[int, str | None]:
        """(how many reads fell back to the legacy key, when the last one happened)."""
        kr = self.keys.keyring
        with self.store.read() as tx:
            return int(tx.get_meta(f"{LEGACY_FALLBACKS_META}:{kr}") or 0), tx.get_meta(f"{LEGACY_LAST_META}:{kr}")

    def decrypt_row(self, row: EncryptedCredential) -> Any:
        plaintext = self.keys.decrypt(row.envelope, credential_context(row.keyring, row.id, row.scope))
        try:
            # values are written as UTF-8 (_encode): json.loads of bytes would first guess the encoding
            return _json_decode(plaintext.decode("utf-8"))
        except ValueError:
            raise DecryptionError(f"credential {row.id!r} decrypted to something that is not JSON") from None

    def get(self, credential_id: str, *, version: int | None = None) -> Any:
        """The decrypted value of a credential (of that ``version`` of it, if given)."""
        return self.get_record(credential_id, version=version).value

    def delete(self, credential_id: str) -> None:
        kr = self.keys.keyring
        check_lookup_id(credential_id)
        with self.store.transaction() as tx:
            if not tx.delete_credential(kr, credential_id):
                raise CredentialNotFoundError(f"no credential {credential_id!r} in keyring {kr!r}")
            tx.delete_all_versions(kr, credential_id)  # every version goes with it, envelopes and all
            if self._audit_credentials:
                self.audit.record(tx, "credential.delete", keyring=kr, credential_id=credential_id)

    def list(
        self,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after: str | None = None,
        limit: int | None = None,
        page: int = 1000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[EncryptedCredential]:
        """Stream stored records ordered by id (ciphertext and metadata only, never values).

        One page of ``page`` rows is in memory at a time; ``after`` starts
        after that id and ``limit`` stops after that many rows, so a caller
        pages through any number of credentials with constant memory.  A
        corrupt row raises :class:`CorruptRecordError`; with ``on_corrupt``
        it is handed to that callback instead and the listing carries on.
        """
        skip = on_corrupt is not None
        return self.store.iter_pages(lambda tx, after_id, size: tx.list_credentials(
            self.keys.keyring, scope=scope, key_version=key_version, after_id=after_id, limit=size,
            skip_corrupt=skip), after=after, limit=limit, page=page, on_corrupt=on_corrupt)

    def list_heads(
        self,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after: str | None = None,
        limit: int | None = None,
        page: int = 5000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[tuple[str, str, int, int, float]]:
        """Like :meth:`list`, as (id, scope, key version, revision, updated_at epoch) tuples:
        no envelope or metadata is read, so tens of thousands of rows list in about a second."""
        skip = on_corrupt is not None
        return self.store.iter_pages(lambda tx, after_id, size: tx.list_heads(
            self.keys.keyring, scope=scope, key_version=key_version, after_id=after_id, limit=size,
            skip_corrupt=skip), after=after, limit=limit, page=page, on_corrupt=on_corrupt)

    # ---- keys and maintenance ----------------------------------------------
    def reencrypt(
        self,
        *,
        batch_size: int | None = None,
        priority: Iterable[str] | None = None,
        progress: Progress | None = None,
        rate_limit: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        workers: int | None = None,
    ) -> ReencryptResult:
        """Move every credential to the active key version (one pass; see ``reencrypt.run_pass``)."""
        from .reencrypt import run_pass

        cfg = self.config.reencryption
        return run_pass(
            self.keys,
            batch_size=batch_size or cfg.batch_size,
            priority=priority if priority is not None else cfg.priority,
            progress=progress,
            rate_limit=cfg.rate_limit if rate_limit is None else rate_limit,
            should_stop=should_stop,
            workers=workers or cfg.workers,
        )

    def maintain(self, **kwargs: Any) -> MaintainReport:
        """One scheduler pass: rotate if due, re-encrypt, advance the lifecycle, clean up.

        The entry point of :func:`nebula_credential.maintenance.maintain`
        (same keyword arguments), which the operations layer registers.
        """
        return _registered(_operations.maintain, "maintain")(self, **kwargs)

    def status(self) -> dict[str, Any]:
        """The ``status --json`` shape, with the alert rules evaluated now
        (the entry point of :func:`nebula_credential.maintenance.status`)."""
        return _registered(_operations.status, "status")(self)

    def pending(self) -> tuple[int, int, int]:
        from .reencrypt import pending_counts

        return pending_counts(self.keys)

    # ---- named reads and writes for the surfaces (server, console, daemon) ---------
    # The surfaces never touch the store: what they need of it is an operation here.
    @property
    def storage_type(self) -> str:
        """The store's kind ("sqlite", "postgresql"): Vault's ``storage_type`` in seal-status."""
        return self.store.scheme

    @property
    def single_writer(self) -> bool:
        """True when the store takes one writer at a time (SQLite), so callers may queue writes themselves."""
        return self.store.scheme == "sqlite"

    @property
    def reads_without_waiting(self) -> bool:
        """True when a read of this store never waits for a lock, so an event loop may run it itself."""
        return self.store.reads_without_waiting

    def read_here(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        """Run ``fn`` on this thread if it only reads the store (see :meth:`Store.read_here`)."""
        return self.store.read_here(fn, *args, **kwargs)

    def writer_free(self) -> AbstractContextManager[bool]:
        """Hold the store's writer queue if nobody holds or waits for it (see :meth:`Store.writer_free`)."""
        return self.store.writer_free()

    def head(self, credential_id: str) -> EncryptedCredential | None:
        """The stored record of this keyring (metadata, revision) without decrypting it; None if absent.

        One statement as :meth:`~.store.base.Store.read_credential` reads it (no ``BEGIN``/``COMMIT``;
        joined to concurrent reads on asyncio PostgreSQL): a KV write's create-or-update check reads it.
        """
        return self.store.read_credential(self.keys.keyring, credential_id)

    def ids_under(self, prefix: str, *, page: int = 5000) -> builtins.list[str]:
        """The ids under ``prefix`` (a KV folder), a page per read: no row outside it is read."""
        kr = self.keys.keyring
        return [*self.store.iter_pages(
            lambda tx, after, size: tx.ids_under(kr, prefix, after_id=after, limit=size), page=page)]

    def keyring_names(self) -> builtins.list[str]:
        """Every keyring with a key version in this store."""
        with self.store.read() as tx:
            return tx.keyrings()

    def key_overview(self) -> KeyOverview:
        """This keyring's versions, credentials per version and, per scope, rows not yet under the
        active version -- read in one transaction, so the three agree."""
        kr = self.keys.keyring
        with self.store.read() as tx:
            versions = tx.list_versions(kr)
            counts = tx.count_by_version(kr)
            active = next((v for v in versions if v.status.value == "active"), None)
            by_scope = tx.count_pending_by_scope(kr, active.version) if active else {}
        return KeyOverview(versions, counts, by_scope)

    def audit_events(self, *, limit: int = 100, action: str | None = None, keyring: str | None = None,
                     version: int | None = None, since: float | None = None) -> builtins.list[AuditRow]:
        """The newest ``limit`` audit events, oldest first (``action`` may end in ``*``;
        ``since`` an epoch time)."""
        with self.store.read() as tx:
            return tx.audit_search(limit=limit, action=action, keyring=keyring, version=version, since=since)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored in this keyring (an import's pre-check)."""
        with self.store.read() as tx:
            return tx.existing_ids(self.keys.keyring, ids)

    @property
    def data_directory(self) -> Path | None:
        """The folder the store's files live in (SQLite), None for a server database: where free space is watched."""
        return self.store.directory()

    def held_versions(self, now: datetime) -> Sequence[tuple[KeyVersion, Hold]]:
        """This keyring's versions an unexpired registered backup still needs, with the hold on each."""
        from .holds import held_versions

        return held_versions(self.store, self.keys.keyring, now)

    @property
    def redacted_url(self) -> str:
        """The store's URL with any password redacted (safe to print)."""
        return redact_url(self.store.url)

    def record_events(self, events: Iterable[Event]) -> None:
        """Append ``events`` to the audit chain in one transaction (a batch of request events)."""
        with self.store.transaction() as tx:
            self.audit.record_many(tx, [*events])

    def server_tables(self) -> ServerTables:
        """The store, typed as the narrow interface of the HTTP server's own tables."""
        return self.store

    def mount_tables(self) -> MountTables:
        """The store, typed as the narrow interface of the HTTP server's mount table."""
        return self.store

    def purge_credentials(self, *, reason: str, page: int = 500) -> int:
        """Delete every credential of this keyring (a disabled mount's data); returns how many.

        One transaction per page, each with one ``keyring.purge`` audit event
        counting what it deleted.  Key versions are left to their lifecycle:
        with no credential left, every version is unreferenced, and only the
        destroy guard (:func:`.keys.check_destroy`: floor, retention, backup
        holds) ever erases their material.
        """
        kr = self.keys.keyring
        total = 0
        while True:
            with self.store.transaction() as tx:
                ids = tx.ids_under(kr, "", limit=page)
                deleted = sum(1 for cid in ids if tx.delete_credential(kr, cid))
                if deleted:
                    self.audit.record(tx, "keyring.purge", keyring=kr, credentials=deleted, reason=reason)
            total += deleted
            if len(ids) < page:
                return total

    def auth_tables(self) -> AuthTables:
        """The store, typed as the narrow interface of the auth methods' items."""
        return self.store

    def audited_write(self, fn: Callable[[ServerTx], T], action: str,
                      details: Callable[[T], dict[str, Any]] | None = None) -> T:
        """Run ``fn`` in one write transaction and append ``action`` to the audit chain in it:
        the change and its event commit together or not at all (``fn`` raising rolls back both)."""
        with self.store.transaction() as tx:
            result = fn(tx)
            self.audit.record(tx, action, **(details(result) if details is not None else {}))
        return result

    def close(self) -> None:
        self.access.flush()
        self.provider.close()
        self.store.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Vault keyring={self.keys.keyring!r} store={self.store!r} provider={self.provider.name!r}>"
