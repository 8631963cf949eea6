"""The ``nebula-credential`` command line.

``main(argv) -> int`` maps the exception root to one ``error:`` line on
stderr and exit status 1 (2 for usage errors); tracebacks only with
``--debug``.  Each command group lives in its own module.
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from .. import logredact
from .._version import __version__
from ..exceptions import NebulaCredentialError
from ..names import check_keyring
from ._common import CONFIG_ENV, DB_ENV, AppContext
from ._lazy import Lazy, LazyGroup

_M = "nebula_credential.cli."

#: Every top-level command: where it lives and the line ``--help`` lists (see :mod:`._lazy`).
COMMANDS: dict[str, Lazy] = {
    "adopt": Lazy(_M + "migrate:adopt",
                  "Adopt secrets encrypted under one legacy key (Fernet or AES-GCM) as managed credentials."),
    "audit": Lazy(_M + "audit:audit", "Inspect and verify the tamper-evident audit trail."),
    "approle": Lazy(_M + "auth:approle", "AppRole roles and secret ids (mount auth/approle)."),
    "auth": Lazy(_M + "auth:auth", "Auth methods: how machines and people log in to ``serve``."),
    "backup": Lazy(_M + "backup:backup",
                   "Backups that retention knows about: create, register, list, verify, restore."),
    "daemon": Lazy(_M + "maintenance:daemon",
                   "Run maintain every --interval; SIGTERM/SIGINT finish the current batch and exit."),
    "db": Lazy(_M + "database:db", "Database credentials (PostgreSQL): connections, static and dynamic roles, leases."),
    "delete": Lazy(_M + "credentials:delete",
                   "Delete a credential and every version of it (or, with --versions, soft-delete some versions)."),
    "destroy-versions": Lazy(_M + "credentials:destroy_versions",
                             "Erase versions of a credential for good: their envelopes are removed from the store."),
    "demo": Lazy(_M + "demo:demo",
                 "The whole lifecycle on a throwaway SQLite store: import, rotate, re-encrypt, tamper."),
    "doctor": Lazy(_M + "migrate:doctor",
                   "Check the store, keys, root of trust and audit chain; explain each problem with its fix."),
    "get": Lazy(_M + "credentials:get", "Print a credential's value (secrets go to stdout only)."),
    "import": Lazy(_M + "credentials:import_",
                   'Import credentials from JSONL: one {"id","scope","value","metadata"} per line (streamed).'),
    "init": Lazy(_M + "ops:init", "Initialise a store and its keyring (creates the root key for the local provider)."),
    "keys": Lazy(_M + "keys:keys", "Inspect and manage key versions."),
    "list": Lazy(_M + "credentials:list_",
                 "List credentials (ids, scopes, key versions; never values), streamed in id order."),
    "maintain": Lazy(_M + "maintenance:maintain",
                     "One scheduler pass: rotate if due, re-encrypt, advance lifecycle, clean up."),
    "policy": Lazy(_M + "server:policy",
                   'ACL policies in Vault\'s HCL (path "secret/data/app/*" { capabilities = ["read"] }).'),
    "provider": Lazy(_M + "provider:provider", "Inspect and rotate the root key (local file, HSM, KMS)."),
    "put": Lazy(_M + "credentials:put", "Store a credential (JSON value) under ID."),
    "reencrypt": Lazy(_M + "ops:reencrypt",
                      "Move every credential to the active key version (safe to interrupt and run again)."),
    "serve": Lazy(_M + "server:serve", "Serve the store over Vault's HTTP API (KV v2, tokens, ACL policies)."),
    "status": Lazy(_M + "ops:status", "Versions, re-encryption progress and firing alerts."),
    "token": Lazy(_M + "server:token",
                  "Server tokens (only accessors are ever listed; a token is shown once, at creation)."),
    "userpass": Lazy(_M + "auth:userpass", "userpass users (mount auth/userpass)."),
    "undelete": Lazy(_M + "credentials:undelete",
                     "Bring back soft-deleted versions of a credential (a destroyed version stays destroyed)."),
    "versions": Lazy(_M + "credentials:versions",
                     "List a credential's versions: number, created, deleted, destroyed (never values)."),
    "transit": Lazy(_M + "transit:transit", "Transit keys (encryption as a service) without the HTTP server."),
}


class GlobalOptionsGroup(LazyGroup):
    """A group whose own options may also be written after the subcommand.

    ``nebula-credential keys list --json`` and ``nebula-credential --json keys
    list`` mean the same: before parsing, every occurrence of one of this
    group's options (``--json``, ``--db URL``, ``--db=URL``, ...) is moved in
    front of the subcommand.  The options are defined once, on the group;
    ``--`` ends the search, so a value after it is never touched.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        arity: dict[str, int] = {}
        for param in self.params:
            if isinstance(param, click.Option) and not param.is_eager:
                for name in (*param.opts, *param.secondary_opts):
                    arity[name] = 0 if param.is_flag else 1
        front: list[str] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":  # noqa: S105 - the end-of-options marker, not a secret
                rest.extend(args[i:])
                break
            name = token.split("=", 1)[0] if token.startswith("--") else token
            takes = arity.get(name)
            if takes is None or (takes == 0 and "=" in token):
                rest.append(token)
            elif takes == 1 and "=" not in token and i + 1 < len(args):
                front.extend(args[i:i + 2])
                i += 1
            else:
                front.append(token)
            i += 1
        return super().parse_args(ctx, front + rest)

    def resolve_command(
            self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """Unknown command: suggest the nested groups' commands it names (``rotate`` -> ``keys rotate``).

        Click already suggests close top-level names; a user who guesses
        ``nebula-credential rotate`` means a subcommand one level down, so
        those are searched too (exact names first, then close ones).
        """
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:
            import difflib  # a mistyped command only: start-up does without it (issue 27)

            guesses = self.nested_guesses(ctx, args[0])
            if not guesses or difflib.get_close_matches(args[0], self.list_commands(ctx)):
                raise  # click's own suggestion (a close top-level name) comes first
            listed = " or ".join(f"'{g}'" for g in guesses)
            raise click.NoSuchCommand(args[0], message=f"No such command {args[0]!r}. Did you mean {listed}?",
                                      ctx=ctx) from exc

    def nested_guesses(self, ctx: click.Context, name: str) -> list[str]:
        """``group sub`` for each nested group's subcommand named ``name`` (else close to it)."""
        nested: dict[str, list[str]] = {}
        for group_name in self.list_commands(ctx):
            group = self.get_command(ctx, group_name)
            # an engine's group (``db``) opts out: its ``rotate`` acts on a mount's roles, while a bare
            # ``nebula-credential rotate`` is someone looking for key rotation
            if isinstance(group, click.Group) and getattr(group, "suggest_nested", True):
                for sub in group.list_commands(ctx):
                    nested.setdefault(sub, []).append(f"{group_name} {sub}")
        if name in nested:
            return nested[name]
        import difflib

        close = difflib.get_close_matches(name, list(nested), n=2, cutoff=0.8)
        return [full for sub in close for full in nested[sub]]


@click.group(cls=GlobalOptionsGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Global options may be given before or after the command. Shell completion: "
                    'eval "$(_NEBULA_CREDENTIAL_COMPLETE=bash_source nebula-credential)" '
                    "(zsh_source, fish_source for other shells).")
@click.option("--db", envvar=DB_ENV, metavar="URL",
              help=f"Store URL (env {DB_ENV}; else [store] url of the config; "
                   "default sqlite:///./nebula-credential.db).")
@click.option("--config", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help=f"TOML config file (env {CONFIG_ENV}; else ./nebula-credential.toml, "
                   "$XDG_CONFIG_HOME/nebula-credential/config.toml, /etc/nebula-credential/config.toml).")
@click.option("--keyring", default="default", show_default=True, help="Keyring (one per tenant).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, package_name="nebula-credential")
@click.pass_context
def cli(ctx: click.Context, db: str | None, config_path: str | None, keyring: str, as_json: bool, debug: bool) -> None:
    """Key management for credential stores.

    \b
    Examples:
      nebula-credential init
      nebula-credential put github --scope production < token.json
      nebula-credential get github --field token
      nebula-credential keys rotate && nebula-credential reencrypt
      nebula-credential doctor
    """
    check_keyring(keyring, "--keyring")
    app = AppContext(db=db, config_path=config_path, keyring=keyring, json=as_json, debug=debug)
    ctx.obj = app
    ctx.call_on_close(app.close)
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    logredact.install()



def preload() -> None:
    """Import every command module now (and rich), as the eager command line did.

    For a process that forks one child per command (the test suite's fork
    server): each child then starts with everything imported, as a single
    command's start-up never needs.
    """
    ctx = click.Context(cli)
    groups: list[click.Group] = [cli]
    while groups:
        group = groups.pop()
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                groups.append(command)
    import rich.progress
    import rich.table  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rc = cli.main(args=argv, prog_name="nebula-credential", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 1
    except NebulaCredentialError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return 1
    except (OSError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:
        # A bug, not bad input; the message may quote data, so only the class is shown.
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected {type(exc).__name__}; run again with --debug for the traceback", err=True)
        return 1
    return rc if isinstance(rc, int) else 0
