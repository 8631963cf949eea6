"""Root-key rotation: a new root key version, every DEK rewrapped, nothing re-encrypted.

Credentials are encrypted under DEKs, and DEKs are stored wrapped by the
root key; rotating the root therefore touches only the wrapped DEKs (and
the wrapped audit key and the secrets registered in :mod:`.rootwrapped`),
one transaction per keyring.  Providers keep older root versions usable,
so a rotation interrupted half way leaves every DEK readable and running it
again finishes the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .fingerprint import write_fingerprint
from .models import KeyStatus
from .providers.base import KeyProvider, WrapContext
from .rootwrapped import rewrap_all
from .store import Store
from .vault import Vault


@dataclass(slots=True)
class RootRotationResult:
    old_root_key_id: str
    new_root_key_id: str
    rewrapped: int = 0
    skipped_destroyed: int = 0
    keyrings: dict[str, int] = field(default_factory=dict)
    server_side: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "old_root_key_id": self.old_root_key_id,
            "new_root_key_id": self.new_root_key_id,
            "rewrapped": self.rewrapped,
            "skipped_destroyed": self.skipped_destroyed,
            "keyrings": self.keyrings,
            "audit_key_rewrapped": True,
            "server_side_rewrap": self.server_side,
            "seconds": round(self.seconds, 3),
        }


def rewrap_keyring(
    store: Store, provider: KeyProvider, keyring: str, result: RootRotationResult
) -> int:
    """Rewrap every not-destroyed DEK of one keyring in one transaction."""
    root = provider.root_key_id()
    count = 0
    with store.transaction() as tx:
        tx.lock_keyring(keyring)
        for kv in tx.list_versions(keyring):
            if kv.wrapped_key is None or kv.status is KeyStatus.DESTROYED:
                result.skipped_destroyed += 1
                continue
            wrapped = provider.rewrap(kv.wrapped_key, WrapContext(keyring, kv.version))
            tx.set_wrapped_key(keyring, kv.version, wrapped, root)
            count += 1
    return count


def rotate_root_key(store: Store, provider: KeyProvider, audit: AuditLog) -> RootRotationResult:
    """Rotate the provider's root key, then rewrap every DEK and the audit key under it."""
    start = time.perf_counter()
    audit.load_key()  # prove the current root opens this store before changing anything
    old = provider.root_key_id()
    new = provider.rotate_root_key()
    result = RootRotationResult(old, new, server_side=provider.server_side_rewrap)
    with store.read() as tx:
        keyrings = tx.keyrings()
    for keyring in keyrings:
        n = rewrap_keyring(store, provider, keyring, result)
        result.keyrings[keyring] = n
        result.rewrapped += n
    result.seconds = time.perf_counter() - start
    with store.transaction() as tx:
        audit.rewrap_key(tx)
        rewrap_all(tx, provider)  # the other root-wrapped secrets (the server's token key)
        write_fingerprint(tx, provider)
        audit.record(
            tx,
            "provider.rotate",
            provider=provider.name,
            old_root_key_id=old,
            new_root_key_id=new,
            rewrapped=result.rewrapped,
            skipped_destroyed=result.skipped_destroyed,
            keyrings=len(keyrings),
            server_side_rewrap=provider.server_side_rewrap,
        )
    return result


def root_key_usage(store: Store) -> dict[str, int]:
    """How many live wrapped DEKs name each root key id (for ``provider show``)."""
    usage: dict[str, int] = {}
    with store.read() as tx:
        for keyring in tx.keyrings():
            for kv in tx.list_versions(keyring):
                if kv.wrapped_key is not None:
                    usage[kv.root_key_id] = usage.get(kv.root_key_id, 0) + 1
    return usage


def rotate_vault_root_key(vault: Vault) -> RootRotationResult:
    """:func:`rotate_root_key` for an open vault (what ``provider rotate`` runs)."""
    return rotate_root_key(vault.store, vault.provider, vault.audit)


def vault_root_key_usage(vault: Vault) -> dict[str, int]:
    """:func:`root_key_usage` for an open vault (what ``provider show`` prints)."""
    return root_key_usage(vault.store)
