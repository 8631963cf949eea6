"""The narrow store interface of the HTTP server's own tables (tokens, policies, its key).

The server and console sit above the :class:`~.vault.Vault` facade and never
import the store.  Their token and policy repositories need a handful of
statements, listed here as protocols; the store's transactions satisfy them
structurally, and :meth:`Vault.server_tables` hands the store out typed as
:class:`ServerTables` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .store import TokenRow

T = TypeVar("T")

__all__ = ["ServerTables", "ServerTx", "TokenRow"]


class ServerTx(Protocol):
    """The statements of the server's tables, inside one transaction (a superset of
    :class:`~.rootwrapped.MetaTx`, for the server's key)."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...

    def lock_keyring(self, keyring: str) -> None: ...

    def token_insert(self, row: TokenRow) -> None: ...

    def token_by_hash(self, token_hash: str) -> TokenRow | None: ...

    def token_by_accessor(self, accessor: str) -> TokenRow | None: ...

    def token_list(self) -> list[TokenRow]: ...

    def token_set_expiry(self, accessor: str, expires_at: float | None) -> bool: ...

    def token_delete(self, accessors: Sequence[str]) -> int: ...

    def token_children(self, accessor: str) -> list[str]: ...

    def policy_put(self, name: str, body: str, now: datetime) -> None: ...

    def policy_get(self, name: str) -> str | None: ...

    def policy_list(self) -> list[str]: ...

    def policy_delete(self, name: str) -> bool: ...


class ServerTables(Protocol):
    """Transactions over :class:`ServerTx` (nested use from one thread joins the outer one)."""

    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[ServerTx]: ...

    def read(self) -> AbstractContextManager[ServerTx]: ...

    def run(self, fn: Callable[[ServerTx], T], *, write: bool = True, idempotent: bool = False) -> T:
        """``fn`` in a transaction, run again after a lost connection (the store's retry policy)."""
        ...

    def new_lock(self) -> AbstractContextManager[Any]: ...
