"""The narrow store interface of the HTTP server's mount table.

As :mod:`.servertables` for tokens and policies: the server never imports
the store; its mount repository (``server/mounts.py``) needs these few
statements, and :meth:`Vault.mount_tables` hands the store out typed as
:class:`MountTables` only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from .store import MountRow

T = TypeVar("T")

__all__ = ["MountRow", "MountTables", "MountTx"]


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
