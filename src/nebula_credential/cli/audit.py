"""audit list | audit verify [--against FILE] | audit export [--since SEQ]."""

from __future__ import annotations

import json
from datetime import datetime

import click

from .._jsonl import iter_objects
from ..audit import row_to_export, row_to_json
from ..durations import parse_duration
from ..models import from_epoch, to_epoch
from ..names import printable
from ._common import AppContext, console, emit, emit_line, pass_app


def _since(value: str | None, now: datetime) -> float | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        dt = now - parse_duration(value, "--since")
    return to_epoch(dt if dt.tzinfo else dt.astimezone())


@click.group()
def audit() -> None:
    """Inspect and verify the tamper-evident audit trail."""


@audit.command(name="list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000), help="Newest N events.")
@click.option("--action", help="Only this action (e.g. key.rotate, or a prefix like key.*).")
@click.option("--version", "version", type=int, help="Only events about this key version.")
@click.option("--since", help="ISO time or a duration back from now (24h, 7d).")
@click.option("--all-keyrings", is_flag=True, help="Events of every keyring, not just --keyring.")
@pass_app
def list_events(
    app: AppContext, limit: int, action: str | None, version: int | None, since: str | None, all_keyrings: bool
) -> None:
    """Events, oldest first; --json streams one JSON object per line."""
    vault = app.vault()
    rows = vault.audit_events(
        limit=limit,
        action=action,
        version=version,
        keyring=None if all_keyrings else vault.keyring_name,
        since=_since(since, vault.clock()),
    )
    if app.json:
        for r in rows:
            emit_line(app, row_to_json(r))
        return
    for r in rows:
        ts = from_epoch(r.ts)
        where = " ".join(
            x for x in (
                f"keyring={r.keyring}" if r.keyring else "",
                f"v{r.key_version}" if r.key_version is not None else "",
                f"credential={r.credential_id}" if r.credential_id else "",
            ) if x
        )
        details = "" if r.details == "{}" else f" {r.details}"
        console.print(  # rows are data a database writer may have written: no terminal escapes
            printable(f"{r.seq:>6} {ts.strftime('%Y-%m-%d %H:%M:%S') if ts else ''} {r.action:<18} "
                      f"{r.outcome:<7} {where} by {r.actor}{details}"),
            markup=False, highlight=False, soft_wrap=True,
        )


@audit.command()
@click.option("--against", "against", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also check the store against a copy kept with `audit export` (catches a rolled-back "
                   "or rewritten chain); - reads stdin.")
@click.option("--partial", is_flag=True,
              help="With --against: the file need not hold the whole chain; compare only the events it has.")
@pass_app
def verify(app: AppContext, against: str | None, partial: bool) -> None:
    """Walk the HMAC chain and check it explains the key table; exit 1 on the first problem.

    \b
    Exit status: 0 when the chain is intact and explains every key version;
    1 when an event does not check out or something is unexplained (the
    first bad sequence number is printed), or the store cannot be read.
    """
    if partial and against is None:
        raise click.UsageError("--partial only applies with --against FILE")
    log = app.vault().audit
    if against is None:
        result = log.verify()
    else:
        result = log.verify_against(iter_objects(against, ("seq", "mac"), '{"seq", "mac", ...} per line'),
                                    partial=partial)

    def human() -> None:
        if result.ok:
            compared = "" if result.compared is None else f"; {result.compared} compared with {against}"
            console.print(f"audit chain intact: {result.events} events{compared}", markup=False)
            return
        compared = "" if result.compared is None else f", {result.compared} compared with {against}"
        console.print(f"audit chain BROKEN at event {result.first_bad_seq} ({result.events} events read{compared})",
                      style="bold red", markup=False)
        for line in result.unexplained:
            console.print(f"  unexplained: {line}", markup=False, highlight=False, soft_wrap=True)

    emit(app, result.to_json(), human)
    if not result.ok:
        raise click.exceptions.Exit(1)


@audit.command(name="export")
@click.option("--since", "since", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              metavar="SEQ", help="Only events after this sequence number (resume from the last line kept).")
@pass_app
def export(app: AppContext, since: int) -> None:
    """Every event after SEQ as JSON lines on stdout, with its MAC, for a copy kept outside the store.

    Append the output to a file a database writer cannot touch (a SIEM, object
    storage); resume with --since set to the last seq kept; check the store
    against it with `audit verify --against FILE`.
    """
    for row in app.vault().audit.rows(after=since):
        click.echo(json.dumps(row_to_export(row), sort_keys=True, separators=(",", ":")))
