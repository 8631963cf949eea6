"""put, get, delete, list, import; a credential's versions: versions, undelete, destroy-versions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from .._jsonl import iter_numbered, loads
from ..exceptions import ConfigError, CorruptRecordError, InvalidInputError, NebulaCredentialError
from ..names import check_credential_id, check_scope, printable
from ..vault import DEFAULT_SCOPE, ON_EXISTING, ImportCounts, Vault
from ._common import KEY_VERSION, AppContext, console, emit, err_console, is_tty, pass_app


def _read_value(value: str | None, file: str | None) -> Any:
    if value is not None and file is not None:
        raise click.UsageError("give --value or --file, not both")
    if value is not None:
        raw = value
    elif file is not None:
        with open(file, encoding="utf-8") as fh:
            raw = fh.read()
    else:
        if sys.stdin.isatty():
            raise click.UsageError("give the value with --value JSON, --file PATH, or on stdin")
        raw = sys.stdin.read()
    return loads(raw, "value")


@click.command()
@click.argument("credential_id")
@click.option("--scope", default=DEFAULT_SCOPE, show_default=True, help="Scope, e.g. production, user, development.")
@click.option("--value", help="The value as JSON (visible in the process list: prefer stdin or --file).")
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read the JSON value from a file.")
@click.option("--metadata", help="Metadata as a JSON object (stored unencrypted).")
@pass_app
def put(app: AppContext, credential_id: str, scope: str, value: str | None, file: str | None,
        metadata: str | None) -> None:
    """Store a credential (JSON value) under ID.

    The value comes from stdin or --file; --value puts it on the command
    line, where every user of the host can read it in the process list.

    \b
    Example: nebula-credential put github --scope production < github.json
    """
    data = _read_value(value, file)
    meta = loads(metadata, "--metadata") if metadata else None
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInputError("--metadata", "must be a JSON object")
    vault = app.vault()
    revision = vault.put(credential_id, data, scope=scope, metadata=meta)
    emit(app, {"id": credential_id, "scope": scope, "revision": revision},
         lambda: console.print(f"stored {credential_id} (scope {scope}, revision {revision})"))


@click.command()
@click.argument("credential_id")
@click.option("--field", "field_name", help="Print only this field of the value.")
@click.option("--version", "version", type=click.IntRange(1), help="Read this version of the credential "
              "(see `versions ID`); default: the current one.")
@pass_app
def get(app: AppContext, credential_id: str, field_name: str | None, version: int | None) -> None:
    """Print a credential's value (secrets go to stdout only).

    \b
    Example: nebula-credential get github --field token
             nebula-credential get github --version 3
    """
    record = app.vault().get_record(credential_id, version=version)
    if field_name is not None:
        if not isinstance(record.value, dict) or field_name not in record.value:
            raise ConfigError("--field", f"credential {credential_id!r} has no field {field_name!r}")
        selected = record.value[field_name]
        if app.json:
            click.echo(json.dumps(selected))
        else:
            click.echo(selected if isinstance(selected, str) else json.dumps(selected))
        return
    emit(app, record.to_json(), lambda: click.echo(json.dumps(record.to_json(), indent=2)))


def _version_list(text: str) -> list[int]:
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError("--versions", f"expected version numbers separated by commas, got {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise InvalidInputError("--versions", "give one or more version numbers (1 or more), e.g. 1,2")
    return numbers


VERSIONS = click.option("--versions", "versions", required=True, metavar="N[,N...]",
                        help="Version numbers, separated by commas (see `versions ID`).")


@click.command()
@click.argument("credential_id")
@click.option("--versions", "versions", metavar="N[,N...]",
              help="Soft-delete only these versions (undelete brings them back) instead of deleting the "
                   "credential with every version.")
@pass_app
def delete(app: AppContext, credential_id: str, versions: str | None) -> None:
    """Delete a credential and every version of it (or, with --versions, soft-delete some versions)."""
    if versions is not None:
        changed = app.vault().delete_versions(credential_id, _version_list(versions))
        emit(app, {"id": credential_id, "deleted_versions": changed},
             lambda: console.print(f"soft-deleted versions {changed or 'none'} of {credential_id}"))
        return
    app.vault().delete(credential_id)
    emit(app, {"id": credential_id, "deleted": True}, lambda: console.print(f"deleted {credential_id}"))


@click.command()
@click.argument("credential_id")
@pass_app
def versions(app: AppContext, credential_id: str) -> None:
    """List a credential's versions: number, created, deleted, destroyed (never values).

    \b
    Example: nebula-credential versions github
    """
    found = app.vault().versions(credential_id)
    doc = {
        "id": credential_id,
        "current_version": found.current_version,
        "oldest_version": found.oldest_version,
        "max_versions": found.settings.max_versions,
        "cas_required": found.settings.cas_required,
        "delete_version_after_seconds": found.settings.delete_version_after,
        "custom_metadata": found.settings.custom_metadata,
        "versions": [{"version": v.version, "created_at": v.created_at.isoformat(),
                      "deletion_time": v.deletion_time.isoformat() if v.deletion_time else None,
                      "destroyed": v.destroyed} for v in found.versions],
    }

    def show() -> None:
        click.echo("version\tcreated\tdeleted\tdestroyed")
        for v in found.versions:
            click.echo(f"{v.version}\t{v.created_at:%Y-%m-%d %H:%M:%S}\t"
                       f"{v.deletion_time.strftime('%Y-%m-%d %H:%M:%S') if v.deletion_time else '-'}\t"
                       f"{'yes' if v.destroyed else 'no'}")

    emit(app, doc, show)


@click.command()
@click.argument("credential_id")
@VERSIONS
@pass_app
def undelete(app: AppContext, credential_id: str, versions: str) -> None:
    """Bring back soft-deleted versions of a credential (a destroyed version stays destroyed).

    \b
    Example: nebula-credential undelete github --versions 2,3
    """
    changed = app.vault().undelete(credential_id, _version_list(versions))
    emit(app, {"id": credential_id, "undeleted": changed},
         lambda: console.print(f"undeleted versions {changed or 'none'} of {credential_id}"))


@click.command(name="destroy-versions")
@click.argument("credential_id")
@VERSIONS
@pass_app
def destroy_versions(app: AppContext, credential_id: str, versions: str) -> None:
    """Erase versions of a credential for good: their envelopes are removed from the store.

    Backups taken before still hold them until they expire.

    \b
    Example: nebula-credential destroy-versions github --versions 1
    """
    changed = app.vault().destroy_versions(credential_id, _version_list(versions))
    emit(app, {"id": credential_id, "destroyed": changed},
         lambda: console.print(f"destroyed versions {changed or 'none'} of {credential_id}"))


@click.command(name="list")
@click.option("--scope", help="Only this scope.")
@click.option("--key-version", type=KEY_VERSION, help="Only credentials under this key version.")
@click.option("--after", "after", metavar="ID", help="Start after this id (ids are listed in order; for paging).")
@click.option("--limit", type=click.IntRange(1), help="At most this many credentials.")
@pass_app
def list_(app: AppContext, scope: str | None, key_version: int | None, after: str | None,
          limit: int | None) -> None:
    """List credentials (ids, scopes, key versions; never values), streamed in id order.

    One line per credential: id, scope, key version, revision, last update,
    separated by tabs.  Memory stays constant whatever the store holds; page
    with --limit N and --after LAST_ID.  A corrupt row is reported on stderr
    by id after the others are listed, and the exit status is 1.

    \b
    Example: nebula-credential list --scope production --limit 100 --after github
    """
    vault = app.vault()
    corrupt: list[CorruptRecordError] = []
    write = sys.stdout.write
    if not app.json:
        if sys.stdout.isatty():
            write("id\tscope\tkey version\trevision\tupdated\n")
        fmt, gmtime = time.strftime, time.gmtime
        chunk: list[str] = []
        for cid, cscope, version, revision, updated in vault.list_heads(
                scope=scope, key_version=key_version, after=after, limit=limit, on_corrupt=corrupt.append):
            chunk.append(f"{printable(cid)}\t{printable(cscope)}\tv{version}\t{revision}\t"
                         f"{fmt('%Y-%m-%d %H:%M:%S', gmtime(updated))}\n")
            if len(chunk) >= 1000:
                write("".join(chunk))
                chunk.clear()
        write("".join(chunk))
    else:
        # the same document as before ({"credentials": [...]}), written row by row
        write('{"credentials": [')
        sep = ""
        for r in vault.list(scope=scope, key_version=key_version, after=after, limit=limit,
                            on_corrupt=corrupt.append):
            write(sep + json.dumps({"id": r.id, "scope": r.scope, "key_version": r.key_version,
                                    "metadata": r.metadata, "revision": r.revision,
                                    "updated_at": r.updated_at.isoformat()}))
            sep = ", "
        write("]}\n")
    if corrupt:
        sys.stdout.flush()
        for exc in corrupt[1:]:
            click.echo(f"warning: {exc}", err=True)
        raise CorruptRecordError(f"{len(corrupt)} corrupt record(s) not listed; first: {corrupt[0]}")


_SHAPE = '{"id", "scope", "value", "metadata"}'


def _record(path: str, n: int, item: dict[str, Any]) -> tuple[str, Any, str, dict[str, Any] | None]:
    """One import line, typed: no silent str() of a number id or a list metadata."""
    where = f"{path}:{n}"
    credential_id = check_credential_id(item["id"], f"{where}: id")
    scope = item.get("scope")
    scope = DEFAULT_SCOPE if scope is None else check_scope(scope, f"{where}: scope")
    metadata = item.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInputError(f"{where}: metadata", f"must be a JSON object, got {type(metadata).__name__}")
    return credential_id, item["value"], scope, metadata


def _records(path: str, start_line: int, lines: list[int]) -> Iterator[tuple[str, Any, str, dict[str, Any] | None]]:
    for n, item in iter_numbered(path, ("id", "value"), _SHAPE, start_line=start_line):
        record = _record(path, n, item)
        lines.append(n)
        yield record


def _validate(vault: Vault, path: str, start_line: int, on_existing: str) -> tuple[int, int]:
    """Pass one: every line parses and is typed, no id twice; (rows, ids already stored)."""
    seen: set[str] = set()
    rows = existing = 0
    chunk: list[tuple[int, str]] = []

    def check_chunk() -> None:
        nonlocal existing
        found = vault.existing_ids([cid for _, cid in chunk])
        existing += len(found)
        if found and on_existing == "fail":
            n, cid = next((n, cid) for n, cid in chunk if cid in found)
            raise InvalidInputError(
                f"{path}:{n}", f"credential {cid!r} already exists; nothing was imported "
                "(choose --on-existing skip or --on-existing overwrite)")
        chunk.clear()

    for n, item in iter_numbered(path, ("id", "value"), _SHAPE, start_line=start_line):
        cid = _record(path, n, item)[0]
        if cid in seen:
            raise InvalidInputError(f"{path}:{n}", f"id {cid!r} appears twice in the file; nothing was imported")
        seen.add(cid)
        rows += 1
        chunk.append((n, cid))
        if len(chunk) >= 1000:
            check_chunk()
    check_chunk()
    return rows, existing


@click.command(name="import")
@click.argument("path", type=click.Path(allow_dash=True))
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows per transaction.")
@click.option("--on-existing", type=click.Choice(ON_EXISTING), default="fail", show_default=True,
              help="An id that is already stored: fail (before writing anything), skip it, or overwrite it "
                   "(a new revision).")
@click.option("--start-line", type=click.IntRange(1), default=1, show_default=True,
              help="Skip the lines before this one (to resume an import that stopped).")
@click.option("--progress-interval", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between plain progress lines when stderr is not a terminal.")
@pass_app
def import_(app: AppContext, path: str, batch_size: int, on_existing: str, start_line: int,
            progress_interval: float) -> None:
    """Import credentials from JSONL: one {"id","scope","value","metadata"} per line (streamed).

    A file is read twice: first every line is checked (JSON, types, ids not
    repeated, and with --on-existing fail, not already stored), and only then
    written, so a bad line writes nothing.  Standard input (PATH -) is read
    once; if it stops, the error says how many rows were committed and the
    --start-line to resume from.

    \b
    Example: nebula-credential import creds.jsonl --on-existing skip
    """
    from ._progress import PlainProgress, rich_progress  # rich, for this command only

    vault = app.vault()
    total = None
    if path != "-":
        total, _ = _validate(vault, path, start_line, on_existing)
    counts = ImportCounts()
    lines: list[int] = []
    start = time.perf_counter()
    plan = {"credentials": total or 0}
    try:
        if is_tty() and not app.json:
            with rich_progress(err_console, plan, label="importing") as advance:
                vault.put_many(_records(path, start_line, lines), batch_size=batch_size,
                               on_existing=on_existing, counts=counts,
                               progress=lambda rows: advance("credentials", rows))
        else:
            plain = PlainProgress(sys.stderr, plan, interval=progress_interval, label="import")
            vault.put_many(_records(path, start_line, lines), batch_size=batch_size, on_existing=on_existing,
                           counts=counts, progress=lambda rows: plain("credentials", rows))
            if total:
                plain.finish()
    except NebulaCredentialError as exc:
        done = counts.written + counts.skipped
        resume = lines[done] if done < len(lines) else (lines[-1] + 1 if lines else start_line)
        raise NebulaCredentialError(
            f"{exc}; {counts.written} row(s) committed before it stopped (lines {start_line}-{resume - 1}); "
            f"fix the line and resume with --start-line {resume}") from None
    seconds = time.perf_counter() - start
    rate = counts.written / seconds if seconds else 0.0
    emit(app, counts.to_json() | {"seconds": round(seconds, 3)},
         lambda: console.print(f"imported {counts.written} credentials ({counts.created} new, "
                               f"{counts.overwritten} overwritten, {counts.skipped} skipped as existing) "
                               f"in {seconds:.2f}s ({rate:,.0f}/s)"))
