"""The narrow store interface of the HTTP server's own tables (tokens, policies, roles, its keys).

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

__all__ = ["POLICY_TABLE", "ROLE_TABLE", "TOKEN_TABLE", "AuthTables", "AuthTx", "ServerTables", "ServerTx", "TokenRow",
           "policy_mac_fields", "role_mac_fields", "token_mac_fields"]

#: The tables whose rows carry a MAC (``rowmac``), as the MAC binds them.
TOKEN_TABLE = "server_tokens"  # noqa: S105 - a table name
POLICY_TABLE = "server_policies"
ROLE_TABLE = "server_token_roles"


def token_mac_fields(row: TokenRow) -> dict[str, Any]:
    """Every field of a token row that decides what it may do, for its MAC (all but the MAC)."""
    return {
        "token_hash": row.token_hash, "parent": row.parent, "policies": list(row.policies),
        "display_name": row.display_name, "meta": dict(row.meta), "created_at": row.created_at,
        "expires_at": row.expires_at, "max_expires_at": row.max_expires_at, "ttl": row.ttl,
        "renewable": row.renewable, "num_uses": row.num_uses, "period": row.period,
        "explicit_max_ttl": row.explicit_max_ttl, "token_type": row.token_type, "role": row.role,
        "path": row.path,
    }


def policy_mac_fields(name: str, body: str) -> dict[str, Any]:
    """A policy row's MAC'd fields: its name and text."""
    return {"name": name, "body": body}


def role_mac_fields(body: str) -> dict[str, Any]:
    """A token role row's MAC'd fields: its canonical JSON body (every setting)."""
    return {"body": body}


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

    def token_set_expiry(self, accessor: str, expires_at: float | None, mac: str = "") -> bool: ...

    def token_set_parent(self, accessor: str, parent: str | None, mac: str) -> bool: ...

    def token_spend(self, accessor: str, old_uses: int, new_uses: int, old_mac: str, new_mac: str) -> bool: ...

    def token_delete(self, accessors: Sequence[str]) -> int: ...

    def token_children(self, accessor: str) -> list[str]: ...

    def policy_put(self, name: str, body: str, now: datetime, mac: str = "") -> None: ...

    def policy_get(self, name: str) -> str | None: ...

    def policy_get_signed(self, name: str) -> tuple[str, str] | None: ...

    def policy_list(self) -> list[str]: ...

    def policy_delete(self, name: str) -> bool: ...

    def role_put(self, name: str, body: str, now: datetime, mac: str) -> None: ...

    def role_get(self, name: str) -> tuple[str, str] | None: ...

    def role_list(self) -> list[str]: ...

    def role_delete(self, name: str) -> bool: ...


class ServerTables(Protocol):
    """Transactions over :class:`ServerTx` (nested use from one thread joins the outer one)."""

    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[ServerTx]: ...

    def read(self) -> AbstractContextManager[ServerTx]: ...

    def run(self, fn: Callable[[ServerTx], T], *, write: bool = True, idempotent: bool = False) -> T:
        """``fn`` in a transaction, run again after a lost connection (the store's retry policy)."""
        ...

    def new_lock(self) -> AbstractContextManager[Any]: ...


class AuthTx(Protocol):
    """The auth methods' items (see ``store/_sql_auth.py``), plus the meta rows of their hashing key."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...

    def lock_keyring(self, keyring: str) -> None: ...

    def auth_put(self, mount: str, kind: str, name: str, body: str, now: float, *,
                 expires_at: float | None = None, uses_left: int | None = None) -> None: ...

    def auth_get(self, mount: str, kind: str, name: str, now: float) -> tuple[str, float | None, int | None] | None: ...

    def auth_names(self, mount: str, kind: str, now: float) -> list[str]: ...

    def auth_delete(self, mount: str, kind: str, name: str) -> bool: ...

    def auth_delete_kind(self, mount: str, kind: str) -> int: ...

    def auth_delete_mount(self, mount: str) -> int: ...

    def auth_purge_expired(self, now: float) -> int: ...

    def auth_spend(self, mount: str, kind: str, name: str, now: float) -> str | None: ...


class AuthTables(Protocol):
    """Transactions over :class:`AuthTx`."""

    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[AuthTx]: ...

    def read(self) -> AbstractContextManager[AuthTx]: ...

    def run(self, fn: Callable[[AuthTx], T], *, write: bool = True, idempotent: bool = False) -> T: ...

    def new_lock(self) -> AbstractContextManager[Any]: ...
