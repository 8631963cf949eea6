"""init, reencrypt, status."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..config import PROVIDER_TYPES, ProviderConfig
from ..exceptions import NebulaCredentialError
from ._common import AppContext, console, emit, err_console, is_tty, pass_app
from .keys import versions_table


@click.command()
@click.option("--provider", "provider_type", type=click.Choice(PROVIDER_TYPES),
              help="Root of trust (default: config or local).")
@pass_app
def init(app: AppContext, provider_type: str | None) -> None:
    """Initialise a store and its keyring (creates the root key for the local provider)."""
    cfg = app.config
    if provider_type is not None and provider_type != cfg.provider.type:
        from dataclasses import replace

        provider = ProviderConfig(type=provider_type, settings=cfg.provider.settings, explicit=True)
        app._config = replace(cfg, provider=provider)
    vault = app.vault(create=True)
    kv = vault.keys.active_version()
    data = {"keyring": vault.keyring_name, "active_version": kv.version, "provider": vault.provider.describe()}
    emit(app, data, lambda: console.print(
        f"initialised keyring {vault.keyring_name} in {vault.store!r} with provider "
        f"{vault.provider.name}; active key version {kv.version}"))


@click.command()
@click.option("--batch-size", type=click.IntRange(1, 100_000), help="Rows per batch (config: reencryption.batch_size).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Parallel workers where the store allows.")
@click.option("--priority", help="Comma-separated scope order, e.g. production,user,development.")
@click.option("--rate-limit", type=float, default=None, help="At most this many rows per second.")
@pass_app
def reencrypt(app: AppContext, batch_size: int | None, workers: int | None, priority: str | None,
              rate_limit: float | None) -> None:
    """Move every credential to the active key version."""
    vault = app.vault()
    _, pending, _ = vault.pending()
    order = [s.strip() for s in priority.split(",") if s.strip()] if priority else None
    if is_tty() and not app.json:
        columns = (TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("reencrypt", total=pending)
            result = vault.reencrypt(batch_size=batch_size, priority=order, rate_limit=rate_limit,
                                     progress=lambda scope, n: bar.advance(task, n))
    else:
        result = vault.reencrypt(batch_size=batch_size, priority=order, rate_limit=rate_limit)
    emit(app, result.to_json(), lambda: console.print(
        f"re-encrypted {result.reencrypted} of {result.total} credentials to v{result.active_version} "
        f"in {result.seconds:.2f}s; {result.conflicts} left to concurrent writers; {len(result.failures)} failed"))
    if not result.ok:
        for f in result.failures[:20]:
            err_console.print(f"failed: {f.id} (v{f.key_version}): {f.reason}", markup=False)
        raise NebulaCredentialError(f"{len(result.failures)} credential(s) could not be re-encrypted")


@click.command()
@pass_app
def status(app: AppContext) -> None:
    """Versions, re-encryption progress and firing alerts."""
    vault = app.vault()
    data = vault.status()

    def human() -> None:
        km = vault.keys
        console.print(versions_table(km.keyring, km.list(), km.credential_counts()))
        r = data["reencryption"]
        console.print(f"active version: {data['active_version']}   re-encryption: "
                      f"{r['total'] - r['pending']}/{r['total']} ({r['progress']:.1%})")
        for a in data["alerts"]:
            console.print(f"[red]ALERT[/] {a['name']} ({a['severity']}): {a['message']}")

    emit(app, data, human)
