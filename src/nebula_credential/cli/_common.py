"""What every command shares: global options, opening the vault, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console

from ..config import DEFAULT_DB_URL, KeyManagementConfig
from ..providers import KeyProvider
from ..vault import Vault
from ..vault import open as open_vault

DB_ENV = "NEBULA_CREDENTIAL_DB"
CONFIG_ENV = "NEBULA_CREDENTIAL_CONFIG"


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
            self._config = (
                KeyManagementConfig.load(self.config_path) if self.config_path else KeyManagementConfig()
            )
        return self._config

    @property
    def url(self) -> str:
        if self.db:
            return self.db
        if self.config.store.url != DEFAULT_DB_URL:
            return self.config.store.url
        return DEFAULT_DB_URL

    def vault(self, *, create: bool = False, keyring: str | None = None,
              provider: KeyProvider | None = None) -> Vault:
        v = open_vault(self.url, config=self.config, keyring=keyring or self.keyring, create=create,
                       provider=provider)
        self._vaults.append(v)
        return v

    def close(self) -> None:
        for v in self._vaults:
            v.close()
        self._vaults.clear()


pass_app = click.make_pass_decorator(AppContext)

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


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
