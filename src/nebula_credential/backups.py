"""Backups that retention knows about.

An old key version must live as long as any copy of data encrypted under
it.  So every backup is *registered in the store* with the key versions
its rows need (read from the envelope headers of the rows in the copy)
and an expiry; the destroy guard asks :func:`holds` inside the destroy
transaction, and a version an unexpired backup needs is never destroyed.

SQLite stores are copied by the store itself (:meth:`Store.copy_to`: one step,
so the copy is one consistent snapshot while writers go on in WAL mode).
PostgreSQL copies are made by ``pg_dump`` or point-in-time recovery
outside this tool; :func:`register_backup` records what such a copy may
need.  Checking and restoring a copy is :mod:`nebula_credential.restore`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import BackupError, CorruptRecordError, StoreError
from .holds import STORE_ID_META, ensure_store_id, referenced_versions
from .models import KeyStatus
from .names import printable
from .store import BackupRecord, Store, StoreTx, read_file_copy

if TYPE_CHECKING:
    from .vault import Vault

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
KIND_COPY = "sqlite-copy"
KIND_REGISTERED = "registered"


@dataclass(slots=True)
class Manifest:
    """What a backup holds and needs; written beside the copy and registered in the store."""

    name: str
    store_id: str
    taken_at: datetime
    expires_at: datetime
    schema_version: int
    #: keyring -> key version (from the envelope header) -> credentials in the copy
    keys: dict[str, dict[int, int]]
    audit_head: str | None
    kind: str = KIND_COPY
    location: str = ""
    credentials: int = field(init=False)

    def __post_init__(self) -> None:
        self.credentials = sum(n for per in self.keys.values() for n in per.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "kind": self.kind,
            "store_id": self.store_id,
            "taken_at": self.taken_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "schema_version": self.schema_version,
            "keys": {kr: {str(v): n for v, n in sorted(per.items())} for kr, per in sorted(self.keys.items())},
            "credentials": self.credentials,
            "audit_head": self.audit_head,
            "location": self.location,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise BackupError(f"unknown manifest format {data.get('format')!r}")
            return cls(
                name=str(data["name"]),
                store_id=str(data["store_id"]),
                taken_at=datetime.fromisoformat(data["taken_at"]),
                expires_at=datetime.fromisoformat(data["expires_at"]),
                schema_version=int(data["schema_version"]),
                keys={str(kr): {int(v): int(n) for v, n in per.items()} for kr, per in data["keys"].items()},
                audit_head=data.get("audit_head"),
                kind=str(data.get("kind", KIND_COPY)),
                location=str(data.get("location", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackupError(f"backup manifest is malformed ({type(exc).__name__})") from None

    def record(self, registered_at: datetime) -> BackupRecord:
        return BackupRecord(
            name=self.name,
            kind=self.kind,
            taken_at=self.taken_at,
            expires_at=self.expires_at,
            registered_at=registered_at,
            location=self.location,
            manifest=json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")),
        )


def manifest_path(copy: Path) -> Path:
    return copy.with_name(copy.name + MANIFEST_SUFFIX)


def read_manifest(copy: Path) -> Manifest | None:
    path = manifest_path(copy)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BackupError(f"manifest {path} is not a JSON object")
    return Manifest.from_json(data)


def write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only (0600); refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def copy_facts(copy: Path) -> tuple[str | None, int, dict[str, dict[int, int]], str | None]:
    """(store id, schema version, key versions by envelope header, audit head) read from a copy."""
    try:
        with read_file_copy(copy) as tx:
            return tx.get_meta(STORE_ID_META), tx.schema_version(), referenced_versions(tx), tx.get_audit_head()
    except CorruptRecordError:
        raise
    except StoreError as exc:
        raise BackupError(f"{copy} is not a readable nebula-credential store: {exc}") from None


def copy_store(store: Store, dest: Path) -> None:
    """A consistent online copy of a file-backed store into a new 0600 file (:meth:`Store.copy_to`)."""
    write_private(dest, b"")
    try:
        store.copy_to(dest)
    except StoreError as exc:
        _remove(dest)
        raise BackupError(f"could not copy the store to {dest}: {exc}; nothing was registered") from None
    except BaseException:
        _remove(dest)
        raise


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal"),
              path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            p.unlink()


def _live_versions(tx: StoreTx, keyring: str) -> dict[int, int]:
    """Every version of a keyring that still has material, locked against a concurrent destroy."""
    tx.lock_keyring(keyring)
    return {kv.version: 0 for kv in tx.list_versions(keyring) if kv.status is not KeyStatus.DESTROYED}


def _destroyed_since(tx: StoreTx, keys: dict[str, dict[int, int]]) -> list[str]:
    out = []
    for keyring, per in sorted(keys.items()):
        for version in sorted(per):
            kv = tx.get_version(keyring, version)
            if kv is not None and kv.status is KeyStatus.DESTROYED:
                out.append(f"{keyring}/v{version}")
    return out


# ---- create / register / list / forget ---------------------------------------------
def create_sqlite_backup(vault: Vault, path: str | os.PathLike[str], *, keep: timedelta,
                         name: str | None = None) -> Manifest:
    """Copy a SQLite store to ``path`` (0600), write its manifest beside it, register it.

    Every version that still has material is held *before* the copy starts,
    so nothing the copy may need can be destroyed while it is made; the
    registration is then narrowed to the versions the copy's rows really
    need.  A failure removes the partial copy and the provisional hold.
    """
    store = vault.store
    source = store.database_file()
    if source is None:
        raise BackupError(
            "backup create copies a SQLite store; for PostgreSQL take the copy with pg_dump or "
            "point-in-time recovery and record it with `backup register --label NAME --taken-at TIME`"
        )
    dest = Path(path)
    mpath = manifest_path(dest)
    if dest.exists() or mpath.exists():
        raise BackupError(f"{dest} already exists; refusing to overwrite a backup")
    if not dest.parent.is_dir():
        raise BackupError(f"directory {dest.parent} does not exist")
    if dest.resolve() == source.resolve():
        raise BackupError("the backup path is the store itself")
    label = name or dest.name
    now = vault.clock()
    expires = now + keep
    with store.transaction() as tx:
        _check_new_name(tx, label)
        sid = ensure_store_id(tx)
        provisional = {kr: _live_versions(tx, kr) for kr in tx.keyrings()}
        hold = Manifest(label, sid, now, expires, 0, provisional, None, KIND_COPY, str(dest.resolve()))
        tx.put_backup(hold.record(now), provisional)
    try:
        copy_store(store, dest)
        copy_sid, schema, keys, head = copy_facts(dest)
        manifest = Manifest(label, copy_sid or sid, now, expires, schema, keys, head, KIND_COPY,
                            str(dest.resolve()))
        write_private(mpath, json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n")
        with store.transaction() as tx:
            for kr in sorted(keys):
                tx.lock_keyring(kr)
            lost = _destroyed_since(tx, keys)
            if lost:  # cannot happen while the provisional hold stands; refuse rather than trust it
                raise BackupError(f"key versions {', '.join(lost)} were destroyed while the copy was made")
            tx.put_backup(manifest.record(vault.clock()), keys)
            vault.audit.record(tx, "backup.create", backup=label, kind=KIND_COPY,
                               expires_at=expires, credentials=manifest.credentials,
                               versions=_version_list(keys), audit_head_seq=_head_seq(head))
    except BaseException:
        _remove(dest)
        with contextlib.suppress(OSError):
            mpath.unlink()
        with contextlib.suppress(Exception), store.transaction() as tx:
            tx.delete_backup(label)
        raise
    return manifest


def register_backup(vault: Vault, label: str, *, taken_at: datetime, keep: timedelta,
                    location: str = "") -> Manifest:
    """Record a copy taken outside this tool (pg_dump, PITR) at ``taken_at``.

    The rows of such a copy are not readable here, so the hold is
    conservative: every version created at or before ``taken_at`` that
    still has material, with today's credential counts for information.
    """
    now = vault.clock()
    if taken_at > now:
        raise BackupError(f"--taken-at {taken_at.isoformat()} is in the future")
    if taken_at + keep <= now:
        raise BackupError("that backup would already have expired; choose a longer --keep")
    with vault.store.transaction() as tx:
        _check_new_name(tx, label)
        sid = ensure_store_id(tx)
        live = referenced_versions(tx)
        keys: dict[str, dict[int, int]] = {}
        for kr in tx.keyrings():
            tx.lock_keyring(kr)  # serialise with a destroy: it sees this hold, or we see it destroyed
            for kv in tx.list_versions(kr):
                if kv.created_at <= taken_at and kv.status is not KeyStatus.DESTROYED:
                    keys.setdefault(kr, {})[kv.version] = live.get(kr, {}).get(kv.version, 0)
        manifest = Manifest(label, sid, taken_at, taken_at + keep, tx.schema_version(), keys,
                            tx.get_audit_head(), KIND_REGISTERED, location)
        tx.put_backup(manifest.record(now), keys)
        vault.audit.record(tx, "backup.register", backup=label, kind=KIND_REGISTERED,
                           taken_at=taken_at, expires_at=manifest.expires_at,
                           versions=_version_list(keys))
    return manifest


def list_backups(store: Store) -> list[BackupRecord]:
    with store.read() as tx:
        return tx.list_backups()


def backup_versions(store: Store, name: str) -> dict[str, dict[int, int]]:
    with store.read() as tx:
        return tx.backup_versions(name)


def forget_backup(vault: Vault, name: str) -> BackupRecord:
    """Drop a registration: the versions it held follow normal retention again."""
    with vault.store.transaction() as tx:
        record = next((b for b in tx.list_backups() if b.name == name), None)
        if record is None:
            raise BackupError(f"no registered backup named {name!r} (see `backup list`)")
        tx.delete_backup(name)
        vault.audit.record(tx, "backup.forget", backup=name, expired=record.expires_at <= vault.clock())
    return record


def _check_new_name(tx: StoreTx, label: str) -> None:
    if not label or len(label) > 200 or printable(label) != label:
        raise BackupError("a backup name must be 1..200 printable characters (no control characters)")
    if any(b.name == label for b in tx.list_backups()):
        raise BackupError(f"a backup named {label!r} is already registered; choose another name "
                          f"or `backup forget {label}`")


def _version_list(keys: dict[str, dict[int, int]]) -> list[str]:
    return [f"{kr}/v{v}" for kr, per in sorted(keys.items()) for v in sorted(per)]


def _head_seq(head: str | None) -> int:
    seq = (head or "0:").partition(":")[0]
    return int(seq) if seq.isdigit() else 0
