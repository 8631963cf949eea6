"""init, reencrypt, status."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..config import PROVIDER_TYPES, ProviderConfig
from ..exceptions import NebulaCredentialError
from ..reencrypt import check_workers, scope_order
from ._common import AppContext, console, emit, err_console, is_tty, pass_app
from ._progress import PlainProgress, rich_progress
from .keys import versions_table


@click.command()
@click.option("--provider", "provider_type", type=click.Choice(PROVIDER_TYPES),
              help="Root of trust (default: config or local).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Local provider: use (or create) this key file; the only way to adopt an existing one.")
@pass_app
def init(app: AppContext, provider_type: str | None, key_file: str | None) -> None:
    """Initialise a store and its keyring (creates the root key for the local provider)."""
    cfg = app.config
    if provider_type is not None and provider_type != cfg.provider.type:
        from dataclasses import replace

        provider = ProviderConfig(type=provider_type, settings=cfg.provider.settings, explicit=True)
        app._config = replace(cfg, provider=provider)
    if key_file is not None:
        if app.config.provider.type != "local":
            raise click.UsageError("--key-file applies to the local provider only")
        from ..providers.local import LocalKeyProvider

        exists = os.path.lexists(key_file)
        root = LocalKeyProvider.load(key_file) if exists else LocalKeyProvider.create(key_file)
        vault = app.vault(create=True, provider=root)
    else:
        vault = app.vault(create=True)
    kv = vault.keys.active_version()
    data = {"keyring": vault.keyring_name, "active_version": kv.version, "provider": vault.provider.describe()}
    emit(app, data, lambda: console.print(
        f"initialised keyring {vault.keyring_name} in {vault.store!r} with provider "
        f"{vault.provider.name}; active key version {kv.version}"))


@click.command()
@click.option("--batch-size", type=click.IntRange(1, 100_000),
              help="Rows per batch (config: reencryption.batch_size).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Parallel workers; more than 1 needs PostgreSQL (SKIP LOCKED).")
@click.option("--priority", help="Comma-separated scope order, e.g. production,user,development.")
@click.option("--rate-limit", type=click.FloatRange(min=0), default=None,
              help="At most this many rows per second (0: unlimited).")
@click.option("--progress-interval", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between plain progress lines when stderr is not a terminal.")
@pass_app
def reencrypt(app: AppContext, batch_size: int | None, workers: int | None, priority: str | None,
              rate_limit: float | None, progress_interval: float) -> None:
    """Move every credential to the active key version (safe to interrupt and run again)."""
    vault = app.vault()
    order = [s.strip() for s in priority.split(",") if s.strip()] if priority else None
    check_workers(vault.keys, workers or vault.config.reencryption.workers)
    active = vault.keys.active_version().version
    with vault.store.read() as tx:
        pending = tx.count_pending_by_scope(vault.keyring_name, active)
    prio = order or vault.config.reencryption.priority
    plan = {s: pending[s] for s in scope_order(pending, prio)}
    stop = threading.Event()
    options = {"batch_size": batch_size, "priority": order, "rate_limit": rate_limit,
               "workers": workers, "should_stop": stop.is_set}
    with _stop_on_signals(stop):
        if is_tty() and not app.json:
            with rich_progress(err_console, plan) as advance:
                result = vault.reencrypt(progress=advance, **options)  # type: ignore[arg-type]
        else:
            plain = PlainProgress(sys.stderr, plan, interval=progress_interval)
            result = vault.reencrypt(progress=plain, **options)  # type: ignore[arg-type]
            plain.finish()
    emit(app, result.to_json(), lambda: console.print(
        f"re-encrypted {result.reencrypted} of {result.total} credentials "
        f"to v{result.active_version} in {result.seconds:.2f}s "
        f"({result.rows_per_second:,.0f} rows/s); {result.conflicts} left to concurrent "
        f"writers; {len(result.failures)} failed", markup=False))
    for f in result.failures[:20]:
        err_console.print(f"failed: {f.id} (v{f.key_version}): {f.reason}", markup=False)
    if len(result.failures) > 20:
        err_console.print(f"... and {len(result.failures) - 20} more (see --json or `audit list`)")
    if result.stopped:
        raise NebulaCredentialError(
            f"re-encryption stopped after {result.reencrypted} credential(s); "
            "run it again to resume")
    if not result.ok:
        raise NebulaCredentialError(
            f"{len(result.failures)} credential(s) could not be re-encrypted "
            "and were left unchanged")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM finish the batch in flight, then stop (a second SIGINT aborts)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
