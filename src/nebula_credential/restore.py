"""Check a SQLite backup, and restore it into a new store only once it checks out.

The checks (``backup verify``; ``backup restore`` runs them first):

* the copy is a nebula-credential store whose schema this library knows;
* the current root of trust opens it (its audit key unwraps) and its
  audit chain verifies, head included;
* the manifest beside it, if any, names the same store and audit head;
* every key version a row needs -- by envelope header -- exists in the
  copy with material, and its DEK opens under the current root of trust;
* no such version was destroyed in the live store since: destruction is a
  promise that the key is gone, so a copy that would bring it back is
  refused, naming the versions and how many credentials they hold.

Checks run on a private working copy, never on the backup file itself, and
a restore replaces nothing until they pass (and never a live store without
``replace``; the old file is then kept beside it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backups import copy_facts, read_manifest, write_private
from .config import KeyManagementConfig
from .exceptions import BackupError, NebulaCredentialError
from .holds import STORE_ID_META
from .models import KeyStatus
from .providers import open_provider
from .providers.base import WrapContext
from .store import SCHEMA_VERSION, Store
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
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _working_copy(backup: Path, dest: Path) -> None:
    """Byte copy of the backup into a new 0600 file (the checks may migrate it)."""
    write_private(dest, b"")
    with open(backup, "rb") as src, open(dest, "wb") as dst:
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


def _check(report: VerifyReport, work: Path, config: KeyManagementConfig, live: Store | None,
           key_dir: Path | None) -> None:
    backup = Path(report.path)
    sid, schema, keys, head = copy_facts(work)
    report.store_id, report.schema_version, report.keys = sid, schema, keys
    report.credentials = sum(n for per in keys.values() for n in per.values())
    if schema < 1:
        report.fail("the copy has no nebula-credential schema")
        return
    if schema > SCHEMA_VERSION:
        report.fail(f"the copy's schema version {schema} is newer than this library ({SCHEMA_VERSION})")
        return
    manifest = read_manifest(backup)
    if manifest is None:
        report.warnings.append("no manifest beside the copy; checked the copy alone")
    else:
        if sid is not None and manifest.store_id != sid:
            report.fail(f"the manifest names store {manifest.store_id}, the copy is store {sid}")
        if manifest.audit_head != head:
            report.fail("the copy's audit head differs from the one its manifest recorded")
    try:
        vault = _open_copy(work, config, key_dir)
    except NebulaCredentialError as exc:
        report.fail(f"the current root of trust cannot open the copy: {exc}")
        return
    try:
        result = vault.audit.verify()
        report.audit_events = result.events
        if not result.ok:
            report.fail(f"audit chain broken at event {result.first_bad_seq} of {result.events}")
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
    finally:
        vault.close()
    if live is None:
        report.warnings.append("no live store to compare with; destroyed-since check skipped")
        return
    with live.read() as tx:
        live_sid = tx.get_meta(STORE_ID_META)
        if live_sid is None or live_sid != sid:
            report.warnings.append("the live store is another store; destroyed-since check skipped")
            return
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
                  live: Store | None = None, key_dir: Path | None = None) -> VerifyReport:
    """Every restore check on a private working copy; the backup file is only read.

    ``key_dir``: where a local root key file is found when the config names
    none (default: beside ``live``, else beside the backup).
    """
    backup = Path(path)
    if not backup.is_file():
        raise BackupError(f"backup {backup} not found")
    report = VerifyReport(str(backup))
    with tempfile.TemporaryDirectory(prefix="nc-verify-") as tmp:
        work = Path(tmp) / "copy.db"
        _working_copy(backup, work)
        _check(report, work, config or KeyManagementConfig(), live,
               key_dir or (live.directory() if live is not None else None) or backup.resolve().parent)
    return report


def restore_backup(path: str | os.PathLike[str], to_url: str, *, config: KeyManagementConfig | None = None,
                   live: Store | None = None, replace: bool = False,
                   now: datetime | None = None) -> tuple[VerifyReport, str | None]:
    """Verify, then move the checked copy into place; returns (report, where the old store went).

    The target must be a new SQLite file unless ``replace``; a replaced
    store is checkpointed and kept as ``<target>.replaced-<time>``.  A local
    root key file the config does not name is looked for beside the target,
    where the restored store will look for it too.
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
    if target.exists() and not replace:
        raise BackupError(f"{target} already exists; restore into a new store, or pass --replace "
                          "(the current file is kept beside it)")
    if not target.parent.is_dir():
        raise BackupError(f"directory {target.parent} does not exist")
    report = VerifyReport(str(backup))
    work = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    try:
        _working_copy(backup, work)
        key_dir = target.resolve().parent
        _check(report, work, config, live, key_dir)
        if not report.ok:
            raise BackupError("backup failed verification, nothing was restored: " + "; ".join(report.problems))
        _record_restore(work, config, key_dir, backup, report)
        _single_file(work)
        if live is not None and Path(getattr(live, "path", "")).resolve() == target.resolve():
            live.close()  # our own connection to the store being replaced must not hold it open
        kept = _set_aside(target, now) if target.exists() else None
        os.replace(work, target)
    finally:
        for p in (work, work.with_name(work.name + "-wal"), work.with_name(work.name + "-shm")):
            with contextlib.suppress(OSError):
                p.unlink()
    return report, kept


def _record_restore(work: Path, config: KeyManagementConfig, key_dir: Path, backup: Path,
                    report: VerifyReport) -> None:
    vault = _open_copy(work, config, key_dir)
    try:
        with vault.store.transaction() as tx:
            vault.audit.record(tx, "backup.restore", source=str(backup), credentials=report.credentials,
                               versions=[f"{kr}/v{v}" for kr, per in sorted(report.keys.items()) for v in per])
    finally:
        vault.close()


def _single_file(db: Path) -> None:
    """Fold the WAL back in, so the file moved into place is the whole store."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def _set_aside(target: Path, now: datetime | None) -> str:
    """Checkpoint the store being replaced and rename it; returns its new path."""
    try:
        _single_file(target)
    except sqlite3.OperationalError as exc:
        raise BackupError(f"{target} is in use ({exc}); stop every process using it, then restore "
                          "again; nothing was replaced") from None
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%dT%H%M%S")
    aside = target.with_name(f"{target.name}.replaced-{stamp}")
    if aside.exists():
        raise BackupError(f"{aside} already exists; move it away first")
    os.replace(target, aside)
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
    lines += [f"  problem: {p}" for p in report.problems]
    lines += [f"  warning: {w}" for w in report.warnings]
    return lines

