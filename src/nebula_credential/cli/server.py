"""serve, token create|list|revoke, policy write|read|list|delete.

Operators with store access manage tokens and policies here; that is also
how the first root token is obtained (``token create --policy root``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..durations import parse_duration
from ..exceptions import NebulaCredentialError
from ._common import AppContext, console, emit, err_console, pass_app

if TYPE_CHECKING:
    from ..servertables import ServerTx


def _tokens(app: AppContext):  # type: ignore[no-untyped-def]
    from ..server.acl import token_manager_for

    vault = app.vault()
    return vault, token_manager_for(vault, app.config)


def _policies(app: AppContext):  # type: ignore[no-untyped-def]
    from ..server.acl import policy_store_for

    vault = app.vault()
    return vault, policy_store_for(vault)


@click.command()
@click.option("--listen", default=None, help="host:port (config server.listen; default 127.0.0.1:8200).")
@click.option("--tls-cert", default=None, type=click.Path(dir_okay=False),
              help="PEM certificate (server.tls_cert_file).")
@click.option("--tls-key", default=None, type=click.Path(dir_okay=False),
              help="PEM key, mode 0600 (server.tls_key_file).")
@click.option("--insecure-no-tls", is_flag=True, help="Allow plain HTTP on a non-loopback address (warned at start).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (server.workers; default: one per core, at most 8).")
@click.option("--max-request-size", type=click.IntRange(1024), default=None,
              help="Request body limit in bytes (server.max_request_size).")
@click.option("--request-timeout", default=None, help="Per-request time limit, e.g. 30s (server.request_timeout).")
@click.option("--maintain", is_flag=True, help="Also run the daemon's scheduler in this process.")
@click.option("--interval", default="60s", show_default=True, help="Time between maintain passes with --maintain.")
@click.option("--dev", is_flag=True, help="Throwaway dev server as `bao server -dev`: a temp store (removed on "
              "exit), plain HTTP on 127.0.0.1:8200, KV v2 at secret/, Transit at transit/, root token printed.")
@click.option("--dev-root-token-id", default=None, help="With --dev: the root token to create (ncs.<36-60 chars>).")
@click.option("--dev-listen-address", default=None, help="With --dev: host:port to listen on (default 127.0.0.1:8200).")
@pass_app
def serve(app: AppContext, listen: str | None, tls_cert: str | None, tls_key: str | None, insecure_no_tls: bool,
          workers: int | None, max_request_size: int | None, request_timeout: str | None, maintain: bool,
          interval: str, dev: bool, dev_root_token_id: str | None, dev_listen_address: str | None) -> None:
    """Serve the store over Vault's HTTP API (KV v2, tokens, ACL policies)."""
    from .._extras import require

    for module in ("starlette", "granian"):  # the extra named before anything starts
        require(module, "server")
    from ..server.run import ServeOptions, worker_count
    from ..server.run import serve as run_server

    logging.basicConfig(level=logging.DEBUG if app.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if dev or dev_root_token_id or dev_listen_address:
        if not dev:
            raise click.UsageError("--dev-root-token-id and --dev-listen-address go with --dev")
        _serve_dev(app, dev_root_token_id, dev_listen_address or listen)
        return
    cfg = app.config.server
    options = ServeOptions(
        listen=listen or cfg.listen,
        tls_cert_file=tls_cert or cfg.tls_cert_file,
        tls_key_file=tls_key or cfg.tls_key_file,
        insecure_no_tls=insecure_no_tls,
        workers=worker_count(workers or cfg.workers),
        maintain=maintain,
        maintain_interval=parse_duration(interval, "--interval"),
    )
    vault = app.vault()  # a store or provider problem is one clear error before anything listens
    run_server(vault, options, url=app.url, config_path=app.config_path, max_request_size=max_request_size,
               request_timeout=parse_duration(request_timeout, "--request-timeout") if request_timeout else None)


def _serve_dev(app: AppContext, root_token_id: str | None, listen: str | None) -> None:
    """``serve --dev``: a new store in a temp folder, a root token, then the ordinary server."""
    import sys

    from ..server.devmode import DEV_LISTEN, banner, dev_store
    from ..server.run import ServeOptions
    from ..server.run import serve as run_server
    from ..server.tokens import TOKEN_PREFIX, looks_like_token

    if root_token_id is not None and not looks_like_token(root_token_id):
        raise click.BadParameter(f"must start with {TOKEN_PREFIX} and be 40-64 characters long (tokens here "
                                 "always carry the prefix)", param_hint="--dev-root-token-id")
    with dev_store() as store:
        app.db, app.config_path, app._config = store.url, str(store.config_path), None
        app.vault(create=True).close()  # `init`
        vault, manager = _tokens(app)
        secret, _ = vault.audited_write(  # as `token create --policy root`: token and event together
            lambda tx: manager.create(["root"], token=root_token_id, display_name="root"),
            "server.token.create", lambda made: {"accessor": made[1].accessor, "policies": list(made[1].policies)})
        options = ServeOptions(listen=listen or DEV_LISTEN)
        click.echo(banner(options.listen, secret, store.folder))
        sys.stdout.flush()
        run_server(vault, options, url=store.url, config_path=str(store.config_path))


@click.group()
def token() -> None:
    """Server tokens (only accessors are ever listed; a token is shown once, at creation)."""


def default_display_name() -> str:
    """``cli-<OS user>``: the person who ran ``token create`` (``cli`` when the user cannot be told)."""
    import getpass

    try:
        return f"cli-{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


@token.command("create")
@click.option("--policy", "policies", multiple=True, required=True,
              help="Policy name (repeatable); root for everything.")
@click.option("--ttl", default=None, help="Lifetime, e.g. 24h (default server.default_ttl).")
@click.option("--display-name", default=None,
              help="Name shown for the token in lookups, the audit trail and the console "
                   "[default: cli-<your OS user>].")
@pass_app
def token_create(app: AppContext, policies: tuple[str, ...], ttl: str | None, display_name: str | None) -> None:
    """Create a token and print it once."""
    if display_name is None:  # who made it, so the console's audit view names someone
        display_name = default_display_name()
    vault, manager = _tokens(app)
    lifetime = parse_duration(ttl, "--ttl") if ttl else None
    secret, row = vault.audited_write(  # the token and its audit event commit together
        lambda tx: manager.create(list(policies), ttl=lifetime, display_name=display_name),
        "server.token.create", lambda made: {"accessor": made[1].accessor, "policies": list(made[1].policies)})
    from ..server.tokens import row_summary

    emit(app, {"token": secret, **row_summary(row)}, lambda: click.echo(secret))
    if not app.json:  # on stderr, so TOKEN=$(nebula-credential token create ...) captures the token alone
        err_console.print(f"accessor {row.accessor}, policies {', '.join(row.policies)}", style="dim", markup=False)


@token.command("list")
@pass_app
def token_list(app: AppContext) -> None:
    """Live tokens by accessor."""
    from ..server.tokens import row_summary

    _, manager = _tokens(app)
    rows = [row_summary(r) for r in manager.list()]

    def human() -> None:
        if not rows:
            console.print("no tokens")
        for r in rows:
            console.print(f"{r['accessor']}  {','.join(r['policies'])}  expires {r['expires_at'] or 'never'}",
                          markup=False)

    emit(app, {"tokens": rows}, human)


@token.command("revoke")
@click.argument("accessor")
@pass_app
def token_revoke(app: AppContext, accessor: str) -> None:
    """Revoke a token (and the tokens created with it) by accessor."""
    vault, manager = _tokens(app)
    def revoke(tx: object) -> int:
        count: int = manager.revoke(accessor)
        if count == 0:  # raised inside the transaction: nothing is written
            raise NebulaCredentialError(f"no live token with accessor {accessor}")
        return count

    count = vault.audited_write(revoke, "server.token.revoke", lambda n: {"accessor": accessor, "revoked": n})
    emit(app, {"accessor": accessor, "revoked": count},
         lambda: console.print(f"revoked {count} token(s)", markup=False))


@click.group()
def policy() -> None:
    """ACL policies in Vault's HCL (path "secret/data/app/*" { capabilities = ["read"] })."""


@policy.command("write")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def policy_write(app: AppContext, name: str, file: Path) -> None:
    from ..server.policies import BUILTIN, PolicyError, check_name, parse

    name = check_name(name)
    if name in BUILTIN:
        raise PolicyError(f"cannot change the built-in {name} policy")
    text = file.read_text(encoding="utf-8")
    parse(text)
    vault, policies = _policies(app)
    vault.audited_write(lambda tx: policies.put(name, text, tx), "server.policy.write", lambda _: {"policy": name})
    emit(app, {"name": name}, lambda: console.print(f"policy {name} written", markup=False))


@policy.command("read")
@click.argument("name")
@pass_app
def policy_read(app: AppContext, name: str) -> None:
    from ..server.policies import check_name

    name = check_name(name)
    _, policies = _policies(app)
    text = policies.get(name)
    if text is None:
        raise NebulaCredentialError(f"no policy named {name}")
    emit(app, {"name": name, "policy": text}, lambda: click.echo(text.rstrip("\n")))


@policy.command("list")
@pass_app
def policy_list(app: AppContext) -> None:
    _, policies = _policies(app)
    names = policies.names()
    emit(app, {"policies": names}, lambda: click.echo("\n".join(names)))


@policy.command("delete")
@click.argument("name")
@pass_app
def policy_delete(app: AppContext, name: str) -> None:
    from ..server.policies import check_name

    name = check_name(name)
    vault, policies = _policies(app)

    def delete(tx: ServerTx) -> None:
        if not policies.delete(name, tx):  # raised inside the transaction: nothing is written
            raise NebulaCredentialError(f"no policy named {name}")

    vault.audited_write(delete, "server.policy.delete", lambda _: {"policy": name})
    emit(app, {"name": name, "deleted": True}, lambda: console.print(f"policy {name} deleted", markup=False))
