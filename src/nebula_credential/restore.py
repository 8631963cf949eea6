"""Check a SQLite backup, and restore it into a new store only once it checks out.

The checks (``backup verify``; ``backup restore`` runs them first):

* the copy is a nebula-credential store whose schema this library knows,
  and its schema is *exactly* the one the migrations create at its version
  (:mod:`nebula_credential.backup_schema`): no trigger, view, table or
  index more or different -- a backup is data, never code;
* the current root of trust opens it (its audit key unwraps) and its
  audit chain verifies, head included;
* the manifest beside it names the same store, audit head, schema
  version and credentials per key version, and its MAC (under a key
  derived from the copy's audit key, which only the root of trust opens)
  checks out; a missing, unsigned or edited manifest -- or a copy whose
  store id differs from it -- is refused unless the operator passes
  ``accept_unauthenticated`` (then the copy's identity is not trusted: the
  destroyed-since check below runs against the live store whatever store
  id the copy claims);
* every key version a row needs -- by envelope header -- exists in the
  copy with material, and its DEK opens under the current root of trust;
* no such version was destroyed in the live store since: destruction is a
  promise that the key is gone, so a copy that would bring it back is
  refused, naming the versions and how many credentials they hold.

Checks run on a private working copy, never on the backup file itself, and
a restore replaces nothing until they pass (and never a live store without
``replace``; the old file is then kept beside it).  The working copy is
made in a private (0700) folder inside the target's folder, which is
checked first like a backup folder, and moved into place relative to that
folder's descriptor: never re-opened by a path another user could swap.

Before anything is replaced, restore says what comes back
(:class:`Changes`): tokens (by accessor) and backup holds that differ
between the copy and the live store.  Tokens the copy has and the live
store does not were revoked (or expired and tidied) since the copy was
made: they are deleted from the restored store, so a revocation survives a
restore (docs/backups.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._files import open_regular
from .audit import unregistered_line
from .backup_schema import schema_differences
from .backups import (
    Manifest,
    checked_folder,
    copy_facts,
    manifest_authentic,
    manifest_key,
    read_manifest,
    write_private,
)
from .config import KeyManagementConfig
from .exceptions import BackupError, NebulaCredentialError
from .holds import STORE_ID_META
from .models import KeyStatus
from .names import printable
from .providers import open_provider
from .providers.base import WrapContext
from .store import SCHEMA_VERSION, Store, StoreTx
from .store.sqlite import path_from_url

if TYPE_CHECKING:
    from .vault import Vault


@dataclass(slots=True)
class VerifyReport:
    path: str
    ok: bool = True
    store_id: str | None = None
    schema_version: int = 0
    credentials: int = 0
    audit_events: int = 0
    #: credentials of the copy read back (every one, once the keys check out)
    decrypted: int = 0
    keys: dict[str, dict[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: versions destroyed in the live store since the copy, as "keyring/vN" -> credentials lost
    destroyed_since: dict[str, int] = field(default_factory=dict)
    #: whether the manifest's MAC proved the copy's store id, head, versions and counts
    authenticated: bool = False
    #: what a restore brings back or drops compared with the live store (None: nothing compared)
    changes: Changes | None = None
    #: the copy's own provisional registration with no audit event (older versions); restore records it
    unaudited_holds: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "store_id": self.store_id,
            "schema_version": self.schema_version,
            "credentials": self.credentials,
            "audit_events": self.audit_events,
            "decrypted": self.decrypted,
            "keys": {kr: {str(v): n for v, n in sorted(per.items())} for kr, per in sorted(self.keys.items())},
            "destroyed_since": self.destroyed_since,
            "authenticated": self.authenticated,
            "changes": self.changes.to_json() if self.changes is not None else None,
            "problems": self.problems,
            "warnings": self.warnings,
        }


@dataclass(slots=True)
class Changes:
    """What differs between a copy and the live store, by name (never a secret)."""

    #: accessors the copy has and the live store does not: revoked (or expired) since; not brought back
    tokens_revoked_since: list[str] = field(default_factory=list)
    #: accessors created in the live store after the copy: a restore loses them
    tokens_created_since: list[str] = field(default_factory=list)
    #: accessors in both whose policies, parent or expiry differ: the copy's version comes back
    tokens_changed: list[str] = field(default_factory=list)
    #: backups registered in the live store only: their holds are lost by a restore
    holds_lost: list[str] = field(default_factory=list)
    #: backups registered in the copy only (forgotten since): their holds come back
    holds_back: list[str] = field(default_factory=list)
    #: whether the copy's revoked tokens are deleted from the restored store
    carry_revocations: bool = False

    def any(self) -> bool:
        return bool(self.tokens_revoked_since or self.tokens_created_since or self.tokens_changed
                    or self.holds_lost or self.holds_back)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens_revoked_since": self.tokens_revoked_since,
            "tokens_created_since": self.tokens_created_since,
            "tokens_changed": self.tokens_changed,
            "holds_lost": self.holds_lost,
            "holds_back": self.holds_back,
            "carry_revocations": self.carry_revocations,
        }

    def lines(self) -> list[str]:
        out = []
        if self.tokens_revoked_since:
            what = ("stay revoked (deleted from the restored store)" if self.carry_revocations
                    else "come back")
            out.append(f"  tokens revoked since the copy, which {what}: " + ", ".join(self.tokens_revoked_since))
        if self.tokens_created_since:
            out.append("  tokens created since the copy, lost by the restore: " + ", ".join(self.tokens_created_since))
        if self.tokens_changed:
            out.append("  tokens whose policies or expiry come back as the copy has them: "
                       + ", ".join(self.tokens_changed))
        if self.holds_lost:
            out.append("  backup holds registered since the copy, lost by the restore: " + ", ".join(self.holds_lost))
        if self.holds_back:
            out.append("  backup holds forgotten since the copy, which come back: " + ", ".join(self.holds_back))
        return out


def _working_copy(backup: Path, dest: Path) -> None:
    """Byte copy of the backup into a new 0600 file (the checks may migrate it); never blocks on a FIFO."""
    write_private(dest, b"")
    with os.fdopen(open_regular(backup, os.O_RDONLY, "backup"), "rb") as src, open(dest, "r+b") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _open_copy(work: Path, config: KeyManagementConfig, key_dir: Path | None) -> Vault:
    """The working copy under the process's own root of trust.

    ``key_dir`` is where a local key file with no configured path is looked
    for: beside the store the copy belongs to (or will become), never beside
    the temporary working copy.
    """
    from .opening import open as open_vault

    provider = open_provider(config.provider, base_dir=key_dir)
    return open_vault(f"sqlite:///{work}", config=config, provider=provider)


def _facts(work: Path, backup: Path) -> tuple[str | None, int, dict[str, dict[int, int]], str | None]:
    """:func:`copy_facts` of the working copy; an error names the backup, never the temporary file."""
    try:
        return copy_facts(work)
    except BackupError as exc:
        raise BackupError(str(exc).replace(str(work), str(backup))) from None


def _check(report: VerifyReport, work: Path, config: KeyManagementConfig, live: Store | None,
           key_dir: Path | None, accept_unauthenticated: bool = False) -> None:
    backup = Path(report.path)
    # first of all, before the copy is opened as a store: its schema is data, never code
    _, extra = schema_differences(work, label=str(backup))
    if extra:
        report.fail("the copy's schema is not one this project creates (a backup is data, never code): "
                    + "; ".join(extra))
        return
    sid, schema, keys, head = _facts(work, backup)
    report.store_id, report.schema_version, report.keys = sid, schema, keys
    report.credentials = sum(n for per in keys.values() for n in per.values())
    if schema < 1:
        report.fail("the copy has no nebula-credential schema")
        return
    if schema > SCHEMA_VERSION:
        report.fail(f"the copy's schema version {schema} is newer than this library ({SCHEMA_VERSION})")
        return
    #: what makes the copy's identity unproven; refused unless the operator accepts it
    unproven: list[str] = []
    manifest = read_manifest(backup)
    if manifest is None:
        unproven.append("no manifest beside the copy: its store id, audit head, versions and counts are unproven")
    else:
        if sid is not None and manifest.store_id != sid:
            unproven.append(f"the manifest names store {manifest.store_id}, the copy is store {sid}")
        if manifest.audit_head != head:
            report.fail("the copy's audit head differs from the one its manifest recorded")
        _compare_manifest(report, manifest, schema, keys)
    try:
        vault = _open_copy(work, config, key_dir)
    except NebulaCredentialError as exc:
        report.fail(f"the current root of trust cannot open the copy: {exc}")
        return
    try:
        if manifest is not None:
            with vault.store.read() as tx:
                key = manifest_key(vault.provider, tx)
            if manifest.mac is None:
                unproven.append("the manifest carries no MAC (made before manifests were signed?)")
            elif not manifest_authentic(key, manifest):
                unproven.append("the manifest's MAC does not check out under the copy's key: "
                                "the manifest was edited, or belongs to another store")
        report.authenticated = not unproven
        for what in unproven:
            if accept_unauthenticated:
                report.warnings.append(f"accepted unauthenticated copy: {what}")
            else:
                report.fail(f"{what}; refused (pass --accept-unauthenticated to accept a copy whose "
                            "identity cannot be proven)")
        result = vault.audit.verify()
        report.audit_events = result.events
        unexplained = list(result.unexplained)
        if not result.ok and unexplained:
            unexplained = _own_provisional_hold(report, vault, unexplained)
        if not result.ok and (unexplained or not result.unexplained):
            report.fail(f"audit chain broken at event {result.first_bad_seq} of {result.events}"
                        + (": " + "; ".join(unexplained[:5]) if unexplained else ""))
        with vault.store.read() as tx:
            versions = {kr: {kv.version: kv for kv in tx.list_versions(kr)} for kr in keys}
        for kr, per in sorted(keys.items()):
            for version, count in sorted(per.items()):
                kv = versions[kr].get(version)
                where = f"{kr}/v{version} ({count} credential(s))"
                if version < 0 or kv is None:
                    report.fail(f"{where}: no such key version in the copy")
                elif kv.status is KeyStatus.DESTROYED or kv.wrapped_key is None:
                    report.fail(f"{where}: destroyed before the copy was made")
                else:
                    if kv.status is KeyStatus.REVOKED:
                        report.warnings.append(f"{where}: revoked; `keys reinstate {version}` after restore")
                    try:
                        vault.provider.open_dek(kv.wrapped_key, WrapContext(kr, version))
                    except NebulaCredentialError as exc:
                        report.fail(f"{where}: the current root of trust cannot open its key: {exc}")
        if report.ok:
            _decrypt_every_row(report, vault)
        if live is not None:
            with vault.store.read() as copy_tx, live.read() as live_tx:
                same = live_tx.get_meta(STORE_ID_META) is not None and live_tx.get_meta(STORE_ID_META) == sid
                report.changes = _changes(copy_tx, live_tx, carry=same or not report.authenticated)
    finally:
        vault.close()
    if live is None:
        report.warnings.append("no live store to compare with; destroyed-since check skipped")
        return
    with live.read() as tx:
        live_sid = tx.get_meta(STORE_ID_META)
        if report.authenticated and (live_sid is None or live_sid != sid):
            report.warnings.append("the live store is another store; destroyed-since check skipped")
            return
        # an unauthenticated copy's store id proves nothing: compare with the live store whatever it claims
        for kr, per in sorted(keys.items()):
            for version, count in sorted(per.items()):
                kv = tx.get_version(kr, version)
                if kv is not None and kv.status is KeyStatus.DESTROYED:
                    report.destroyed_since[f"{kr}/v{version}"] = count
    if report.destroyed_since:
        names = ", ".join(report.destroyed_since)
        lost = sum(report.destroyed_since.values())
        report.fail(
            f"key version(s) {names} were destroyed in the live store since this copy was made; "
            f"restoring would bring destroyed keys back, and {lost} credential(s) of the copy are under them"
        )


def _own_provisional_hold(report: VerifyReport, vault: Vault, unexplained: list[str]) -> list[str]:
    """Tolerate the one unexplained registry row a copy made before holds were audited carries.

    ``backup create`` registers a provisional hold (schema version 0 in its
    record) just before it copies, so every copy holds its own; older
    versions wrote no event for it.  Any other unexplained line stays.
    """
    with vault.store.read() as tx:
        provisional = {b.name for b in tx.list_backups() if '"schema_version":0' in b.manifest}
    own = {unregistered_line(n): n for n in provisional}
    tolerated = [u for u in unexplained if u in own]
    report.unaudited_holds = sorted(own[u] for u in tolerated)
    if tolerated:
        report.warnings.append("the copy holds its own provisional backup registration with no audit event "
                               "(made by a version before holds were audited)")
    return [u for u in unexplained if u not in own]


def _changes(copy: StoreTx, live: StoreTx, *, carry: bool) -> Changes:
    """Tokens (by accessor) and backup holds that differ between the copy and the live store."""
    mine = {t.accessor: t for t in copy.token_list()}
    theirs = {t.accessor: t for t in live.token_list()}

    def access(t: Any) -> tuple[Any, ...]:
        return (t.parent, tuple(sorted(t.policies)), t.expires_at, t.max_expires_at, t.ttl, t.renewable)

    held = {b.name for b in copy.list_backups()}
    live_held = {b.name for b in live.list_backups()}
    return Changes(
        tokens_revoked_since=sorted(set(mine) - set(theirs)),
        tokens_created_since=sorted(set(theirs) - set(mine)),
        tokens_changed=sorted(a for a in set(mine) & set(theirs) if access(mine[a]) != access(theirs[a])),
        holds_lost=sorted(printable(n) for n in live_held - held),
        holds_back=sorted(printable(n) for n in held - live_held),
        carry_revocations=carry,
    )


def _compare_manifest(report: VerifyReport, manifest: Manifest, schema: int,
                      keys: dict[str, dict[int, int]]) -> None:
    """What the manifest recorded at backup time must be what the copy holds now."""
    if manifest.schema_version != schema:
        report.fail(f"the manifest records schema version {manifest.schema_version}, the copy has {schema}")
    if manifest.keys != keys:
        def show(k: dict[str, dict[int, int]]) -> str:
            return ", ".join(f"{kr}/v{v}: {n}" for kr, per in sorted(k.items()) for v, n in sorted(per.items())) \
                or "none"
        report.fail(f"the manifest records credentials per key version {show(manifest.keys)}, "
                    f"the copy has {show(keys)}")


def _decrypt_every_row(report: VerifyReport, vault: Vault) -> None:
    """Read every credential of the copy back (ids of the first few failures are named)."""
    bad: list[str] = []
    for kr in sorted(report.keys):
        ring = vault.keyring(kr)
        for row in ring.list():
            try:
                ring.decrypt_row(row)
                report.decrypted += 1
            except NebulaCredentialError:
                bad.append(f"{kr}/{row.id}")
        for row in ring.past_versions():  # version history: every past version's envelope too
            try:
                ring.decrypt_row(row)
                report.decrypted += 1
            except NebulaCredentialError:
                bad.append(f"{kr}/{row.id}#v{row.revision}")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        report.fail(f"{len(bad)} credential(s) of the copy do not decrypt: {shown}")


def verify_backup(path: str | os.PathLike[str], *, config: KeyManagementConfig | None = None,
                  live: Store | None = None, key_dir: Path | None = None,
                  accept_unauthenticated: bool = False) -> VerifyReport:
    """Every restore check on a private working copy; the backup file is only read.

    ``key_dir``: where a local root key file is found when the config names
    none (default: beside ``live``, else beside the backup).
    ``accept_unauthenticated``: accept a copy whose manifest is missing,
    unsigned or edited (its identity is then not trusted).
    """
    backup = Path(path)
    if not backup.is_file():
        raise BackupError(f"backup {backup} not found")
    report = VerifyReport(str(backup))
    with tempfile.TemporaryDirectory(prefix="nc-verify-") as tmp:
        work = Path(tmp) / "copy.db"
        _working_copy(backup, work)
        _check(report, work, config or KeyManagementConfig(), live,
               key_dir or (live.directory() if live is not None else None) or backup.resolve().parent,
               accept_unauthenticated)
    return report


def restore_backup(path: str | os.PathLike[str], to_url: str, *, config: KeyManagementConfig | None = None,
                   live: Store | None = None, replace: bool = False,
                   now: datetime | None = None, accept_unauthenticated: bool = False,
                   before_replace: Callable[[VerifyReport], None] | None = None,
                   ) -> tuple[VerifyReport, str | None]:
    """Verify, then move the checked copy into place; returns (report, where the old store went).

    The target must be a new SQLite file unless ``replace``; a replaced
    store is checkpointed and kept as ``<target>.replaced-<time>``.  A local
    root key file the config does not name is looked for beside the target,
    where the restored store will look for it too.  ``before_replace`` is
    called with the checked report (its :class:`Changes` included) before
    anything is replaced, to say what comes back.
    """
    config = config or KeyManagementConfig()
    if not to_url.startswith("sqlite:"):
        raise BackupError("backup restore writes a SQLite store (--to sqlite:///path/to.db)")
    target = Path(path_from_url(to_url))
    if str(target) == ":memory:":
        raise BackupError("restore into a file, not :memory:")
    backup = Path(path)
    if not backup.is_file():
        raise BackupError(f"backup {backup} not found")
    if os.path.lexists(target) and not replace:
        raise BackupError(f"{target} already exists; restore into a new store, or pass --replace "
                          "(the current file is kept beside it)")
    folder = target.parent
    dir_fd = checked_folder(folder, "restore target")
    report = VerifyReport(str(backup))
    private = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=folder))  # 0700, ours
    work = private / "store.db"
    try:
        _working_copy(backup, work)
        key_dir = target.resolve().parent
        _check(report, work, config, live, key_dir, accept_unauthenticated)
        if not report.ok:
            raise BackupError(printable("backup failed verification, nothing was restored: "
                                        + "; ".join(report.problems)))
        if before_replace is not None:
            before_replace(report)
        _record_restore(work, config, key_dir, backup, report)
        _single_file(work)
        if live is not None and Path(getattr(live, "path", "")).resolve() == target.resolve():
            live.close()  # our own connection to the store being replaced must not hold it open
        kept = _set_aside(target, now, dir_fd) if os.path.lexists(target) else None
        tmp_fd = os.open(private, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:  # renameat: the names are resolved in the two folders' descriptors, never by path again
            os.rename(work.name, target.name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(tmp_fd)
    finally:
        for p in private.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        with contextlib.suppress(OSError):
            private.rmdir()
        os.close(dir_fd)
    return report, kept


def _record_restore(work: Path, config: KeyManagementConfig, key_dir: Path, backup: Path,
                    report: VerifyReport) -> None:
    """The restore's audit event, and the live store's revocations carried over, in one transaction."""
    vault = _open_copy(work, config, key_dir)
    changes = report.changes
    carried = changes.tokens_revoked_since if changes is not None and changes.carry_revocations else []
    try:
        with vault.store.transaction() as tx:
            if carried:
                tx.token_delete(carried)
            for name in report.unaudited_holds:  # explain it now, so the restored store's chain verifies
                held = tx.backup_versions(name)
                vault.audit.record(tx, "backup.hold", backup=name, adopted_by_restore=True,
                                   versions=[f"{kr}/v{v}" for kr, per in sorted(held.items()) for v in sorted(per)])
            vault.audit.record(tx, "backup.restore", source=str(backup), credentials=report.credentials,
                               versions=[f"{kr}/v{v}" for kr, per in sorted(report.keys.items()) for v in per],
                               authenticated=report.authenticated, revocations_carried=carried)
    finally:
        vault.close()


def _single_file(db: Path) -> None:
    """Fold the WAL back in, so the file moved into place is the whole store."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def _set_aside(target: Path, now: datetime | None, dir_fd: int) -> str:
    """Checkpoint the store being replaced and rename it; returns its new path."""
    try:
        _single_file(target)
    except sqlite3.OperationalError as exc:
        raise BackupError(f"{target} is in use ({exc}); stop every process using it, then restore "
                          "again; nothing was replaced") from None
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%dT%H%M%S")
    aside = target.with_name(f"{target.name}.replaced-{stamp}")
    if os.path.lexists(aside):
        raise BackupError(f"{aside} already exists; move it away first")
    os.rename(target.name, aside.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return str(aside)


def report_lines(report: VerifyReport) -> list[str]:
    """The human rendering shared by ``backup verify`` and ``backup restore``."""
    lines = [
        f"{'ok' if report.ok else 'FAILED'}: {report.path} (store {report.store_id}, schema "
        f"{report.schema_version}, {report.credentials} credential(s), {report.decrypted} read back, "
        f"{report.audit_events} audit event(s))"
    ]
    for kr, per in sorted(report.keys.items()):
        lines.append(f"  keyring {kr}: " + ", ".join(f"v{v}: {n}" for v, n in sorted(per.items())))
    if report.changes is not None:
        lines += report.changes.lines()
    lines += [f"  problem: {p}" for p in report.problems]
    lines += [f"  warning: {w}" for w in report.warnings]
    return lines

