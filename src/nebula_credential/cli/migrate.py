"""adopt (move secrets from a single application key) and doctor."""

from __future__ import annotations

import sys

import click
from rich.table import Table
from rich.text import Text

from .. import doctor as doctor_mod
from ..adopt import adopt as adopt_records
from ..adopt import records_from_db, records_from_jsonl
from ..exceptions import NebulaCredentialError, StoreError
from ..legacy import LegacyKeySet, NonceLayout, read_key_material
from ..names import printable
from ._common import AppContext, console, emit, err_console, pass_app


@click.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--from-db", "from_db", help="Read legacy tokens from this database (sqlite:///... or postgresql://...).")
@click.option(
    "--query", help='SQL returning (id, token[, scope[, metadata]]), e.g. "SELECT id, token FROM connection".'
)
@click.option(
    "--scheme",
    type=click.Choice(["fernet", "aes-gcm"]),
    default="fernet",
    show_default=True,
    help="How the legacy tokens were encrypted.",
)
@click.option("--key-file", type=click.Path(dir_okay=False), help="File holding the legacy key(s), comma-separated.")
@click.option("--key-env", help="Environment variable holding the legacy key(s), comma-separated.")
@click.option(
    "--nonce-layout",
    type=click.Choice([n.value for n in NonceLayout]),
    default=NonceLayout.PREFIX.value,
    show_default=True,
    help="aes-gcm: where each token keeps its 12-byte nonce.",
)
@click.option("--aad", help="aes-gcm: associated data the legacy tokens were bound to (text).")
@click.option("--dry-run", is_flag=True, help="Count what would be adopted and what fails; write nothing.")
@pass_app
def adopt(
    app: AppContext,
    path: str | None,
    from_db: str | None,
    query: str | None,
    scheme: str,
    key_file: str | None,
    key_env: str | None,
    nonce_layout: str,
    aad: str | None,
    dry_run: bool,
) -> None:
    """Adopt secrets encrypted under one legacy key (Fernet or AES-GCM) as managed credentials.

    PATH is a JSONL file of {"id", "scope", "token", "metadata"}; or use --from-db with --query.
    Plaintext is never written to disk. Re-running adopts nothing twice.
    """
    if bool(path) == bool(from_db):
        raise click.UsageError("give a JSONL PATH or --from-db URL --query SQL (one of them)")
    if from_db and not query:
        raise click.UsageError("--from-db needs --query")
    material = read_key_material(key_file=key_file, key_env=key_env)
    if scheme == "fernet":
        keys = LegacyKeySet.fernet_keys(material)
    else:
        keys = LegacyKeySet.aes_gcm_keys(
            material, layout=NonceLayout(nonce_layout), aad=aad.encode() if aad is not None else None
        )
    del material
    records = records_from_jsonl(path) if path else records_from_db(str(from_db), str(query))
    report = adopt_records(app.vault(), records, keys, dry_run=dry_run)
    verb = "would adopt" if dry_run else "adopted"
    emit(
        app,
        report.to_json(),
        lambda: console.print(
            f"{verb} {report.adopted}; skipped {report.skipped_existing} already present; {len(report.failed)} failed"
        ),
    )
    if not report.ok:
        for cid, reason in report.failed[:50]:
            err_console.print(f"failed: {cid}: {reason}", markup=False)
        raise NebulaCredentialError(f"{len(report.failed)} legacy token(s) could not be opened with the given key(s)")


_SEV_STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "error": "bold red"}


@click.command()
@pass_app
def doctor(app: AppContext) -> None:
    """Check the store, keys, root of trust and audit chain; explain each problem with its fix.

    \b
    Exit status: 0 when every check is ok or info; 1 when any check
    reports a warning or an error (or the store cannot be opened).
    Example: nebula-credential doctor --json | jq '.[] | select(.severity != "ok")'
    """
    try:
        findings = doctor_mod.run(app.existing_url(), app.config)
    except StoreError as exc:  # no store there: a finding like any other, and nothing is created
        findings = [doctor_mod.Finding("store", doctor_mod.ERROR, str(exc), "nebula-credential init")]
    if app.json:
        emit(app, [f.to_json() for f in findings])
    elif not sys.stdout.isatty():
        # plain lines for logs and pipes: nothing cut, each fix command whole on its own line
        for f in findings:
            click.echo(f"{f.severity:<7} {f.check:<13} {printable(f.message)}")
            if f.fix:
                click.echo(f"{'':<7} fix: {printable(f.fix)}")
    else:
        table = Table("check", "severity", "finding", "fix")
        for f in findings:
            table.add_row(f.check, Text(f.severity, style=_SEV_STYLE[f.severity]), f.message, f.fix)
        console.print(table)
    problems = [f for f in findings if f.problem]
    if problems:
        raise click.exceptions.Exit(1)
