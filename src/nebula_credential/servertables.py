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

__all__ = ["AUTH_TABLE", "POLICY_TABLE", "ROLE_TABLE", "TOKEN_TABLE", "USES_MAX", "AuthTables", "AuthTx",
           "ServerTables", "ServerTx", "TokenRow", "auth_mac_fields", "auth_uses_ok", "policy_mac_fields",
           "role_mac_fields", "token_mac_fields"]

#: The tables whose rows carry a MAC (``rowmac``), as the MAC binds them.
TOKEN_TABLE = "server_tokens"  # noqa: S105 - a table name
POLICY_TABLE = "server_policies"
ROLE_TABLE = "server_token_roles"
AUTH_TABLE = "auth_items"

#: The body key an auth item with limited uses keeps its initial count under (bound by the MAC).
USES_MAX = "_uses_max"


def token_mac_fields(row: TokenRow) -> dict[str, Any]:
    """Every field of a token row that decides what it may do, for its MAC (all but the MAC).

    ``bound_cidrs`` is bound when the token has any (a row made before schema v11 has none and
    keeps the MAC it was given; clearing or widening a token's blocks breaks it)."""
    fields: dict[str, Any] = {
        "token_hash": row.token_hash, "parent": row.parent, "policies": list(row.policies),
        "display_name": row.display_name, "meta": dict(row.meta), "created_at": row.created_at,
        "expires_at": row.expires_at, "max_expires_at": row.max_expires_at, "ttl": row.ttl,
        "renewable": row.renewable, "num_uses": row.num_uses, "period": row.period,
        "explicit_max_ttl": row.explicit_max_ttl, "token_type": row.token_type, "role": row.role,
        "path": row.path,
    }
    if row.bound_cidrs:
        fields["bound_cidrs"] = list(row.bound_cidrs)
    return fields


def policy_mac_fields(name: str, body: str) -> dict[str, Any]:
    """A policy row's MAC'd fields: its name and text."""
    return {"name": name, "body": body}


def role_mac_fields(body: str) -> dict[str, Any]:
    """A token role row's MAC'd fields: its canonical JSON body (every setting)."""
    return {"body": body}


def auth_mac_fields(mount: str, kind: str, name: str, body: str, expires_at: float | None) -> dict[str, Any]:
    """An auth item's MAC'd fields (its key is (mount, kind, name)).

    ``uses_left`` is not bound: a login spends a use in one conditional UPDATE (exactly once
    under concurrent logins) that cannot recompute a MAC.  Instead the body binds the item's
    initial count (:data:`USES_MAX`) and :func:`auth_uses_ok` refuses a count above it or an
    unlimited count on a limited item, so an edit of ``uses_left`` can only give back uses
    already spent -- the rollback a database writer can always do by restoring an old row --
    never more than the item was created with.
    """
    return {"mount": mount, "kind": kind, "name": name, "body": body, "expires_at": expires_at}


def auth_uses_ok(body: dict[str, Any], uses_left: int | None, spent: bool = False) -> bool:
    """Whether a verified item's ``uses_left`` (after a spend when ``spent``) is within its bound."""
    bound = body.get(USES_MAX)
    if uses_left is None or bound is None:
        return uses_left is None and bound is None
    return isinstance(bound, int) and uses_left + (1 if spent else 0) <= bound


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
                 expires_at: float | None = None, uses_left: int | None = None, mac: str = "") -> None: ...

    def auth_get(self, mount: str, kind: str, name: str, now: float) -> tuple[str, float | None, int | None] | None: ...

    def auth_get_signed(self, mount: str, kind: str, name: str,
                        now: float) -> tuple[str, float | None, int | None, str] | None: ...

    def auth_names(self, mount: str, kind: str, now: float) -> list[str]: ...

    def auth_delete(self, mount: str, kind: str, name: str) -> bool: ...

    def auth_delete_kind(self, mount: str, kind: str) -> int: ...

    def auth_delete_mount(self, mount: str) -> int: ...

    def auth_purge_expired(self, now: float) -> int: ...

    def auth_spend(self, mount: str, kind: str, name: str, now: float) -> str | None: ...

    def auth_spend_signed(self, mount: str, kind: str, name: str,
                          now: float) -> tuple[str, float | None, int | None, str] | None: ...


class AuthTables(Protocol):
    """Transactions over :class:`AuthTx`."""

    def transaction(self, *, write: bool = True, autonomous: bool = False) -> AbstractContextManager[AuthTx]: ...

    def read(self) -> AbstractContextManager[AuthTx]: ...

    def run(self, fn: Callable[[AuthTx], T], *, write: bool = True, idempotent: bool = False) -> T: ...

    def new_lock(self) -> AbstractContextManager[Any]: ...
