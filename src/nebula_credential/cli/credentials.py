"""put, get, delete, list, import."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.table import Table

from .._jsonl import iter_objects
from ..exceptions import ConfigError, CorruptRecordError
from ..vault import DEFAULT_SCOPE
from ._common import AppContext, console, emit, pass_app


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
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError("value", "credential value must be JSON (e.g. '{\"token\": \"...\"}')") from None


@click.command()
@click.argument("credential_id")
@click.option("--scope", default=DEFAULT_SCOPE, show_default=True, help="Scope, e.g. production, user, development.")
@click.option("--value", help="The value as JSON.")
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read the JSON value from a file.")
@click.option("--metadata", help="Metadata as a JSON object (stored unencrypted).")
@pass_app
def put(app: AppContext, credential_id: str, scope: str, value: str | None, file: str | None,
        metadata: str | None) -> None:
    """Store a credential (JSON value) under ID."""
    data = _read_value(value, file)
    meta = json.loads(metadata) if metadata else None
    if meta is not None and not isinstance(meta, dict):
        raise click.UsageError("--metadata must be a JSON object")
    vault = app.vault()
    revision = vault.put(credential_id, data, scope=scope, metadata=meta)
    emit(app, {"id": credential_id, "scope": scope, "revision": revision},
         lambda: console.print(f"stored {credential_id} (scope {scope}, revision {revision})"))


@click.command()
@click.argument("credential_id")
@click.option("--field", "field_name", help="Print only this field of the value.")
@pass_app
def get(app: AppContext, credential_id: str, field_name: str | None) -> None:
    """Print a credential's value (secrets go to stdout only)."""
    record = app.vault().get_record(credential_id)
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


@click.command()
@click.argument("credential_id")
@pass_app
def delete(app: AppContext, credential_id: str) -> None:
    """Delete a credential."""
    app.vault().delete(credential_id)
    emit(app, {"id": credential_id, "deleted": True}, lambda: console.print(f"deleted {credential_id}"))


@click.command(name="list")
@click.option("--scope", help="Only this scope.")
@click.option("--key-version", type=int, help="Only credentials under this key version.")
@pass_app
def list_(app: AppContext, scope: str | None, key_version: int | None) -> None:
    """List credentials (ids, scopes, key versions; never values).

    A corrupt row is reported on stderr by id after the others are listed,
    and the exit status is 1.
    """
    corrupt: list[CorruptRecordError] = []
    rows = app.vault().list(scope=scope, key_version=key_version, on_corrupt=corrupt.append)
    if app.json:
        click.echo(json.dumps({"credentials": [
            {"id": r.id, "scope": r.scope, "key_version": r.key_version, "metadata": r.metadata,
             "revision": r.revision, "updated_at": r.updated_at.isoformat()} for r in rows]}))
    else:
        table = Table("id", "scope", "key version", "revision", "updated")
        for r in rows:
            table.add_row(r.id, r.scope, str(r.key_version), str(r.revision),
                          r.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
        console.print(table)
    if corrupt:
        for exc in corrupt[1:]:
            click.echo(f"warning: {exc}", err=True)
        raise CorruptRecordError(f"{len(corrupt)} corrupt record(s) not listed; first: {corrupt[0]}")


def _jsonl(path: str) -> Iterator[tuple[str, Any, str, dict[str, Any] | None]]:
    for item in iter_objects(path, ("id", "value"), '{"id", "scope", "value", "metadata"}'):
        yield str(item["id"]), item["value"], str(item.get("scope") or DEFAULT_SCOPE), item.get("metadata")


@click.command(name="import")
@click.argument("path", type=click.Path(allow_dash=True))
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@pass_app
def import_(app: AppContext, path: str, batch_size: int) -> None:
    """Import credentials from JSONL: one {"id","scope","value","metadata"} per line (streamed)."""
    import time

    start = time.perf_counter()
    count = app.vault().put_many(_jsonl(path), batch_size=batch_size)
    seconds = time.perf_counter() - start
    emit(app, {"imported": count, "seconds": round(seconds, 3)},
         lambda: console.print(f"imported {count} credentials in {seconds:.2f}s "
                               f"({count / seconds if seconds else 0:,.0f}/s)"))
