"""maintain, daemon, keys cleanup."""

from __future__ import annotations

import logging

import click

from ..durations import parse_duration
from ..exceptions import NebulaCredentialError, PolicyViolationError
from ..lifecycle import cleanup as run_cleanup
from ..lifecycle import kept as kept_versions
from ..maintenance import maintain as run_maintain
from ..policies.retention import retention_from_config
from ._common import AppContext, console, emit, pass_app


@click.command()
@click.option("--all-keyrings", is_flag=True, help="Every keyring in the store, not just --keyring.")
@pass_app
def maintain(app: AppContext, all_keyrings: bool) -> None:
    """One scheduler pass: rotate if due, re-encrypt, advance lifecycle, clean up."""
    vault = app.vault()
    if all_keyrings:
        names = vault.keyring_names()
        targets = [vault if n == vault.keyring_name else vault.keyring(n) for n in names]
    else:
        targets = [vault]
    reports = [run_maintain(t) for t in targets]
    data = reports[0].to_json() if len(reports) == 1 else {"keyrings": [r.to_json() for r in reports]}

    def human() -> None:
        for r in reports:
            lines = r.actions() or [f"{r.keyring}: nothing to do"]
            if r.rotation_skipped:
                lines.append(f"{r.keyring}: rotation skipped ({r.rotation_skipped})")
            for line in lines:
                console.print(line)

    emit(app, data, human)
    bound = next((r.usage_bound for r in reports if r.usage_bound), None)
    if bound:  # auto_rotation = false: the pass did the rest, then fails as `put` does at the bound
        raise PolicyViolationError(bound)
    failed = sum(len(r.reencryption.failures) for r in reports if r.reencryption)
    if failed:
        raise NebulaCredentialError(f"{failed} credential(s) could not be re-encrypted; see `reencrypt`")


@click.command()
@click.option("--interval", default="60s", show_default=True, help="Time between maintain passes (30s, 15m, 1h).")
@click.option("--metrics-addr", default=None, help="host:port for /healthz and /metrics (config metrics.addr).")
@click.option("--once", is_flag=True, help="Run one pass and exit (for tests and cron-like use).")
@click.option("--ui", "ui_addr", default=None, metavar="HOST:PORT",
              help="Also serve the browser console at http://HOST:PORT/ui/ (loopback only; log in with a "
                   "token from `token create`).")
@pass_app
def daemon(app: AppContext, interval: str, metrics_addr: str | None, once: bool, ui_addr: str | None) -> None:
    """Run maintain every --interval; SIGTERM/SIGINT finish the current batch and exit."""
    from ..daemon import Daemon

    logging.basicConfig(level=logging.DEBUG if app.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    vault = app.vault()
    d = Daemon(vault, interval=parse_duration(interval, "--interval"),
               metrics_addr=metrics_addr or app.config.metrics.addr)
    d.enable_metrics()
    if ui_addr:
        from .._extras import require

        for module in ("starlette", "granian"):  # the extra named, not a bare import error
            require(module, "server")
        from ..server.compose import serve_console

        console_server = serve_console(vault, app.config, ui_addr)
        logging.getLogger("nebula_credential.daemon").info("console on http://%s/ui/", ui_addr)
    try:
        d.run(max_passes=1 if once else None)
    finally:
        if ui_addr:
            console_server.stop()


@click.command(name="cleanup")
@click.option("--dry-run", is_flag=True, help="List what would be destroyed and why; change nothing.")
@pass_app
def cleanup_cmd(app: AppContext, dry_run: bool) -> None:
    """Destroy revoked versions the retention policy allows and no credential uses."""
    vault = app.vault()
    policy = retention_from_config(app.config)
    now = vault.clock()
    actions = run_cleanup(vault.keys, policy, now, dry_run=dry_run)
    gone = {a.version for a in actions}
    kept = [(kv, why) for kv, why in kept_versions(vault.keys, policy, now) if kv.version not in gone]
    data = {"keyring": vault.keyring_name, "dry_run": dry_run, "policy": policy.name,
            "destroyed" if not dry_run else "would_destroy": [a.to_json() for a in actions],
            "kept": [why.to_json(kv.version) for kv, why in kept]}

    def human() -> None:
        verb = "would destroy" if dry_run else "destroyed"
        if not actions:
            console.print(f"nothing to clean up under policy {policy.name}")
        for a in actions:
            console.print(f"{verb} v{a.version}: {a.reason}")
        for kv, why in kept:
            console.print(f"v{kv.version} kept: {why}", markup=False)

    emit(app, data, human)
