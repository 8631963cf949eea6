"""keys list | show | rotate | revoke | reinstate | destroy."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import click

from ..models import KeyVersion

if TYPE_CHECKING:
    from rich.table import Table
from ._common import KEY_VERSION, AppContext, console, emit, pass_app
from ._lazy import Lazy, LazyGroup

_STYLE = {"active": "bold green", "valid": "cyan", "grace": "yellow", "revoked": "red", "destroyed": "dim"}


def _retired(kv: KeyVersion) -> str:
    if kv.destroyed_at is not None:
        return f"destroyed {kv.destroyed_at:%Y-%m-%d %H:%M}"
    if kv.revoked_at is not None:
        return f"revoked {kv.revoked_at:%Y-%m-%d %H:%M}"
    if kv.status.value in ("valid", "grace") and kv.status_changed_at is not None:
        return f"{kv.status.value} since {kv.status_changed_at:%Y-%m-%d %H:%M}"
    return "-"


def versions_table(keyring: str, versions: list[KeyVersion], counts: dict[int, int],
                   max_key_age: timedelta | None = None) -> Table:
    """Every version, retired ones included, with its expiry and when it left service.

    A version without a recorded expiry (made by an older release) shows
    ``created + max_key_age``, the same fallback ``before-expiry`` uses.
    """
    from rich.table import Table  # only when a table is printed (start-up of the other commands)
    from rich.text import Text

    table = Table("version", "status", "created", "expires", "retired", "credentials",
                  title=Text(f"keyring {keyring}"))
    for kv in versions:
        expires = kv.expires_at or (kv.created_at + max_key_age if max_key_age else None)
        table.add_row(
            str(kv.version),
            Text(kv.status.value, style=_STYLE[kv.status.value]),
            kv.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            expires.strftime("%Y-%m-%d") if expires else "-",
            _retired(kv),
            str(counts.get(kv.version, 0)),
        )
    return table


def keys_json(keyring: str, versions: list[KeyVersion], counts: dict[int, int]) -> dict[str, object]:
    return {"keyring": keyring, "versions": [kv.to_json(counts.get(kv.version, 0)) for kv in versions]}


#: ``keys cleanup`` lives with the other retention commands (cli.maintenance).
_CLEANUP = Lazy("nebula_credential.cli.maintenance:cleanup_cmd",
                "Destroy revoked versions the retention policy allows and no credential uses.")


@click.group(cls=LazyGroup, lazy={"cleanup": _CLEANUP})
def keys() -> None:
    """Inspect and manage key versions."""


@keys.command(name="list")
@pass_app
def list_keys(app: AppContext) -> None:
    """All versions with status, dates and how many credentials use each."""
    km = app.vault().keys
    versions, counts = km.list(), km.credential_counts()
    emit(app, keys_json(km.keyring, versions, counts),
         lambda: console.print(versions_table(km.keyring, versions, counts, app.config.keys.max_key_age)))


@keys.command()
@click.argument("version", type=KEY_VERSION)
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
@click.option("--reason", default="manual", show_default=True, help="Why (recorded in the audit trail).")
@pass_app
def rotate(app: AppContext, reason: str) -> None:
    """Create a new active version; old versions keep decrypting.

    \b
    Example: nebula-credential keys rotate --reason "quarterly" && nebula-credential reencrypt
    """
    km = app.vault().keys
    old = km.active_version().version
    kv = km.rotate(reason=reason)
    assert kv is not None
    emit(app, {"keyring": km.keyring, "old_version": old, "new_version": kv.version},
         lambda: console.print(f"rotated keyring {km.keyring}: v{old} -> v{kv.version}; "
                               "run `nebula-credential reencrypt` to move credentials"))


@keys.command()
@click.argument("version", type=KEY_VERSION)
@click.option("--reason", default="operator", show_default=True, help="Why (recorded in the audit trail).")
@pass_app
def revoke(app: AppContext, version: int, reason: str) -> None:
    """Stop a version from decrypting (reversible with reinstate)."""
    kv = app.vault().keys.revoke(version, reason=reason)
    emit(app, kv.to_json(), lambda: console.print(f"revoked v{version}"))


@keys.command()
@click.argument("version", type=KEY_VERSION)
@pass_app
def reinstate(app: AppContext, version: int) -> None:
    """Bring a revoked version back to valid."""
    kv = app.vault().keys.reinstate(version)
    emit(app, kv.to_json(), lambda: console.print(f"reinstated v{version} (now valid)"))


@keys.command()
@click.argument("version", type=KEY_VERSION)
@click.option("--force", is_flag=True,
              help="Waive the retention settings: the policy's minimum and keep_versions "
                   "(needs --yes-destroy-key-version). Never skips the revoked status, the reference "
                   "check, the floor or a backup hold.")
@click.option("--yes-destroy-key-version", "confirm", type=KEY_VERSION, metavar="V",
              help="Typed confirmation for --force: the version number again.")
@pass_app
def destroy(app: AppContext, version: int, force: bool, confirm: int | None) -> None:
    """Erase a revoked, unused version's wrapped material for good (row kept as tombstone).

    Only a version revoked for at least twice refresh_interval, referenced by
    no stored row, needed by no registered backup, outside [retention]
    keep_versions and allowed by the retention policy (--force waives those two).
    """
    if force and confirm != version:
        raise click.UsageError(
            f"--force destroys key version {version} despite the retention minimum and keep_versions; "
            f"confirm with --yes-destroy-key-version {version}"
        )
    if confirm is not None and not force:
        raise click.UsageError("--yes-destroy-key-version confirms --force; pass both or neither")
    kv = app.vault().keys.destroy(version, force_retention=force)
    emit(app, kv.to_json(), lambda: console.print(f"destroyed v{version}"))
