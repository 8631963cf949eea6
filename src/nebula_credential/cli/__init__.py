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
from ..exceptions import NebulaCredentialError
from ._common import CONFIG_ENV, DB_ENV, AppContext
from .audit import audit
from .backup import backup
from .credentials import delete, get, import_, list_, put
from .demo import demo
from .keys import keys
from .maintenance import cleanup_cmd, daemon, maintain
from .migrate import adopt, doctor
from .ops import init, reencrypt, status
from .provider import provider
from .server import policy, serve, token
from .transit import transit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar=DB_ENV, help=f"Store URL (env {DB_ENV}; default sqlite:///./nebula-credential.db).")
@click.option("--config", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
              help=f"TOML config file (env {CONFIG_ENV}).")
@click.option("--keyring", default="default", show_default=True, help="Keyring (one per tenant).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="nebula-credential")
@click.pass_context
def cli(ctx: click.Context, db: str | None, config_path: str | None, keyring: str, as_json: bool, debug: bool) -> None:
    """Key management for credential stores."""
    app = AppContext(db=db, config_path=config_path, keyring=keyring, json=as_json, debug=debug)
    ctx.obj = app
    ctx.call_on_close(app.close)
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    logredact.install()


keys.add_command(cleanup_cmd)
for command in (
    init,
    put,
    get,
    delete,
    list_,
    import_,
    keys,
    reencrypt,
    status,
    adopt,
    doctor,
    demo,
    maintain,
    daemon,
    audit,
    provider,
    serve,
    token,
    policy,
    backup,
    transit,
):
    cli.add_command(command)


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
    return rc if isinstance(rc, int) else 0
