"""The persistence interface every store backend implements.

A backend is a :class:`Store` (connections, transactions, migrations) whose
:meth:`Store.transaction` yields a :class:`StoreTx`: every query runs inside
one, so a change and the audit event recording it commit together.
Compare-and-swap on ``revision`` is how concurrent writers stay safe.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from .._bridge import sleep
from ..exceptions import (
    CommitOutcomeUnknownError,
    CorruptRecordError,
    StoreUnavailableError,
    TransientStoreError,
)
from ..models import EncryptedCredential, KeyStatus, KeyVersion
from ..providers.base import RetryPolicy

T = TypeVar("T")

logger = logging.getLogger("nebula_credential.store")

#: Store retries: a PostgreSQL restart takes a second or two, so back off up to ~3 s.
STORE_RETRY = RetryPolicy(attempts=6, base_delay=0.1, max_delay=3.0)

SCHEMA_VERSION = 5


@dataclass(frozen=True, slots=True)
class TokenRow:
    """One HTTP-server token: only its keyed hash is stored, never the token."""

    accessor: str
    token_hash: str
    parent: str | None
    policies: tuple[str, ...]
    display_name: str
    meta: dict[str, str]
    created_at: float
    expires_at: float | None  # None: never (root tokens created by an operator)
    max_expires_at: float | None
    ttl: float
    renewable: bool


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit event (the MAC chain is computed by the audit layer)."""

    seq: int
    ts: float
    actor: str
    action: str
    keyring: str | None
    key_version: int | None
    credential_id: str | None
    outcome: str
    details: str  # canonical JSON
    mac: bytes


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """One registered backup: the copy's manifest and how long retention must honour it."""

    name: str
    kind: str  # "sqlite-copy" or "registered" (pg_dump / PITR taken outside)
    taken_at: datetime
    expires_at: datetime
    registered_at: datetime
    location: str
    manifest: str  # canonical JSON


class Page(list[T], Generic[T]):
    """One page of decoded rows, with the corrupt ones set aside (see :class:`CredentialPage`)."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt: list[CorruptRecordError] = []
        self.fetched = 0
        self.last_id: Any = None


class CredentialPage(Page[EncryptedCredential]):
    """One page of decoded credentials.

    Read with ``skip_corrupt=True``, a row that is not what the schema
    promises is left out and its :class:`CorruptRecordError` kept in
    ``corrupt``, so a listing or a re-encryption pass reports it by id and
    carries on.  ``fetched`` counts the rows read (corrupt ones included)
    and ``last_id`` is the keyset cursor for the next page.
    """


class StoreTx(ABC):
    """Queries inside one transaction. Obtain from :meth:`Store.transaction`."""

    # ---- meta ------------------------------------------------------------
    @abstractmethod
    def get_meta(self, name: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether a table exists (read-only tools that run before migration check first)."""

    # ---- key versions ----------------------------------------------------
    @abstractmethod
    def keyrings(self) -> list[str]: ...

    @abstractmethod
    def list_versions(self, keyring: str) -> list[KeyVersion]: ...

    @abstractmethod
    def get_version(self, keyring: str, version: int) -> KeyVersion | None: ...

    @abstractmethod
    def lock_keyring(self, keyring: str) -> None:
        """Serialise writers of one keyring's versions until the transaction ends."""

    @abstractmethod
    def lock_version(self, keyring: str, version: int) -> KeyVersion | None:
        """Read one version and lock its row against writers until the transaction ends.

        Revoke and destroy take this (PostgreSQL: ``FOR UPDATE``) before they
        count references, so a write holding :meth:`writable_versions` on the
        same row either commits first and is counted, or waits and then sees
        the new status.  SQLite's single writer serialises them already.
        """

    @abstractmethod
    def writable_versions(self, keyring: str, versions: Sequence[int]) -> dict[int, KeyStatus]:
        """The status of each version, share-locking the rows (PostgreSQL: ``FOR KEY SHARE``).

        Called inside a write transaction just before its rows are written: a
        revoke or destroy of one of these versions (which takes ``FOR UPDATE``
        first, see :meth:`lock_version`) cannot commit in between.  KEY SHARE,
        not SHARE: it must not block the encryption counter's UPDATE, which
        another thread's re-encryption batch may be waiting on from its own
        connection while it holds row locks this write needs (a wait no
        deadlock detector can see).
        """

    @abstractmethod
    def insert_version(self, kv: KeyVersion) -> None: ...

    @abstractmethod
    def set_status(
        self,
        keyring: str,
        version: int,
        expected: KeyStatus,
        new: KeyStatus,
        at: datetime,
    ) -> bool:
        """Compare-and-swap the status; stamps revoked_at/destroyed_at as fitting.

        Moving to DESTROYED also erases the wrapped key material.
        """

    @abstractmethod
    def set_wrapped_key(self, keyring: str, version: int, wrapped: bytes, root_key_id: str) -> None: ...

    @abstractmethod
    def add_encryptions(self, keyring: str, version: int, count: int) -> int:
        """Add to the per-version encryption counter; returns the new total."""

    def existing_ids(self, keyring: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored in ``keyring`` (one query per few hundred ids)."""
        return {i for i in ids if self.get_credential(keyring, i) is not None}

    def list_heads(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after_id: Any = None,
        limit: int = 1000,
        skip_corrupt: bool = False,
    ) -> Page[tuple[str, str, int, int, float]]:
        """A page of (id, scope, key version, revision, updated_at epoch): ``list`` without
        decoding metadata or checking envelopes, for listing many rows quickly."""
        rows = self.list_credentials(keyring, scope=scope, key_version=key_version, after_id=after_id, limit=limit,
                                     skip_corrupt=skip_corrupt)
        page: Page[tuple[str, str, int, int, float]] = Page()
        page.extend((r.id, r.scope, r.key_version, r.revision, r.updated_at.timestamp()) for r in rows)
        page.corrupt, page.fetched, page.last_id = rows.corrupt, rows.fetched, rows.last_id
        return page

    @abstractmethod
    def ids_under(self, keyring: str, prefix: str, *, after_id: str | None = None, limit: int = 1000) -> Page[str]:
        """A page of the ids in ``keyring`` that start with ``prefix``, ordered by id.

        Rows outside the prefix are never read (the server lists one KV
        folder of a large keyring this way); ``%``, ``_`` and ``\\`` in
        ``prefix`` are plain characters.  An id that is not text raises
        :class:`CorruptRecordError`.
        """

    # ---- key access counters -------------------------------------------------
    def add_key_access(self, keyring: str, version: int, bucket: int, accesses: int, failures: int) -> None:
        """Add a block of counted accesses (and failures) under one version and minute bucket."""
        raise NotImplementedError

    def key_access_totals(self, since_bucket: int | None = None) -> dict[tuple[str, int], tuple[int, int]]:
        """(keyring, version) -> (accesses, failures), over buckets from ``since_bucket`` on."""
        raise NotImplementedError

    # ---- credentials -----------------------------------------------------
    @abstractmethod
    def get_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None: ...

    @abstractmethod
    def put_credential(
        self,
        keyring: str,
        credential_id: str,
        scope: str,
        key_version: int,
        envelope: bytes,
        metadata: dict[str, Any],
        now: datetime,
    ) -> int:
        """Insert or replace; returns the new revision."""

    def put_credential_checked(
        self,
        keyring: str,
        credential_id: str,
        scope: str,
        key_version: int,
        envelope: bytes,
        metadata: dict[str, Any],
        now: datetime,
        statuses: Collection[KeyStatus],
        expected_revision: int | None = None,
    ) -> int | None:
        """:meth:`put_credential` only if ``key_version`` is in one of ``statuses``; None if not.

        With ``expected_revision`` it is also a check-and-set: written only if
        the stored revision is that number (0: no row yet).  The check
        share-locks the version's row as :meth:`writable_versions` does.
        Backends override this to do all of it in one statement (the hot path,
        and the only way two check-and-set writers cannot both succeed).
        """
        status = self.writable_versions(keyring, (key_version,)).get(key_version)
        if status not in statuses:
            return None
        if expected_revision is not None:
            row = self.get_credential(keyring, credential_id)
            if (row.revision if row is not None else 0) != expected_revision:
                return None
        return self.put_credential(keyring, credential_id, scope, key_version, envelope, metadata, now)

    @abstractmethod
    def put_credentials(
        self,
        keyring: str,
        rows: Sequence[tuple[str, str, int, bytes, dict[str, Any]]],
        now: datetime,
    ) -> None:
        """Bulk upsert of (id, scope, key_version, envelope, metadata)."""

    @abstractmethod
    def delete_credential(self, keyring: str, credential_id: str) -> bool: ...

    @abstractmethod
    def list_credentials(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after_id: Any = None,
        limit: int = 1000,
        skip_corrupt: bool = False,
    ) -> CredentialPage:
        """A page ordered by id; callers page with ``after_id`` (the page's ``last_id``).

        A corrupt row raises :class:`CorruptRecordError`, or with ``skip_corrupt``
        is left out and listed in the page's ``corrupt``.
        """

    @abstractmethod
    def version_mismatches(self, keyring: str, limit: int = 100) -> list[tuple[str, int, int]]:
        """(id, key_version column, header version) of rows whose column lies about their header.

        Such a row is a corrupt record: readers go by the header, but anything
        selecting by the column (re-encryption, ``list --key-version``) is misled.
        """

    @abstractmethod
    def versions_referenced(self, keyring: str) -> dict[int, int]:
        """How many credentials each key version encrypts, read from the envelope headers.

        The header (bytes 4..8 of the envelope) is what decryption uses, so
        this -- not the ``key_version`` column, which a database writer can
        edit -- is what a destroy must count.  A row whose envelope has no
        readable header counts under its column, so nothing is stranded.
        """

    @abstractmethod
    def count_by_version(self, keyring: str) -> dict[int, int]: ...

    @abstractmethod
    def scopes_for_version(self, keyring: str, version: int) -> list[str]: ...

    @abstractmethod
    def count_pending_by_scope(self, keyring: str, active_version: int) -> dict[str, int]:
        """Credentials not under ``active_version``, counted per scope (re-encryption plan)."""

    @abstractmethod
    def fetch_for_reencryption(
        self,
        keyring: str,
        key_version: int,
        scope: str,
        after_id: Any,
        limit: int,
        *,
        skip_locked: bool = False,
        skip_corrupt: bool = False,
    ) -> CredentialPage:
        """A page of credentials under ``key_version`` in ``scope``, ordered by id.

        With ``skip_locked`` (where supported) the rows are locked for this
        transaction and rows locked by another worker are skipped;
        ``skip_corrupt`` as for :meth:`list_credentials`.
        """

    @abstractmethod
    def cas_update_envelopes(
        self,
        keyring: str,
        updates: Sequence[tuple[str, int, int, bytes]],
    ) -> int:
        """Apply (id, expected_revision, new_key_version, envelope); returns rows changed.

        A row whose revision moved on since it was read is left untouched.
        """


    # ---- HTTP server: tokens and policies ---------------------------------
    @abstractmethod
    def token_insert(self, row: TokenRow) -> None: ...

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenRow | None: ...

    @abstractmethod
    def token_by_accessor(self, accessor: str) -> TokenRow | None: ...

    @abstractmethod
    def token_list(self) -> list[TokenRow]: ...

    @abstractmethod
    def token_set_expiry(self, accessor: str, expires_at: float | None) -> bool: ...

    @abstractmethod
    def token_delete(self, accessors: Sequence[str]) -> int: ...

    @abstractmethod
    def token_children(self, accessor: str) -> list[str]: ...

    @abstractmethod
    def policy_put(self, name: str, body: str, now: datetime) -> None: ...

    @abstractmethod
    def policy_get(self, name: str) -> str | None: ...

    @abstractmethod
    def policy_list(self) -> list[str]: ...

    @abstractmethod
    def policy_delete(self, name: str) -> bool: ...

    # ---- backups ---------------------------------------------------------
    @abstractmethod
    def put_backup(self, record: BackupRecord, versions: dict[str, dict[int, int]]) -> None:
        """Register (or re-register) a backup and the key versions its rows need."""

    @abstractmethod
    def list_backups(self) -> list[BackupRecord]: ...

    @abstractmethod
    def delete_backup(self, name: str) -> bool: ...

    @abstractmethod
    def backup_versions(self, name: str) -> dict[str, dict[int, int]]:
        """The key versions a registered backup needs, with its credential counts."""

    @abstractmethod
    def backup_holds(self, keyring: str, version: int, now: datetime) -> list[tuple[str, datetime]]:
        """(name, expires_at) of every unexpired backup that needs this version, latest expiry first."""

    # ---- leases ----------------------------------------------------------
    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        """Take or renew a named lease; an expired holder's lease is taken over."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None: ...

    # ---- audit -----------------------------------------------------------
    @abstractmethod
    def audit_tail(self) -> tuple[int, bytes]:
        """(last seq, last mac), locking the chain head for this transaction."""

    @abstractmethod
    def audit_append(self, *rows: AuditRow) -> None:
        """Insert chain rows (already sequenced and MAC'd), in one statement when there are several."""

    @abstractmethod
    def get_audit_head(self) -> str | None:
        """The MAC'd head of the audit chain (last seq and a tag), if any."""

    @abstractmethod
    def set_audit_head(self, value: str) -> None: ...

    @abstractmethod
    def audit_rows(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRow]: ...

    @abstractmethod
    def audit_search(
        self,
        *,
        limit: int = 100,
        action: str | None = None,
        keyring: str | None = None,
        version: int | None = None,
        since: float | None = None,
    ) -> list[AuditRow]:
        """The newest ``limit`` matching events, oldest first (``action`` may end in ``*``)."""

    @abstractmethod
    def audit_counts(self, actions: Sequence[str], since: float | None = None) -> dict[tuple[str, str | None], int]:
        """Event counts by (action, keyring), optionally since an epoch time."""


class Store(ABC):
    """A credential store backend: SQLite (embedded) or PostgreSQL (shared)."""

    scheme: str = ""
    #: True where fetch_for_reencryption(skip_locked=True) really skips locked rows.
    supports_skip_locked: bool = False

    def __init__(self, url: str, *, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.retry = retry or STORE_RETRY

    @abstractmethod
    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[StoreTx]:
        """A transaction; ``write=False`` may run without taking write locks.

        Nested use from the same thread joins the outer transaction, unless
        ``autonomous``: then, where the backend can (PostgreSQL), it runs on its
        own connection and commits at once.  Short bookkeeping writes (the
        encryption counter) use it so they never hold row locks for the length
        of a caller's batch.  SQLite has one writer and always joins.
        """

    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version now in force."""

    @abstractmethod
    def close(self) -> None: ...

    def ensure_connections(self, count: int) -> None:  # noqa: B027 - optional hook
        """Make room for ``count`` concurrent transactions (a pooled backend grows its pool)."""

    def new_lock(self) -> AbstractContextManager[Any]:
        """A reentrant lock for the callers of this store (the key manager's).

        Threads get a ``threading.RLock``; the asyncio bridge's store hands out
        a greenlet-aware one, since its callers all share the loop's thread.
        """
        return threading.RLock()

    def directory(self) -> Path | None:
        """The folder holding a file-backed store (a local key file's default home), else None."""
        return None

    def read(self) -> AbstractContextManager[StoreTx]:
        return self.transaction(write=False)

    def read_one(self, fn: Callable[[StoreTx], T]) -> T:
        """Run ``fn``, a read that sends exactly ONE statement, in the cheapest consistent way.

        One statement sees one snapshot on its own, so a store may skip the
        transaction around it (PostgreSQL: one round trip instead of BEGIN,
        SELECT, COMMIT).  Here it is simply :meth:`read`.  Inside a
        transaction of the same caller it joins that transaction, as
        :meth:`read` does.
        """
        with self.read() as tx:
            return fn(tx)

    def read_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """One credential's row, read as :meth:`read_one` reads.

        The one entry point for a single-credential read, so a store can do
        better than a statement per caller: the asyncio PostgreSQL store
        answers the reads of concurrent tasks with one statement.
        """
        return self.read_one(lambda tx: tx.get_credential(keyring, credential_id))

    def run(
        self, fn: Callable[[StoreTx], T], *, write: bool = True, idempotent: bool = False
    ) -> T:
        """Run ``fn`` in a transaction, re-running the whole transaction after a lost connection.

        Only a :class:`TransientStoreError` is retried: the transaction was
        rolled back before its COMMIT was sent, so nothing of it remains and
        running ``fn`` again is safe (``fn`` must not have side effects
        outside the transaction).  A connection lost during COMMIT leaves the
        outcome unknown and is retried only for an ``idempotent`` ``fn`` (one
        that may apply twice without harm, such as a compare-and-swap).
        After the bounded attempts a
        :class:`StoreUnavailableError` names the store (password redacted).
        """
        delays = self.retry.delays()
        while True:
            try:
                with self.transaction(write=write) as tx:
                    return fn(tx)
            except StoreUnavailableError as exc:
                retryable = isinstance(exc, TransientStoreError) or (
                    idempotent and isinstance(exc, CommitOutcomeUnknownError)
                )
                if not retryable:
                    raise
                if not delays:
                    raise StoreUnavailableError(
                        f"store {redact_url(self.url)} unavailable after "
                        f"{self.retry.attempts} attempts: {exc}"
                    ) from exc
                delay = delays.pop(0)
                logger.warning("%s; running the transaction again in %.2fs", exc, delay)
                sleep(delay)

    def iter_credentials(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        page: int = 1000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[EncryptedCredential]:
        """Stream every matching credential, one page in memory at a time.

        A corrupt row raises, unless ``on_corrupt`` is given: then it is
        handed to that callback and the stream carries on with the next row.
        """
        skip = on_corrupt is not None
        return self.iter_pages(lambda tx, after_id, size: tx.list_credentials(
            keyring, scope=scope, key_version=key_version, after_id=after_id, limit=size, skip_corrupt=skip),
            page=page, on_corrupt=on_corrupt)

    def iter_pages(
        self,
        fetch: Callable[[StoreTx, Any, int], Page[T]],
        *,
        after: Any = None,
        limit: int | None = None,
        page: int = 1000,
        on_corrupt: Callable[[CorruptRecordError], None] | None = None,
    ) -> Iterator[T]:
        """Keyset paging: ``fetch(tx, after_id, size)`` one page per read transaction, at most ``limit`` rows."""
        left = limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            with self.read() as tx:
                rows = fetch(tx, after, size)
            if on_corrupt is not None:
                for exc in rows.corrupt:
                    on_corrupt(exc)
            yield from rows
            if rows.fetched < size:
                return
            after = rows.last_id
            if left is not None:
                left -= rows.fetched

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"


_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&]*")


def redact_url(url: str) -> str:
    """Drop a password (userinfo or libpq ``password=`` parameter) before a URL is printed."""
    url = _QUERY_SECRET.sub(r"\1***", url)
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
