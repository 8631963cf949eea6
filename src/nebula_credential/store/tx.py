"""The transaction interface every store backend implements, sliced by table family.

A :class:`StoreTx` is all of the slices; code that needs one family asks for
that slice only (the HTTP server's tokens and policies: :class:`ServerTx`),
so it depends on no more of the store than it uses.  Every query runs inside
one transaction (:meth:`.base.Store.transaction`), so a change and the audit
event recording it commit together; compare-and-swap on ``revision`` is how
concurrent writers stay safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from ..models import EncryptedCredential, KeyStatus, KeyVersion
from .records import (
    AuditRow,
    BackupRecord,
    CredentialPage,
    LeaseRow,
    MountRow,
    Page,
    ReencryptPage,
    TokenRow,
    VersionRow,
)


class MetaTx(ABC):
    """Store-wide settings and the schema version."""

    @abstractmethod
    def get_meta(self, name: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...

    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether a table exists (read-only tools that run before migration check first)."""


class KeysTx(ABC):
    """Key versions (table ``key_versions``) and their access counters (``key_access``)."""

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

    def add_key_access(self, keyring: str, version: int, bucket: int, accesses: int, failures: int) -> None:
        """Add a block of counted accesses (and failures) under one version and minute bucket."""
        raise NotImplementedError

    def key_access_totals(self, since_bucket: int | None = None) -> dict[tuple[str, int], tuple[int, int]]:
        """(keyring, version) -> (accesses, failures), over buckets from ``since_bucket`` on."""
        raise NotImplementedError


class CredentialsTx(ABC):
    """Encrypted credentials (table ``credentials``)."""

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

    @abstractmethod
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
        the stored revision is that number (0: no row yet).  :class:`StoreTx`
        gives a default built on :meth:`KeysTx.writable_versions`; backends
        do it in one statement (the hot path, and the only way two
        check-and-set writers cannot both succeed).
        """

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
    ) -> ReencryptPage:
        """A page of credentials under ``key_version`` in ``scope``, ordered by id, as re-encryption reads them.

        Narrow rows (:class:`~.records.ReencryptRow`: the AAD's fields, envelope,
        revision), judged corrupt exactly as :meth:`get_credential` judges a
        row, without building the full record.  With ``skip_locked`` (where supported) the rows are locked for this
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


class VersionsTx(ABC):
    """Every version of every credential (table ``credential_versions``, schema v6).

    The ``credentials`` row stays the current version (what get/put/list and
    re-encryption of the current value use).  This table has a row for every
    version; a past version's row holds its own envelope under the keyring's
    key lifecycle (so version history is re-encrypted, counted by the
    destroy guard and copied by backups like the current value), while the
    current version's row has none: its envelope is the ``credentials``
    row's, stored once.
    """

    @abstractmethod
    def lock_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """The current row, locked against other writers until the transaction ends (PostgreSQL:
        ``FOR UPDATE``; SQLite's single writer serialises already)."""

    @abstractmethod
    def set_credential_metadata(self, keyring: str, credential_id: str, metadata: dict[str, Any]) -> bool:
        """Replace a row's metadata only (the envelope and revision stay)."""

    @abstractmethod
    def replace_envelope(self, keyring: str, credential_id: str, key_version: int, envelope: bytes,
                         metadata: dict[str, Any], now: datetime) -> bool:
        """Replace a row's envelope and metadata (a new revision)."""

    @abstractmethod
    def latest_version(self, keyring: str, credential_id: str) -> int:
        """The highest version number stored for the credential (0: none)."""

    @abstractmethod
    def add_version(self, row: VersionRow) -> None: ...

    @abstractmethod
    def archive_version(self, keyring: str, credential_id: str, version: int, key_version: int,
                        envelope: bytes) -> None:
        """Give a version that stops being the current one its own copy of the envelope.

        Until then its row has no envelope: the ``credentials`` row holds it.
        A destroyed version is left as it is.  Like :meth:`add_version` and
        :meth:`prune_versions` it answers nothing, so PostgreSQL sends it with
        the transaction's next statement, one round trip for several.
        """

    @abstractmethod
    def get_version_row(self, keyring: str, credential_id: str, version: int) -> VersionRow | None: ...

    @abstractmethod
    def version_rows(self, keyring: str, credential_id: str) -> list[VersionRow]:
        """Every stored version of a credential, oldest first."""

    @abstractmethod
    def credential_history(self, keyring: str, credential_id: str
                           ) -> tuple[EncryptedCredential, list[VersionRow]] | None:
        """The current row and every version row, oldest first, in ONE statement (None: no such
        credential), so a KV read can run as :meth:`~.base.Store.read_one` reads: on PostgreSQL one
        round trip instead of four (BEGIN, two SELECTs, COMMIT), from one snapshot all the same."""

    def credential_version(self, keyring: str, credential_id: str, version: int | None
                           ) -> tuple[EncryptedCredential, VersionRow | None, int] | None:
        """The current row, the row of ``version`` (None: the latest one; None if there is no such
        version) and the latest version number (0: none), in ONE statement (None: no such credential).

        What a KV read needs and no more: the history's other rows (up to
        ``max_versions``, each decoded) are not read.  This default derives
        it from :meth:`credential_history`; the SQL stores read one row.
        """
        found = self.credential_history(keyring, credential_id)
        if found is None:
            return None
        head, rows = found
        latest = rows[-1].version if rows else 0
        wanted = latest if version is None else version
        return head, next((r for r in rows if r.version == wanted), None), latest

    @abstractmethod
    def prune_versions(self, keyring: str, credential_id: str, up_to: int) -> None:
        """Remove versions numbered ``up_to`` and below (beyond ``max_versions``), envelopes and all."""

    @abstractmethod
    def set_deletion_time(self, keyring: str, credential_id: str, versions: Sequence[int],
                          at: datetime | None) -> list[int]:
        """Soft delete (a time) or undelete (None) versions not destroyed; returns those changed."""

    @abstractmethod
    def destroy_versions(self, keyring: str, credential_id: str, versions: Sequence[int], at: datetime) -> list[int]:
        """Erase the envelopes of versions (kept as destroyed); returns those changed."""

    @abstractmethod
    def delete_all_versions(self, keyring: str, credential_id: str) -> int: ...

    @abstractmethod
    def version_envelopes_referenced(self, keyring: str) -> dict[int, int]:
        """Live version envelopes per key version, by envelope header (as :meth:`versions_referenced`)."""

    @abstractmethod
    def versions_for_reencryption(self, keyring: str, active_version: int, after: tuple[str, int] | None,
                                  limit: int) -> list[VersionRow]:
        """A page of live versions whose header names another key version than ``active_version``."""

    @abstractmethod
    def cas_update_version_envelopes(self, keyring: str,
                                     updates: Sequence[tuple[str, int, bytes, int, bytes]]) -> int:
        """Apply (id, version, old envelope, new key version, new envelope); a version whose envelope
        changed (destroyed, pruned, moved by another worker) since it was read is left untouched."""

    @abstractmethod
    def version_header_mismatches(self, keyring: str, limit: int = 100) -> list[tuple[str, int, int, int]]:
        """(id, version, key_version column, header version) of live versions whose column lies."""


class OperationsTx(ABC):
    """What operations keep: registered backups, leases and the audit chain."""

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


class ServerTx(ABC):
    """The HTTP server's tables: tokens (keyed hashes only), ACL policies and token roles.

    The one slice the server's token and policy code needs.  MACs are
    computed and checked by the repositories above; the store only keeps them.
    """

    @abstractmethod
    def token_insert(self, row: TokenRow) -> None: ...

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenRow | None: ...

    @abstractmethod
    def token_by_accessor(self, accessor: str) -> TokenRow | None: ...

    @abstractmethod
    def token_list(self) -> list[TokenRow]: ...

    @abstractmethod
    def token_set_expiry(self, accessor: str, expires_at: float | None, mac: str = "") -> bool: ...

    @abstractmethod
    def token_set_parent(self, accessor: str, parent: str | None, mac: str) -> bool: ...

    @abstractmethod
    def token_spend(self, accessor: str, old_uses: int, new_uses: int, old_mac: str, new_mac: str) -> bool:
        """Compare-and-swap of the use counter (and its MAC): False when another use got there first."""

    @abstractmethod
    def token_delete(self, accessors: Sequence[str]) -> int: ...

    @abstractmethod
    def token_children(self, accessor: str) -> list[str]: ...

    @abstractmethod
    def policy_put(self, name: str, body: str, now: datetime, mac: str = "") -> None: ...

    @abstractmethod
    def policy_get(self, name: str) -> str | None: ...

    @abstractmethod
    def policy_get_signed(self, name: str) -> tuple[str, str] | None:
        """(body, mac) of a stored policy (mac "" when the row has none)."""

    @abstractmethod
    def policy_list(self) -> list[str]: ...

    @abstractmethod
    def policy_delete(self, name: str) -> bool: ...

    @abstractmethod
    def role_put(self, name: str, body: str, now: datetime, mac: str) -> None: ...

    @abstractmethod
    def role_get(self, name: str) -> tuple[str, str] | None: ...

    @abstractmethod
    def role_list(self) -> list[str]: ...

    @abstractmethod
    def role_delete(self, name: str) -> bool: ...


class MountsTx(ABC):
    """The HTTP server's mount table (secrets engines and auth methods enabled at runtime).

    Every change also bumps the table's generation in ``meta``
    (:data:`MOUNTS_GENERATION_META`), in the same transaction, so another
    process notices it by reading one row.
    """

    @abstractmethod
    def mount_list(self) -> list[MountRow]: ...

    @abstractmethod
    def mount_get(self, kind: str, path: str) -> MountRow | None: ...

    @abstractmethod
    def mount_insert(self, row: MountRow) -> None: ...

    @abstractmethod
    def mount_update(self, row: MountRow) -> bool: ...

    @abstractmethod
    def mount_delete(self, kind: str, path: str) -> bool: ...

    @abstractmethod
    def mount_generation(self) -> int: ...


#: Meta row holding the mount table's generation, bumped with every change to it.
MOUNTS_GENERATION_META = "server.mounts.generation"


class AuthTx(ABC):
    """The auth methods' items (table ``auth_items``): roles, users, secret-id hashes, cubbyholes."""

    @abstractmethod
    def auth_put(self, mount: str, kind: str, name: str, body: str, now: float, *,
                 expires_at: float | None = None, uses_left: int | None = None, mac: str = "") -> None: ...

    @abstractmethod
    def auth_get(self, mount: str, kind: str, name: str, now: float) -> tuple[str, float | None, int | None] | None:
        """(body, expires_at, uses_left) of a live item; None when absent or expired."""

    @abstractmethod
    def auth_get_signed(self, mount: str, kind: str, name: str,
                        now: float) -> tuple[str, float | None, int | None, str] | None:
        """As :meth:`auth_get`, with the row's MAC ("" for a row written before schema v10)."""

    @abstractmethod
    def auth_names(self, mount: str, kind: str, now: float) -> list[str]: ...

    @abstractmethod
    def auth_list_signed(self) -> list[tuple[str, str, str, str, float | None, str]]:
        """Every item as (mount, kind, name, body, expires_at, mac), for ``doctor``'s rows check."""

    @abstractmethod
    def auth_delete(self, mount: str, kind: str, name: str) -> bool: ...

    @abstractmethod
    def auth_delete_kind(self, mount: str, kind: str) -> int: ...

    @abstractmethod
    def auth_delete_mount(self, mount: str) -> int:
        """Delete every item of one auth mount (the method was disabled: its data is gone, as in Vault)."""

    @abstractmethod
    def auth_purge_expired(self, now: float) -> int:
        """Delete expired items (secret ids, wrapped answers, cubbyholes) and the cubbyholes and wrapped
        answers of tokens no longer stored; returns how many."""

    @abstractmethod
    def auth_spend(self, mount: str, kind: str, name: str, now: float) -> str | None:
        """Spend one use of a live item in one conditional UPDATE; its body, or None when
        absent, expired or used up (the last use deletes the row)."""

    @abstractmethod
    def auth_spend_signed(self, mount: str, kind: str, name: str,
                          now: float) -> tuple[str, float | None, int | None, str] | None:
        """As :meth:`auth_spend`: (body, expires_at, uses_left after the spend, mac)."""


class DatabaseTx(ABC):
    """The database secrets engine's rows (``store/_sql_database.py``): MAC'd config and role items with a
    revision for check-and-set, and the secret leases, claimed for revocation by conditional UPDATEs."""

    @abstractmethod
    def db_item_get(self, mount: str, kind: str, name: str) -> tuple[str, int, str] | None:
        """(body, revision, mac) of one item; None when absent."""

    @abstractmethod
    def db_item_put(self, mount: str, kind: str, name: str, body: str, mac: str, now: float,
                    expected_revision: int | None = None) -> int | None:
        """Write an item; its new revision, or None when ``expected_revision`` (0: absent) did not hold."""

    @abstractmethod
    def db_item_names(self, mount: str, kind: str) -> list[str]: ...

    @abstractmethod
    def db_item_delete(self, mount: str, kind: str, name: str) -> bool: ...

    @abstractmethod
    def db_item_list_signed(self) -> list[tuple[str, str, str, str, str]]:
        """Every item as (mount, kind, name, body, mac), for ``doctor``'s rows check."""

    @abstractmethod
    def lease_list_all(self) -> list[LeaseRow]:
        """Every lease row, revoked ones included (``doctor``)."""

    @abstractmethod
    def db_item_mounts(self) -> list[str]:
        """Every mount that has an item (the scheduler's list)."""

    @abstractmethod
    def lease_insert(self, row: LeaseRow) -> None: ...

    @abstractmethod
    def lease_get(self, lease_id: str) -> LeaseRow | None: ...

    @abstractmethod
    def lease_ids(self, prefix: str, *, live_only: bool = True) -> list[str]:
        """Lease ids starting with ``prefix`` (not yet revoked, with ``live_only``)."""

    @abstractmethod
    def lease_ids_for_token(self, accessor: str) -> list[str]: ...

    @abstractmethod
    def lease_extend(self, lease_id: str, expire_time: float, mac: str, *, body: str | None = None) -> bool:
        """Set a live lease's expiry (renewal), and its body when given; False when it is no longer active."""

    @abstractmethod
    def lease_due(self, mount: str | None, now: float, limit: int) -> list[str]:
        """Ids of leases to revoke now: active and expired, or revoking and due a retry, and unclaimed."""

    @abstractmethod
    def lease_claim(self, lease_id: str, holder: str, now: float, claim_until: float, *,
                    force: bool = False) -> bool:
        """Claim a lease for revocation in one conditional UPDATE (one winner across processes); ``force``
        claims a live lease before its expiry (an explicit revoke)."""

    @abstractmethod
    def lease_revoked(self, lease_id: str, holder: str, now: float) -> bool: ...

    @abstractmethod
    def lease_failed(self, lease_id: str, holder: str, error: str, next_attempt: float) -> None: ...

    @abstractmethod
    def lease_tidy(self, revoked_before: float) -> int:
        """Delete leases revoked before that time; returns how many."""

    @abstractmethod
    def lease_counts(self, now: float) -> dict[str, int]:
        """{"active", "failing", "overdue"} counts (the metrics' gauges)."""


class StoreTx(MetaTx, KeysTx, CredentialsTx, VersionsTx, OperationsTx, ServerTx, MountsTx, AuthTx, DatabaseTx):
    """Queries inside one transaction, every table family. Obtain from :meth:`.base.Store.transaction`."""

    def lock_credential_and_meta(self, keyring: str, credential_id: str,
                                 name: str) -> tuple[EncryptedCredential | None, str | None]:
        """:meth:`lock_credential` and :meth:`get_meta` in this order (one round trip where the backend
        pipelines them): the first two reads of a write."""
        return self.lock_credential(keyring, credential_id), self.get_meta(name)

    def put_credential_checked_then_latest(
        self, keyring: str, credential_id: str, scope: str, key_version: int, envelope: bytes,
        metadata: dict[str, Any], now: datetime, statuses: Collection[KeyStatus],
        expected_revision: int | None = None, *, unchanged: bool = False,
    ) -> tuple[int | None, int]:
        """:meth:`put_credential_checked`, then :meth:`latest_version` read after it (as a write's version
        number must be), in one round trip where the backend pipelines them.  ``unchanged``: a hint that
        the row as read in this transaction has this scope and key version already (a store may then
        write only the columns that change; the answer is the same)."""
        revision = self.put_credential_checked(keyring, credential_id, scope, key_version, envelope, metadata, now,
                                               statuses, expected_revision)
        return revision, self.latest_version(keyring, credential_id)

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """A nested part of this transaction: undone alone if its block raises (the exception goes on).

        Why: a group commit writes several callers' changes in one
        transaction, each in its own savepoint, so one caller's refused
        write (a check-and-set mismatch) takes back only its own statements.
        """

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
