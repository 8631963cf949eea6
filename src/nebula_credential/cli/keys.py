"""keys list | show | rotate | revoke | reinstate | destroy."""

from __future__ import annotations

import click
from rich.table import Table

from ..models import KeyVersion
from ._common import AppContext, console, emit, pass_app

_STYLE = {"active": "bold green", "valid": "cyan", "grace": "yellow", "revoked": "red", "destroyed": "dim"}


def versions_table(keyring: str, versions: list[KeyVersion], counts: dict[int, int]) -> Table:
    table = Table("version", "status", "created", "expires", "credentials", title=f"keyring {keyring}")
    for kv in versions:
        table.add_row(
            str(kv.version),
            f"[{_STYLE[kv.status.value]}]{kv.status.value}[/]",
            kv.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            kv.expires_at.strftime("%Y-%m-%d") if kv.expires_at else "-",
            str(counts.get(kv.version, 0)),
        )
    return table


def keys_json(keyring: str, versions: list[KeyVersion], counts: dict[int, int]) -> dict[str, object]:
    return {"keyring": keyring, "versions": [kv.to_json(counts.get(kv.version, 0)) for kv in versions]}


@click.group()
def keys() -> None:
    """Inspect and manage key versions."""


@keys.command(name="list")
@pass_app
def list_keys(app: AppContext) -> None:
    """All versions with status, dates and how many credentials use each."""
    km = app.vault().keys
    versions, counts = km.list(), km.credential_counts()
    emit(app, keys_json(km.keyring, versions, counts),
         lambda: console.print(versions_table(km.keyring, versions, counts)))


@keys.command()
@click.argument("version", type=int)
@pass_app
def show(app: AppContext, version: int) -> None:
    """Details of one version (never its material)."""
    km = app.vault().keys
    kv = km.version(version)
    data = kv.to_json(km.credential_counts().get(version, 0)) | {
        "keyring": km.keyring,
        "provider": kv.provider,
        "root_key_id": kv.root_key_id,
        "status_changed_at": kv.status_changed_at.isoformat() if kv.status_changed_at else None,
        "revoked_at": kv.revoked_at.isoformat() if kv.revoked_at else None,
        "destroyed_at": kv.destroyed_at.isoformat() if kv.destroyed_at else None,
        "encryptions_reserved": kv.encryptions,
        "reason": kv.reason,
    }
    def human() -> None:
        for k, v in data.items():
            console.print(f"{k:>22}: {v}")

    emit(app, data, human)


@keys.command()
@click.option("--reason", default="manual", show_default=True)
@pass_app
def rotate(app: AppContext, reason: str) -> None:
    """Create a new active version; old versions keep decrypting."""
    km = app.vault().keys
    old = km.active_version().version
    kv = km.rotate(reason=reason)
    assert kv is not None
    emit(app, {"keyring": km.keyring, "old_version": old, "new_version": kv.version},
         lambda: console.print(f"rotated keyring {km.keyring}: v{old} -> v{kv.version}; "
                               "run `nebula-credential reencrypt` to move credentials"))


@keys.command()
@click.argument("version", type=int)
@click.option("--reason", default="operator", show_default=True)
@pass_app
def revoke(app: AppContext, version: int, reason: str) -> None:
    """Stop a version from decrypting (reversible with reinstate)."""
    kv = app.vault().keys.revoke(version, reason=reason)
    emit(app, kv.to_json(), lambda: console.print(f"revoked v{version}"))


@keys.command()
@click.argument("version", type=int)
@pass_app
def reinstate(app: AppContext, version: int) -> None:
    """Bring a revoked version back to valid."""
    kv = app.vault().keys.reinstate(version)
    emit(app, kv.to_json(), lambda: console.print(f"reinstated v{version} (now valid)"))


@keys.command()
@click.argument("version", type=int)
@click.option("--force", is_flag=True,
              help="Destroy before the retention policy's minimum has passed (needs --yes-destroy-key-version). "
                   "Never skips the revoked status, the reference check or the floor.")
@click.option("--yes-destroy-key-version", "confirm", type=int, metavar="V",
              help="Typed confirmation for --force: the version number again.")
@pass_app
def destroy(app: AppContext, version: int, force: bool, confirm: int | None) -> None:
    """Erase a revoked, unused version's wrapped material for good (row kept as tombstone).

    Only a version revoked for at least twice refresh_interval, referenced by
    no stored row, and allowed by the retention policy (unless --force).
    """
    if force and confirm != version:
        raise click.UsageError(
            f"--force destroys key version {version} before the retention minimum; "
            f"confirm with --yes-destroy-key-version {version}"
        )
    if confirm is not None and not force:
        raise click.UsageError("--yes-destroy-key-version confirms --force; pass both or neither")
    kv = app.vault().keys.destroy(version, force_retention=force)
    emit(app, kv.to_json(), lambda: console.print(f"destroyed v{version}"))
