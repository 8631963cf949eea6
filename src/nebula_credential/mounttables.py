"""The narrow store interface of the HTTP server's mount table.

As :mod:`.servertables` for tokens and policies: the server never imports
the store; its mount repository (``server/mounts.py``) needs these few
statements, and :meth:`Vault.mount_tables` hands the store out typed as
:class:`MountTables` only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from .store import MountRow

T = TypeVar("T")

__all__ = ["MOUNT_TABLE", "MountRow", "MountTables", "MountTx", "mount_mac_fields"]

#: The table a mount row's MAC (``rowmac``) binds; its key is (kind, path).
MOUNT_TABLE = "server_mounts"


def mount_mac_fields(row: MountRow) -> dict[str, Any]:
    """Every field of a mount row (all but the MAC): its engine, accessor, keyring and settings
    all decide what requests routed to it reach."""
    return {"kind": row.kind, "path": row.path, "type": row.type, "description": row.description,
            "accessor": row.accessor, "uuid": row.uuid, "options": row.options, "config": dict(row.config),
            "keyring": row.keyring, "created_at": row.created_at}


class MountTx(Protocol):
    """The mount table's statements inside one transaction (each change bumps the generation)."""

    def mount_list(self) -> list[MountRow]: ...

    def mount_get(self, kind: str, path: str) -> MountRow | None: ...

    def mount_insert(self, row: MountRow) -> None: ...

    def mount_update(self, row: MountRow) -> bool: ...

    def mount_delete(self, kind: str, path: str) -> bool: ...

    def mount_generation(self) -> int: ...


class MountTables(Protocol):
    """Transactions over :class:`MountTx`."""

    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[MountTx]: ...

    def read(self) -> AbstractContextManager[MountTx]: ...

    def run(self, fn: Callable[[MountTx], T], *, write: bool = True, idempotent: bool = False) -> T:
        """``fn`` in a transaction, run again after a lost connection (the store's retry policy)."""
        ...
