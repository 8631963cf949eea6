"""Version history of credentials: the rules of Vault's KV version 2 engine, over a store transaction.

Every write of a credential creates version N+1 (the ``credentials`` row
stays the current version, and ``credential_versions`` holds every version,
the current one included).  What a version's lifetime follows:

* ``max_versions`` (per credential, else the keyring's KV settings, else
  Vault's default of 10): past it the oldest versions are removed, their
  envelopes with them;
* ``delete_version_after``: a new version is written already soft-deleted
  at that time; a soft delete sets the time to now, undelete clears it;
* destroy erases a version's envelope for good (the bookkeeping stays);
* ``cas`` (Vault's check-and-set) compares with the latest version number,
  ``cas_required`` makes it mandatory.

The facade (:class:`~nebula_credential.vault.Vault`, and
:class:`~nebula_credential.aio.AsyncVault` through it) and the HTTP
server's KV engine apply these rules through this module only, so there is
one implementation of each.  Settings are plain JSON in the current row's
metadata under ``"kv"`` and, for a keyring, in the store's ``meta`` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .exceptions import CheckAndSetError, CheckAndSetRequiredError, ConcurrencyError, InvalidInputError
from .models import EncryptedCredential, from_epoch, to_epoch
from .store import StoreTx, VersionRow

#: Vault's default when ``max_versions`` is 0 (unset) on the secret and on the mount.
DEFAULT_MAX_VERSIONS = 10
#: The key of the current row's metadata that holds its KV settings and the current version's flags.
KV_META = "kv"
_SETTINGS = ("max_versions", "cas_required", "delete_version_after", "custom_metadata", "metadata_version")
_MOUNT_META = "kv_config:"
MAX_VERSIONS_LIMIT = 1_000_000


class WriteRace(ConcurrencyError):
    """Two first writes of one id crossed (PostgreSQL): the transaction is rolled back and run again.

    The later one read no current row before its write (there was none to
    lock) but found a version after it, whose envelope it never saw; so it
    cannot archive it.  Run again, it locks that row first.
    """


@dataclass(frozen=True, slots=True)
class KVSettings:
    """Vault's per-secret (or per-mount) KV settings; 0 / False / 0 s mean "unset"."""

    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: float = 0.0  # seconds; 0: never
    custom_metadata: dict[str, str] = field(default_factory=dict)
    #: How many times the settings were written (OpenBao's ``current_metadata_version``).
    metadata_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"max_versions": self.max_versions, "cas_required": self.cas_required,
                "delete_version_after": self.delete_version_after, "custom_metadata": dict(self.custom_metadata),
                "metadata_version": self.metadata_version}

    @classmethod
    def from_json(cls, data: Any) -> KVSettings:
        if not isinstance(data, dict):
            return cls()
        custom = data.get("custom_metadata")
        max_versions = data.get("max_versions")
        dva = data.get("delete_version_after")
        return cls(
            max_versions=max_versions if isinstance(max_versions, int) and max_versions > 0 else 0,
            cas_required=data.get("cas_required") is True,
            delete_version_after=float(dva) if isinstance(dva, int | float) and dva > 0 else 0.0,
            custom_metadata={str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {},
            metadata_version=data["metadata_version"] if isinstance(data.get("metadata_version"), int) else 0,
        )


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version as Vault's metadata shows it (never its value)."""

    version: int
    created_at: datetime
    deletion_time: datetime | None
    destroyed: bool

    def deleted(self, now: datetime) -> bool:
        """Soft-deleted (the deletion time is past); a destroyed version is not "deleted"."""
        return self.deletion_time is not None and self.deletion_time <= now

    def readable(self, now: datetime) -> bool:
        return not self.destroyed and not self.deleted(now)


@dataclass(frozen=True, slots=True)
class SecretVersions:
    """A credential's version history and settings: Vault's ``metadata/`` answer."""

    id: str
    settings: KVSettings
    created_at: datetime
    updated_at: datetime
    current_version: int
    oldest_version: int
    versions: tuple[VersionInfo, ...]

    def get(self, version: int) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == version), None)


def info(row: VersionRow) -> VersionInfo:
    return VersionInfo(row.version, row.created_at, row.deletion_time, row.destroyed)


def settings_of(metadata: dict[str, Any]) -> KVSettings:
    return KVSettings.from_json(metadata.get(KV_META))


def mount_settings(tx: StoreTx, keyring: str) -> KVSettings:
    """The keyring's KV settings (Vault's mount ``config``)."""
    return settings_from(tx.get_meta(mount_key(keyring)))


def mount_key(keyring: str) -> str:
    """The ``meta`` row of a keyring's KV settings."""
    return _MOUNT_META + keyring


def settings_from(raw: str | None) -> KVSettings:
    """A keyring's KV settings from its ``meta`` row (None: never set)."""
    return KVSettings.from_json(json.loads(raw)) if raw else KVSettings()


def set_mount_settings(tx: StoreTx, keyring: str, settings: KVSettings) -> None:
    tx.set_meta(_MOUNT_META + keyring, json.dumps(settings.to_json(), sort_keys=True))


def max_versions(secret: KVSettings, mount: KVSettings) -> int:
    """Vault's rule: the secret's own value, else the mount's, else 10."""
    return secret.max_versions or mount.max_versions or DEFAULT_MAX_VERSIONS


def delete_after(secret: KVSettings, mount: KVSettings) -> float:
    """The shorter non-zero of the secret's and the mount's ``delete_version_after``, as Vault takes it."""
    values = [v for v in (secret.delete_version_after, mount.delete_version_after) if v > 0]
    return min(values) if values else 0.0


def parse_versions(values: Iterable[Any]) -> list[int]:
    """Version numbers as Vault accepts them: integers, or strings of digits (the CLI and Go client send those)."""
    out = []
    for value in values:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError("versions", "version numbers are non-negative integers")
        out.append(value)
    return sorted(set(out))


def head_metadata(user: dict[str, Any] | None, old: EncryptedCredential | None,
                  current: VersionInfo | None) -> dict[str, Any]:
    """The current row's metadata: the caller's (or the old row's), its KV settings kept, the current flags set."""
    base = dict(user) if user is not None else {}
    old_kv = old.metadata.get(KV_META) if old is not None else None
    given = base.get(KV_META)
    kv = {k: v for k, v in (given if isinstance(given, dict) else old_kv if isinstance(old_kv, dict) else {}).items()
          if k in _SETTINGS}
    if current is not None:
        if current.deletion_time is not None:
            kv["deletion_time"] = to_epoch(current.deletion_time)
        if current.destroyed:
            kv["destroyed"] = True
    if kv:
        base[KV_META] = kv
    else:
        base.pop(KV_META, None)
    return base


def current_flags(metadata: dict[str, Any]) -> tuple[datetime | None, bool]:
    """(deletion time, destroyed) of the current version, from the current row's metadata."""
    kv = metadata.get(KV_META)
    if not isinstance(kv, dict):
        return None, False
    at = kv.get("deletion_time")
    when = from_epoch(float(at)) if isinstance(at, int | float) and not isinstance(at, bool) else None
    return when, kv.get("destroyed") is True


def is_placeholder(metadata: dict[str, Any]) -> bool:
    kv = metadata.get(KV_META)
    return isinstance(kv, dict) and kv.get("placeholder") is True


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """What a write decided before its row is written: the row's metadata and the new version's lifetime."""

    metadata: dict[str, Any]
    deletion_time: datetime | None
    keep: int


def plan_write(tx: StoreTx, keyring: str, credential_id: str, *, metadata: dict[str, Any] | None,
               old: EncryptedCredential | None, now: datetime, cas: int | None,
               mount: KVSettings | None = None) -> PlannedWrite:
    """Before the current row is written: refuse a missing ``cas`` where required, and work out the
    row's metadata (settings kept, the new version's flags) so the row is written once.  ``mount``: the
    keyring's settings as already read in this transaction (a group commit reads them once)."""
    secret = settings_of(metadata) if metadata is not None and KV_META in metadata else (
        settings_of(old.metadata) if old is not None else KVSettings())
    if mount is None:
        mount = mount_settings(tx, keyring)
    if cas is None and (secret.cas_required or mount.cas_required):
        raise CheckAndSetRequiredError(
            f"credential {credential_id!r} requires check-and-set: give the version it replaces (cas)")
    after = delete_after(secret, mount)
    deletion = now + timedelta(seconds=after) if after else None
    flags = VersionInfo(0, now, deletion, False)
    return PlannedWrite(head_metadata(metadata, old, flags), deletion, max_versions(secret, mount))


def record_write(tx: StoreTx, keyring: str, credential_id: str, *, scope: str, key_version: int,
                 plan: PlannedWrite, old: EncryptedCredential | None, now: datetime,
                 cas: int | None, latest: int | None = None) -> tuple[int, VersionInfo]:
    """After the current row was written (which locked it): archive the old current version, append the new
    one, prune past ``max_versions``.

    ``old`` is the current row as read (locked) before the write: its
    envelope becomes the past version's own copy.  The version number is
    read after the row's write, so concurrent writers of one id, serialised
    by that row lock, each get their own.  A failed ``cas`` raises
    :class:`CheckAndSetError`, and the caller's transaction rolls the row's
    write back.  ``latest``: the latest version number as read after the row's write, if the caller
    read it with that write.  Returns (version, its info).
    """
    if latest is None:
        latest = tx.latest_version(keyring, credential_id)
    if cas is not None and cas != latest:
        raise CheckAndSetError(credential_id, cas, latest, counter="version")
    if latest:
        if old is None:
            raise WriteRace(f"credential {credential_id!r} was first written concurrently; writing again")
        tx.archive_version(keyring, credential_id, latest, old.key_version, old.envelope)
    version = latest + 1
    row = VersionRow(keyring, credential_id, version, scope, key_version, None, now, plan.deletion_time, False)
    tx.add_version(row)
    if version > plan.keep:
        tx.prune_versions(keyring, credential_id, version - plan.keep)
    return version, info(row)


def history(tx: StoreTx, keyring: str, credential_id: str) -> SecretVersions | None:
    found = read(tx, keyring, credential_id)
    return None if found is None else found[1]


def read(tx: StoreTx, keyring: str, credential_id: str
         ) -> tuple[EncryptedCredential, SecretVersions, dict[int, VersionRow]] | None:
    """The current row, the history, and the version rows by number (one statement: a KV read may
    run it as :meth:`~.store.base.Store.read_one` runs a read)."""
    found_rows = tx.credential_history(keyring, credential_id)
    if found_rows is None:
        return None
    head, rows = found_rows
    versions = tuple(info(r) for r in rows)
    found = SecretVersions(
        id=credential_id, settings=settings_of(head.metadata), created_at=head.created_at,
        updated_at=max([head.updated_at, *(v.created_at for v in versions)]),
        current_version=versions[-1].version if versions else 0,
        # as Vault: 0 until versions were removed past max_versions
        oldest_version=versions[0].version if versions and versions[0].version > 1 else 0, versions=versions,
    )
    return head, found, {r.version: r for r in rows}


def stored_row(head: EncryptedCredential, found: SecretVersions, rows: dict[int, VersionRow],
               version: int, now: datetime) -> EncryptedCredential | None:
    """The envelope to open for ``version`` (the current row's for the current version), if it is readable."""
    row = rows.get(version)
    if row is None or not info(row).readable(now):
        return None
    return envelope_of(head, row, found.current_version)


def envelope_of(head: EncryptedCredential, row: VersionRow, current_version: int) -> EncryptedCredential | None:
    """The envelope that holds version ``row``: its own once archived, else the current row's if it is the
    current version (None: destroyed or never archived).  Readability (deleted, destroyed) is the caller's."""
    if row.envelope is not None:
        return EncryptedCredential(head.keyring, head.id, row.scope, row.key_version, row.envelope, head.metadata,
                                   head.revision, row.created_at, row.created_at)
    return head if row.version == current_version else None


def _sync_head(tx: StoreTx, keyring: str, credential_id: str, changed: Sequence[int]) -> None:
    """Copy the current version's flags onto the current row when a change touched it."""
    latest = tx.latest_version(keyring, credential_id)
    if latest not in changed:
        return
    head = tx.get_credential(keyring, credential_id)
    row = tx.get_version_row(keyring, credential_id, latest)
    if head is not None and row is not None:
        tx.set_credential_metadata(keyring, credential_id, head_metadata(head.metadata, head, info(row)))


def soft_delete(tx: StoreTx, keyring: str, credential_id: str, versions: Sequence[int], now: datetime) -> list[int]:
    """Mark versions deleted at ``now`` (already deleted ones keep their time); returns those changed."""
    rows = {r.version: r for r in tx.version_rows(keyring, credential_id)}
    todo = [v for v in versions if v in rows and not rows[v].destroyed and not info(rows[v]).deleted(now)]
    changed = tx.set_deletion_time(keyring, credential_id, todo, now)
    _sync_head(tx, keyring, credential_id, changed)
    return changed


def undelete(tx: StoreTx, keyring: str, credential_id: str, versions: Sequence[int]) -> list[int]:
    changed = tx.set_deletion_time(keyring, credential_id, list(versions), None)
    _sync_head(tx, keyring, credential_id, changed)
    return changed


def destroy(tx: StoreTx, keyring: str, credential_id: str, versions: Sequence[int], now: datetime) -> list[int]:
    """Erase versions' envelopes.  The current row's copy of the current version is the caller's to replace."""
    changed = tx.destroy_versions(keyring, credential_id, list(versions), now)
    _sync_head(tx, keyring, credential_id, changed)
    return changed


def set_settings(tx: StoreTx, head: EncryptedCredential, settings: KVSettings) -> None:
    """Replace a credential's KV settings (its flags stay).

    A lower ``max_versions`` removes nothing yet: as in Vault, the next
    write prunes.
    """
    kv = head.metadata.get(KV_META)
    flags = {k: v for k, v in (kv.items() if isinstance(kv, dict) else []) if k not in _SETTINGS}
    settings = KVSettings(settings.max_versions, settings.cas_required, settings.delete_version_after,
                          settings.custom_metadata, settings_of(head.metadata).metadata_version + 1)
    metadata = {**head.metadata, KV_META: {**flags, **settings.to_json()}}
    tx.set_credential_metadata(head.keyring, head.id, metadata)



def archive_before_import(tx: StoreTx, keyring: str, ids: Sequence[str]) -> None:
    """Before a bulk import overwrites current rows: each one's envelope becomes its past version's copy."""
    for credential_id in ids:
        head = tx.lock_credential(keyring, credential_id)
        latest = tx.latest_version(keyring, credential_id) if head is not None else 0
        if head is not None and latest:
            tx.archive_version(keyring, credential_id, latest, head.key_version, head.envelope)


def record_imported(tx: StoreTx, keyring: str, rows: Sequence[tuple[str, str, int]], now: datetime) -> None:
    """A bulk import's rows, (id, scope, key version), each a new version of its credential."""
    keep = max_versions(KVSettings(), mount_settings(tx, keyring))
    for credential_id, scope, key_version in rows:
        version = tx.latest_version(keyring, credential_id) + 1
        tx.add_version(VersionRow(keyring, credential_id, version, scope, key_version, None, now, None, False))
        if version > keep:
            tx.prune_versions(keyring, credential_id, version - keep)
