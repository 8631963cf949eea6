"""Click groups whose subcommands are imported only when one is run.

Each command module imports what its command needs (the store, providers,
``rich``, the server...), and all of them together were most of the
command line's start-up.  A :class:`LazyGroup` maps a command name to
``"module:attribute"`` and imports the module the first time that command is
resolved, so ``nebula-credential get ID`` imports the credential commands
and ``--help`` imports none.  The listing in ``--help`` uses the short help
kept beside each name (``tests/test_cli_startup.py`` checks it matches the
command's own).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click


class Lazy(NamedTuple):
    """Where a subcommand lives and the one line ``--help`` lists for it."""

    target: str  # "package.module:attribute"
    short_help: str


class LazyGroup(click.Group):
    """A :class:`click.Group` with subcommands loaded on first use (see the module docstring)."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, Lazy] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, cmd_name: str) -> click.Command:
        module_name, _, attr = self.lazy[cmd_name].target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name].target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's listing, with a not-yet-loaded command's short help taken from :attr:`lazy`."""
        names = self.list_commands(ctx)
        shown = [n for n in names if n not in self.commands or not self.commands[n].hidden]
        if not shown:
            return
        limit = formatter.width - 6 - max(len(n) for n in shown)
        rows = []
        for name in shown:
            loaded = self.commands.get(name)
            # an unloaded command's line, shortened exactly as click shortens a command's own help
            text = (loaded or click.Command(name, help=self.lazy[name].short_help)).get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
