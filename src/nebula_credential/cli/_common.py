"""What every command shares: global options, opening the vault, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from ..exceptions import StoreError

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import KeyManagementConfig
    from ..opening import KeyProvider
    from ..vault import Vault

# Start-up: this module is imported by every command, ``--help`` included, so the
# store, the providers and rich are imported where first used, not here.

DB_ENV = "NEBULA_CREDENTIAL_DB"
CONFIG_ENV = "NEBULA_CREDENTIAL_CONFIG"
CONFIG_NAME = "nebula-credential.toml"


def config_candidates() -> list[Path]:
    """Where a config file is looked for when neither --config nor the env names one, in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [
        Path.cwd() / CONFIG_NAME,
        Path(xdg) / "nebula-credential" / "config.toml",
        Path("/etc/nebula-credential/config.toml"),
    ]


def discover_config() -> Path | None:
    """The first existing file of :func:`config_candidates`, or None."""
    return next((p for p in config_candidates() if p.is_file()), None)


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:`` URL names (None for other stores and ``:memory:``)."""
    if not url.startswith("sqlite:"):
        return None
    from ..opening import path_from_url

    path = path_from_url(url)
    return None if path == ":memory:" else Path(path)


@dataclass
class AppContext:
    """Global options, parsed once; commands get it with ``@pass_app``."""

    db: str | None
    config_path: str | None
    keyring: str
    json: bool
    debug: bool
    _config: KeyManagementConfig | None = None
    _vaults: list[Vault] = field(default_factory=list)

    @property
    def config(self) -> KeyManagementConfig:
        if self._config is None:
            from ..config import KeyManagementConfig

            path = self.config_path or discover_config()
            self._config = KeyManagementConfig.load(path) if path else KeyManagementConfig()
        return self._config

    @property
    def url(self) -> str:
        from ..config import DEFAULT_DB_URL

        if self.db:
            return self.db
        if self.config.store.url != DEFAULT_DB_URL:
            return self.config.store.url
        return DEFAULT_DB_URL

    def existing_url(self) -> str:
        """The store URL for a command that reads: a missing SQLite file is an error, never created.

        With nothing configured the error says how to name a store; with a
        named path that does not exist it says so (a typo must not become a
        second, empty store with a second root key).
        """
        url = self.url
        path = sqlite_file(url)
        if path is None or path.exists():
            return url
        from ..config import DEFAULT_DB_URL
        from ..opening import redact_url

        if url == DEFAULT_DB_URL and not self.db:
            places = ", ".join(str(p) for p in config_candidates())
            raise StoreError(
                f"no store configured and none at {path.resolve()}: name one with --db URL, the environment "
                f"variable {DB_ENV}, or [store] url in a config file (--config, {CONFIG_ENV}, or one of "
                f"{places}); to create a new store here run `nebula-credential init`")
        raise StoreError(f"no store at {redact_url(url)}: the file {path.resolve()} does not exist "
                         "(check the path; `nebula-credential init` creates a new store)")

    def vault(self, *, create: bool = False, keyring: str | None = None,
              provider: KeyProvider | None = None) -> Vault:
        from ..opening import open as open_vault

        url = self.url if create else self.existing_url()
        v = open_vault(url, config=self.config, keyring=keyring or self.keyring, create=create,
                       provider=provider)
        self._vaults.append(v)
        return v

    def close(self) -> None:
        for v in self._vaults:
            v.close()
        self._vaults.clear()


pass_app = click.make_pass_decorator(AppContext)

#: A key version as the envelope header holds it (uint32); 2**70 is a usage error, not an overflow.
KEY_VERSION = click.IntRange(1, 2**32 - 1)

def _console(stderr: bool) -> Console:
    """Markup off (ids and stored text print literally); no wrapping or cropping off a terminal.

    The stream is looked up at each write (``main(argv)`` may run under a
    test's captured stdout); whether it is a terminal is decided once.
    """
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False,
                   soft_wrap=not tty, width=None if tty else 100_000)


class _LazyConsole:
    """Stands in for a rich Console until the first print: commands that print
    only JSON or plain lines (``get``, ``--help``) never import rich."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def real(self) -> Console:
        if self._console is None:
            self._console = _console(self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    # special methods are looked up on the type, not through __getattr__ (rich's Live uses these)
    def __enter__(self) -> Console:
        return self.real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.real().__exit__(*exc)


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


def emit(app: AppContext, data: Any, human: Callable[[], None] | None = None) -> None:
    """``--json``: one JSON document on stdout; otherwise the human rendering."""
    if app.json or human is None:
        click.echo(json.dumps(data, indent=None if app.json else 2, default=str))
    else:
        human()


def emit_line(app: AppContext, data: Any) -> None:
    """One JSON line (for streams such as ``audit list --json``)."""
    click.echo(json.dumps(data, default=str, separators=(",", ":")))


def is_tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
