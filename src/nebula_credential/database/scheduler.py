"""The database engine's part of ``maintain``: static rotations that are due and the lease sweep.

``maintain`` runs per keyring; each database mount recorded its keyring at
its first write, so the pass over that keyring is the one that serves the
mount.  One rotation per due time across every instance comes from the
rotation lease each static role takes in the store (:mod:`.static`), and one
revocation per lease from the lease claim (:mod:`~nebula_credential.leases`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..exceptions import NebulaCredentialError
from .engine import MOUNT_KIND, DatabaseEngine
from .items import Items

if TYPE_CHECKING:
    from ..vault import Vault

logger = logging.getLogger(__name__)


def mounts_of(vault: Vault) -> list[tuple[str, str]]:
    """(mount, keyring) of every database mount in the store (rows whose MAC fails are skipped)."""
    with vault.store.read() as tx:
        mounts = tx.db_item_mounts()
    out = []
    for mount in mounts:
        try:
            found = Items(vault, mount).get(MOUNT_KIND, "")
        except NebulaCredentialError as exc:
            logger.warning("database mount %s skipped: %s", mount, exc)
            continue
        if found is not None:
            out.append((mount, str(found[0].get("keyring") or "")))
    return out


def run(vault: Vault) -> dict[str, Any] | None:
    """Rotate, retire and settle static roles and sweep expired leases of the mounts whose keyring is
    ``vault``'s; None when there is none."""
    mine = [(m, k) for m, k in mounts_of(vault) if k == vault.keyring_name]
    if not mine:
        return None
    out: dict[str, Any] = {}
    for mount, keyring in mine:
        engine = DatabaseEngine(vault, mount, keyring=keyring)
        entry: dict[str, Any] = {}
        try:
            results = engine.run_due()
            entry["rotations"] = [{"role": r.role, "outcome": r.outcome, "username": r.username, "error": r.error}
                                  for r in results if r.outcome != "not-due"]
        except NebulaCredentialError as exc:
            logger.error("database mount %s: static rotations failed: %s", mount, exc)
            entry["error"] = str(exc)
        try:
            entry["leases"] = engine.leases.sweep(mount=mount).to_json()
        except NebulaCredentialError as exc:
            logger.error("database mount %s: lease sweep failed: %s", mount, exc)
            entry["lease_error"] = str(exc)
        out[mount] = entry
    return out


def health(vault: Vault) -> dict[str, dict[str, int]]:
    """Per mount: static roles overdue for rotation, and those whose last attempts failed (the metrics)."""
    from .static import StaticRoles

    out: dict[str, dict[str, int]] = {}
    now = vault.clock().timestamp()
    for mount, keyring in mounts_of(vault):
        engine = DatabaseEngine(vault, mount, keyring=keyring)
        overdue = failing = 0
        for name in engine.static.names():
            try:
                role = engine.static.get(name)
                state, _ = engine.static._state(name)
            except NebulaCredentialError:
                failing += 1
                continue
            overdue += StaticRoles.overdue(role, state, now)
            failing += state.failures > 0 or state.pending is not None
        out[mount] = {"overdue": overdue, "failing": failing}
    return out
