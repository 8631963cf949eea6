"""provider rotate | check | show | add-escrow | recover: the root of trust."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from ..config import KeyManagementConfig
from ..escrow import escrow_vault, recover_from_escrow
from ..exceptions import ConfigError
from ..opening import KeyProvider, local_root, open_root, open_store
from ..rootkeys import rotate_vault_root_key, vault_root_key_usage
from ._common import AppContext, console, emit, pass_app


@click.group()
def provider() -> None:
    """Inspect and rotate the root key (local file, HSM, KMS)."""


@provider.command()
@pass_app
def rotate(app: AppContext) -> None:
    """Rotate the root key and rewrap every DEK; no credential is re-encrypted."""
    vault = app.vault()
    result = rotate_vault_root_key(vault)
    emit(
        app,
        result.to_json(),
        lambda: console.print(
            f"rotated root key {result.old_root_key_id} -> {result.new_root_key_id}; rewrapped "
            f"{result.rewrapped} data key(s) in {len(result.keyrings)} keyring(s) and the audit key"
            f"{' inside the provider' if result.server_side else ''}; no credential re-encrypted",
            markup=False,
        ),
    )


@provider.command()
@pass_app
def check(app: AppContext) -> None:
    """One wrap/unwrap round trip through the provider."""
    vault = app.vault()
    start = time.perf_counter()
    vault.provider.check()
    ms = (time.perf_counter() - start) * 1000
    data = {
        "ok": True,
        "provider": vault.provider.name,
        "root_key_id": vault.provider.root_key_id(),
        "milliseconds": round(ms, 2),
    }
    emit(
        app,
        data,
        lambda: console.print(
            f"{vault.provider.name} provider ok ({ms:.1f} ms round trip), "
            f"root key {data['root_key_id']}",
            markup=False,
        ),
    )


@provider.command()
@pass_app
def show(app: AppContext) -> None:
    """The provider's settings (never secrets) and which root key wraps how many DEKs."""
    vault = app.vault()
    described = vault.provider.describe()
    usage = vault_root_key_usage(vault)
    data = {
        "provider": described,
        "root_key_id": vault.provider.root_key_id(),
        "server_side_rewrap": vault.provider.server_side_rewrap,
        "wrapped_keys_by_root": usage,
    }

    def human() -> None:
        for k, v in described.items():
            console.print(f"{k:>18}: {v}", markup=False)
        for root, n in usage.items():
            console.print(f"{'wrapped by':>18}: {root} ({n} data key(s))", markup=False)

    emit(app, data, human)


def _escrow_provider(key_file: str | None, config_path: str | None, *, create: bool) -> KeyProvider:
    """The second root: a local key file (kept offline) or a provider section of its own TOML file."""
    if (key_file is None) == (config_path is None):
        raise click.UsageError("give exactly one of --escrow-key-file or --escrow-config")
    if key_file is not None:
        path = Path(key_file)
        return local_root(path, create=create and not path.exists())
    assert config_path is not None
    pcfg = KeyManagementConfig.load(config_path).provider
    if not pcfg.explicit:
        raise ConfigError("--escrow-config", f"{config_path} has no [provider] section")
    return open_root(pcfg, base_dir=Path(config_path).resolve().parent)


_ESCROW_OPTIONS = (
    click.option("--escrow-key-file", type=click.Path(dir_okay=False),
                 help="A second local root key file (created 0600 if missing); keep it offline."),
    click.option("--escrow-config", type=click.Path(dir_okay=False, exists=True),
                 help="A TOML file whose [provider] section is the escrow root (e.g. a second KMS key)."),
)


def _escrow_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_ESCROW_OPTIONS):
        fn = option(fn)
    return fn


@provider.command(name="add-escrow")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Escrow file to write (0600).")
@_escrow_options
@pass_app
def add_escrow_cmd(app: AppContext, out: str, escrow_key_file: str | None, escrow_config: str | None) -> None:
    """Export every data key and the audit key wrapped under a second root, for recovery."""
    vault = app.vault()
    escrow = _escrow_provider(escrow_key_file, escrow_config, create=True)
    try:
        if escrow.root_key_id() == vault.provider.root_key_id():
            raise ConfigError("--escrow-key-file", "the escrow root is the primary root; use a second key")
        result = escrow_vault(vault, escrow, out)
    finally:
        escrow.close()
    emit(app, result.to_json(), lambda: console.print(
        f"escrowed {len(result.versions)} data key(s) and the audit key under {escrow.name} root "
        f"{result.escrow_root_key_id} in {out}; keep the escrow root offline, and run this again "
        "after every rotation", markup=False))


@provider.command()
@click.option("--from-escrow", "escrow_file", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The escrow file written by `provider add-escrow`.")
@_escrow_options
@click.option("--accept-loss", is_flag=True, help="Recover even if the escrow lacks newer versions.")
@pass_app
def recover(app: AppContext, escrow_file: str, escrow_key_file: str | None, escrow_config: str | None,
            accept_loss: bool) -> None:
    """The primary root is lost: rewrap every data key from the escrow under the configured root."""
    escrow = _escrow_provider(escrow_key_file, escrow_config, create=False)
    store = open_store(app.url)
    try:
        result = recover_from_escrow(store, escrow, escrow_file, app.config, accept_loss=accept_loss)
    finally:
        escrow.close()
        store.close()
    emit(app, result.to_json(), lambda: console.print(
        f"recovered {len(result.rewrapped)} data key(s) and the audit key under {result.provider} root "
        f"{result.root_key_id}"
        + (f"; LOST {', '.join(result.lost)} ({sum(result.lost.values())} credential(s))" if result.lost else ""),
        markup=False))
