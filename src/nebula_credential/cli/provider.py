"""provider rotate | check | show: the root of trust."""

from __future__ import annotations

import time

import click

from ..rootkeys import root_key_usage, rotate_root_key
from ._common import AppContext, console, emit, pass_app


@click.group()
def provider() -> None:
    """Inspect and rotate the root key (local file, HSM, KMS)."""


@provider.command()
@pass_app
def rotate(app: AppContext) -> None:
    """Rotate the root key and rewrap every DEK; no credential is re-encrypted."""
    vault = app.vault()
    result = rotate_root_key(vault.store, vault.provider, vault.audit)
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
    usage = root_key_usage(vault.store)
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
