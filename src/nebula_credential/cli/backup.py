"""backup create | register | list | forget | verify | restore."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..backups import create_sqlite_backup, forget_backup, register_backup, registered_backups
from ..durations import parse_duration
from ..exceptions import BackupError
from ..names import printable
from ..opening import Store, open_store, path_from_url
from ..restore import VerifyReport, report_lines, restore_backup, verify_backup
from ._common import AppContext, console, emit, err_console, pass_app


@click.group()
def backup() -> None:
    """Backups that retention knows about: create, register, list, verify, restore."""



@backup.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--keep", help="How long the backup holds the key versions it needs (default [backup] keep, 30d).")
@click.option("--name", help="Name to register it under (default: the file name).")
@pass_app
def create(app: AppContext, path: str, keep: str | None, name: str | None) -> None:
    """Copy a SQLite store online (0600), write its manifest beside it, register it."""
    vault = app.vault()
    m = create_sqlite_backup(vault, path, keep=parse_duration(keep, "--keep") if keep else app.config.backup.keep,
                             name=name)
    key_file = vault.provider.describe().get("key_file")
    if key_file and Path(key_file).resolve().parent == Path(path).resolve().parent:
        err_console.print(f"warning: the root key file {key_file} is in the same folder as the backup; "
                          "anyone who gets both can read every credential: keep them apart", markup=False)
    emit(app, m.to_json(), lambda: _print([
        f"backup {m.name}: {m.credentials} credential(s) under "
        + ", ".join(f"{kr}/v{v}" for kr, per in sorted(m.keys.items()) for v in sorted(per))
        + f"; those versions are kept until {m.expires_at:%Y-%m-%d %H:%M} UTC"]))


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected an ISO 8601 time such as 2026-01-31T02:00:00Z, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@backup.command()
@click.option("--label", required=True, help="Name of the backup (e.g. the pg_dump file or PITR label).")
@click.option("--taken-at", help="When the copy was taken (ISO 8601; default now).")
@click.option("--keep", help="How long it holds key versions, from --taken-at (default [backup] keep).")
@click.option("--location", default="", help="Where the copy lives (recorded, never followed).")
@pass_app
def register(app: AppContext, label: str, taken_at: str | None, keep: str | None, location: str) -> None:
    """Record a copy taken outside this tool (pg_dump, PITR) so retention keeps its keys."""
    vault = app.vault()
    when = _parse_time(taken_at) or vault.clock()
    m = register_backup(vault, label, taken_at=when,
                        keep=parse_duration(keep, "--keep") if keep else app.config.backup.keep, location=location)
    emit(app, m.to_json(), lambda: _print([
        f"registered backup {m.name} taken {m.taken_at:%Y-%m-%d %H:%M} UTC; holds "
        + (", ".join(f"{kr}/v{v}" for kr, per in sorted(m.keys.items()) for v in sorted(per)) or "no version")
        + f" until {m.expires_at:%Y-%m-%d %H:%M} UTC"]))


@backup.command(name="list")
@pass_app
def list_(app: AppContext) -> None:
    """Registered backups, their expiry, and the key versions each holds."""
    vault = app.vault()
    now = vault.clock()
    rows: list[dict[str, Any]] = []
    for b, versions in registered_backups(vault):
        rows.append({
            "name": b.name, "kind": b.kind, "taken_at": b.taken_at.isoformat(),
            "expires_at": b.expires_at.isoformat(), "expired": b.expires_at <= now, "location": b.location,
            "versions": [f"{kr}/v{v}" for kr, per in sorted(versions.items()) for v in sorted(per)],
        })

    def human() -> None:
        if not rows:
            console.print("no registered backups")
        for r in rows:
            state = "expired" if r["expired"] else "holds " + (", ".join(r["versions"]) or "nothing")
            _print([f"{r['name']}  {r['kind']}  taken {r['taken_at']}  until {r['expires_at']}  {state}"])

    emit(app, {"backups": rows}, human)


@backup.command()
@click.argument("name")
@pass_app
def forget(app: AppContext, name: str) -> None:
    """Drop a registration; the versions it held follow normal retention again."""
    record = forget_backup(app.vault(), name)
    emit(app, {"forgotten": record.name}, lambda: _print(
        [f"forgot backup {record.name}; its key versions follow normal retention again"]))


def _print(lines: list[str]) -> None:
    """Human lines with every control character escaped: labels, ids and paths come from files and rows
    others may write, and must never drive the terminal."""
    for line in lines:
        console.print(printable(line), markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _live_store(app: AppContext) -> Iterator[Store | None]:
    """The store --db names, if it exists (never created here), to compare a copy with."""
    url = app.url
    if url.startswith("sqlite:") and not Path(path_from_url(url)).is_file():
        yield None
        return
    store = open_store(url, migrate=False)
    try:
        yield store
    finally:
        store.close()


@backup.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--accept-unauthenticated", is_flag=True,
              help="Accept a copy whose manifest is missing, unsigned or edited, or whose store id differs from "
                   "it: its identity, audit head, versions and counts are then unproven (the destroyed-since "
                   "check runs against the live store whatever store id the copy claims).")
@pass_app
def verify(app: AppContext, path: str, accept_unauthenticated: bool) -> None:
    """Run every restore check on a copy; change nothing."""
    key_dir = Path(path_from_url(app.url)).resolve().parent if app.url.startswith("sqlite:") else None
    with _live_store(app) as live:
        report = verify_backup(path, config=app.config, live=live, key_dir=key_dir,
                               accept_unauthenticated=accept_unauthenticated)
    emit(app, report.to_json(), lambda: _print(report_lines(report)))
    if not report.ok:
        raise BackupError(printable(f"backup {path} failed verification: " + "; ".join(report.problems)))


@backup.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--to", "to_url", required=True, help="Store URL to restore into (a new sqlite:///path).")
@click.option("--replace", is_flag=True, help="Replace an existing store (it is kept beside, renamed).")
@click.option("--accept-unauthenticated", is_flag=True,
              help="Accept a copy whose manifest is missing, unsigned or edited, or whose store id differs from "
                   "it: its identity, audit head, versions and counts are then unproven (the destroyed-since "
                   "check runs against the live store whatever store id the copy claims).")
@pass_app
def restore(app: AppContext, path: str, to_url: str, replace: bool, accept_unauthenticated: bool) -> None:
    """Verify a copy, then restore it into a new store (never over one without --replace).

    Before anything is replaced it says what comes back: tokens (by accessor)
    and backup holds that differ from the live store.  Tokens revoked in the
    live store since the copy stay revoked.
    """
    def say_changes(report: VerifyReport) -> None:
        if report.changes is not None and report.changes.any():
            for line in ["restoring brings back the copy's state; compared with the live store:",
                         *report.changes.lines()]:
                err_console.print(printable(line), markup=False, highlight=False, soft_wrap=True)

    with _live_store(app) as live:
        report, kept = restore_backup(path, to_url, config=app.config, live=live, replace=replace,
                                      accept_unauthenticated=accept_unauthenticated,
                                      before_replace=say_changes)
    data = report.to_json() | {"restored_to": to_url, "replaced_store_kept_as": kept}

    def human() -> None:
        _print(report_lines(report))
        _print([f"restored into {to_url}" + (f"; the previous store is kept as {kept}" if kept else "")])

    emit(app, data, human)
