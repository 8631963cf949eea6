"""Backup holds: which key versions an unexpired backup still needs.

The engine's destroy guard asks :func:`holds` inside the destroy
transaction, so this lives below the backup operations
(:mod:`nebula_credential.backups` registers backups; this module only
reads what is registered and the facts a manifest records about a store).
The engine never imports an operation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from .models import KeyStatus, KeyVersion
from .store import Store, StoreTx

#: Meta key of the store's stable id, which a backup manifest records to be matched to its store.
STORE_ID_META = "store_id"


@dataclass(frozen=True, slots=True)
class Hold:
    """An unexpired backup that needs a key version."""

    backup: str
    until: datetime

    def __str__(self) -> str:
        return f"needed by backup {self.backup} until {self.until.strftime('%Y-%m-%d %H:%M:%S UTC')}"


def holds(tx: StoreTx, keyring: str, version: int, now: datetime) -> Hold | None:
    """The unexpired backup (latest expiry first) that needs ``version``, if any.

    Called by the destroy guard inside the destroy transaction, so a backup
    registered concurrently either commits first (and is seen) or waits.
    """
    found = tx.backup_holds(keyring, version, now)
    return Hold(*found[0]) if found else None


def held_versions(store: Store, keyring: str, now: datetime) -> list[tuple[KeyVersion, Hold]]:
    """Versions with material left that an unexpired backup still needs (for cleanup and doctor)."""
    out = []
    with store.read() as tx:
        for kv in tx.list_versions(keyring):
            if kv.status is KeyStatus.DESTROYED:
                continue
            hold = holds(tx, keyring, kv.version, now)
            if hold is not None:
                out.append((kv, hold))
    return out


def referenced_versions(tx: StoreTx) -> dict[str, dict[int, int]]:
    """Credentials per keyring per key version, by envelope header (what decryption needs)."""
    out = {kr: tx.versions_referenced(kr) for kr in tx.keyrings()}
    return {kr: per for kr, per in out.items() if per}


def ensure_store_id(tx: StoreTx) -> str:
    """The store's stable id (created on first use), so a copy can be matched to its store."""
    sid = tx.get_meta(STORE_ID_META)
    if sid is None:
        sid = str(uuid.uuid4())
        tx.set_meta(STORE_ID_META, sid)
    return sid
