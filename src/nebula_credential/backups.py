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

Files are created safely in a folder other users may reach: the folder is
checked first (ours or root's, not writable by group or others unless
sticky and ours) and then used only through a descriptor; SQLite writes
the copy into a private (0700) folder inside it, and the finished copy is
linked into place relative to the checked folder (``linkat``, which never
replaces a name nor follows a link) -- never re-opened by a path another
user could swap for a symbolic link.

The manifest is authenticated: a MAC under a key derived (HKDF, its own
label) from the store's audit key, which only the root of trust unwraps,
binds everything it records -- store id, audit head, schema version,
versions and counts.  A database or backup-folder writer can edit the
manifest or the copy's store id, but not make them agree with a MAC.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._files import create_exclusive, folder_problem, open_folder, same_file
from .audit import AUDIT_KEY_CONTEXT, AUDIT_KEY_META
from .exceptions import BackupError, CorruptRecordError, StoreError
from .holds import STORE_ID_META, ensure_store_id, referenced_versions
from .models import KeyStatus
from .names import printable
from .store import BackupRecord, Store, StoreTx, read_file_copy

if TYPE_CHECKING:
    from .providers import KeyProvider
    from .vault import Vault

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
KIND_COPY = "sqlite-copy"
KIND_REGISTERED = "registered"
#: HKDF label of the manifest key (derived from the audit key; no other use of it shares the label)
MANIFEST_KEY_INFO = b"nebula-credential backup manifest mac v1"


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
    #: hex HMAC-SHA256 over every other field (:func:`manifest_mac`); None on registered backups
    mac: str | None = None
    credentials: int = field(init=False)

    def __post_init__(self) -> None:
        self.credentials = sum(n for per in self.keys.values() for n in per.values())

    def to_json(self) -> dict[str, Any]:
        out = self.body()
        if self.mac is not None:
            out["mac"] = self.mac
        return out

    def body(self) -> dict[str, Any]:
        """Everything the manifest records except its MAC: what the MAC binds."""
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
                mac=str(data["mac"]) if data.get("mac") is not None else None,
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


def manifest_key(provider: KeyProvider, tx: StoreTx) -> bytes:
    """The store's manifest key: HKDF of its audit key (root-wrapped), under a label of its own."""
    raw = tx.get_meta(AUDIT_KEY_META)
    if raw is None:
        raise BackupError("the store has no audit key to authenticate a backup manifest with")
    with provider.unwrap(bytes.fromhex(raw), AUDIT_KEY_CONTEXT) as audit_key:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MANIFEST_KEY_INFO).derive(
            bytes(audit_key.buffer))


def manifest_mac(key: bytes, manifest: Manifest) -> str:
    """HMAC-SHA256 over the manifest's canonical JSON (every field but the MAC)."""
    body = json.dumps(manifest.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def manifest_authentic(key: bytes, manifest: Manifest) -> bool:
    return manifest.mac is not None and hmac.compare_digest(manifest_mac(key, manifest), manifest.mac)


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def checked_folder(folder: Path, what: str) -> int:
    """A descriptor on ``folder`` once it is safe to create private files in (:func:`folder_problem`)."""
    if not folder.is_dir():
        raise BackupError(f"directory {folder} does not exist")
    fd = open_folder(folder)
    problem = folder_problem(fd)
    if problem is not None:
        os.close(fd)
        raise BackupError(
            f"refusing the {what} folder {folder}: {problem}; another user could swap a file in it for a "
            "symbolic link while it is written. Use a folder only you can write (e.g. chmod go-w)")
    return fd


def write_new(dir_fd: int, name: str, data: bytes) -> None:
    """A new 0600 file ``name`` in the checked folder ``dir_fd`` (O_EXCL|O_NOFOLLOW), synced."""
    try:
        fd = create_exclusive(dir_fd, name)
    except FileExistsError:
        raise BackupError(f"{name} already exists; refusing to overwrite it or to write through a link") from None
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fd)
        if not same_file(dir_fd, name, fd):
            raise BackupError(f"{name} was replaced while it was written; refusing it")
    except BaseException:
        _unlink_if_ours(dir_fd, name, fd)
        raise
    finally:
        os.close(fd)


def _unlink_if_ours(dir_fd: int, name: str, fd: int) -> None:
    if same_file(dir_fd, name, fd):
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def _place(tmp_fd: int, private: str, dir_fd: int, name: str) -> None:
    """Put the finished copy ``private`` (in the private folder ``tmp_fd``) into the checked folder as ``name``.

    ``linkat`` creates the name only if it is free and never follows a
    link; where a file system has no hard links the bytes are copied
    through a descriptor opened O_EXCL|O_NOFOLLOW.  Either way the name is
    then checked to be that very file.
    """
    src_fd = os.open(private, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                     dir_fd=tmp_fd)
    try:
        try:
            os.link(private, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            placed = same_file(dir_fd, name, src_fd)
        except FileExistsError:
            raise BackupError(f"{name} already exists; refusing to overwrite a backup") from None
        except OSError:  # no hard links here (some network and FUSE file systems): copy the bytes
            placed = _copy_through_fd(src_fd, dir_fd, name)
        if not placed:
            raise BackupError(f"{name} was replaced while the backup was written; refusing it")
    finally:
        os.close(src_fd)


def _copy_through_fd(src_fd: int, dir_fd: int, name: str) -> bool:
    try:
        fd = create_exclusive(dir_fd, name)
    except FileExistsError:
        raise BackupError(f"{name} already exists; refusing to overwrite a backup") from None
    try:
        with os.fdopen(os.dup(src_fd), "rb") as src, os.fdopen(fd, "wb", closefd=False) as dst:
            src.seek(0)
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
        os.fsync(fd)
        return same_file(dir_fd, name, fd)
    except BaseException:
        _unlink_if_ours(dir_fd, name, fd)
        raise
    finally:
        os.close(fd)


def copy_facts(copy: Path) -> tuple[str | None, int, dict[str, dict[int, int]], str | None]:
    """(store id, schema version, key versions by envelope header, audit head) read from a copy."""
    try:
        with read_file_copy(copy) as tx:
            return tx.get_meta(STORE_ID_META), tx.schema_version(), referenced_versions(tx), tx.get_audit_head()
    except CorruptRecordError:
        raise
    except StoreError as exc:
        raise BackupError(f"{copy} is not a readable nebula-credential store: {exc}") from None


def copy_store(store: Store, dir_fd: int, folder: Path, name: str) -> Path:
    """A consistent online copy of a file-backed store, placed as ``name`` in the checked folder.

    SQLite writes it (:meth:`Store.copy_to`) into a private 0700 folder made
    inside ``folder``; the finished file is linked into place through
    ``dir_fd`` (:func:`_place`).  Returns the private copy, which the caller
    reads its facts from and removes with its folder.
    """
    private = Path(tempfile.mkdtemp(prefix=".nc-backup-", dir=folder))
    snap = private / "copy.db"
    tmp_fd = open_folder(private)
    try:
        try:
            write_private(snap, b"")  # 0600 from the start: the placed file is this very inode
            store.copy_to(snap)
        except StoreError as exc:
            raise BackupError(f"could not copy the store to {folder / name}: {exc}; nothing was registered") from None
        _place(tmp_fd, snap.name, dir_fd, name)
    except BaseException:
        _remove_private(private)
        raise
    finally:
        os.close(tmp_fd)
    return snap


def _remove_private(private: Path) -> None:
    """Remove the private folder a copy was made in (ours, 0700: no one else can put links in it)."""
    for p in private.iterdir() if private.is_dir() else ():
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        private.rmdir()


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
    folder = dest.parent
    dir_fd = checked_folder(folder, "backup")
    try:
        return _create_in(vault, source, dir_fd, folder, dest.name, mpath.name, keep=keep, name=name)
    finally:
        os.close(dir_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _create_in(vault: Vault, source: Path, dir_fd: int, folder: Path, dname: str, mname: str, *,
               keep: timedelta, name: str | None) -> Manifest:
    store = vault.store
    if _exists(dir_fd, dname) or _exists(dir_fd, mname):
        raise BackupError(f"{folder / dname} already exists (or its manifest does); refusing to overwrite "
                          "a backup or to write through a link")
    location = str(folder.resolve() / dname)
    if location == str(source.resolve()):
        raise BackupError("the backup path is the store itself")
    label = name or dname
    now = vault.clock()
    expires = now + keep
    with store.transaction() as tx:
        _check_new_name(tx, label)
        sid = ensure_store_id(tx)
        provisional = {kr: _live_versions(tx, kr) for kr in tx.keyrings()}
        hold = Manifest(label, sid, now, expires, 0, provisional, None, KIND_COPY, location)
        tx.put_backup(hold.record(now), provisional)
        # the hold is in the registry before the copy exists: the chain must explain it (audit verify)
        vault.audit.record(tx, "backup.hold", backup=label, kind=KIND_COPY, expires_at=expires,
                           versions=_version_list(provisional))
    placed = False
    snap: Path | None = None
    try:
        snap = copy_store(store, dir_fd, folder, dname)
        placed = True
        try:
            copy_sid, schema, keys, head = copy_facts(snap)
        except BackupError as exc:  # name the backup, never the private working file
            raise BackupError(str(exc).replace(str(snap), location)) from None
        manifest = Manifest(label, copy_sid or sid, now, expires, schema, keys, head, KIND_COPY, location)
        with store.read() as tx:
            manifest.mac = manifest_mac(manifest_key(vault.provider, tx), manifest)
        write_new(dir_fd, mname, json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n")
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
        if placed:
            for n in (dname, mname):
                with contextlib.suppress(OSError):
                    os.unlink(n, dir_fd=dir_fd)  # the folder is checked: no one else renames in it
        with contextlib.suppress(Exception), store.transaction() as tx:
            if any(b.name == label for b in tx.list_backups()):
                tx.delete_backup(label)
                vault.audit.record(tx, "backup.forget", backup=label, reason="backup create failed")
        raise
    finally:
        if snap is not None:
            _remove_private(snap.parent)
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


def registered_backups(vault: Vault) -> list[tuple[BackupRecord, dict[str, dict[int, int]]]]:
    """Every registered backup with the key versions it holds (keyring -> version -> credentials),
    read in one transaction so the list and the holds agree."""
    with vault.store.read() as tx:
        return [(b, tx.backup_versions(b.name)) for b in tx.list_backups()]


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
