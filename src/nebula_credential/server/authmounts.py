"""The auth methods ``sys/auth`` enables, and enabling or disabling one outside a request.

``POST sys/auth/:path`` and ``nebula-credential auth enable`` run the same
operation (:func:`.mounts.enable_mount`), as do ``DELETE sys/auth/:path`` and
``auth disable`` (:func:`.mounts.disable_mount`, which removes the method's
roles, users and secret ids with :func:`purge_auth`).  The types are
registered here, so whoever imports this module -- the app, the CLI -- sees
the same catalogue.  :class:`AuthMounts` is the CLI's way in: the mount table
of a plain vault, each change and its audit event in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import ServerConfig
from ..vault import Vault
from ._backend import Backend
from .acl import row_mac_for
from .auth_approle import AppRoleEngine
from .auth_jwt import JWTEngine
from .auth_userpass import UserpassEngine
from .authstore import AuthStore
from .mounts import (
    AUTH_METHODS,
    EngineType,
    MountEntry,
    MountRepository,
    MountTable,
    builtin_mounts,
    disable_mount,
    enable_mount,
    register_auth_method,
)

#: What each auth method keeps per mount, for listings: (item kind, plural noun).
ENTRIES: dict[str, tuple[str, str]] = {"approle": ("role", "roles"), "jwt": ("role", "roles"),
                                       "userpass": ("user", "users")}


def purge_auth(vault: Vault, entry: MountEntry) -> None:
    """A disabled auth method's roles, users and secret ids are gone, as in Vault."""
    AuthStore(vault.auth_tables(), vault.provider, vault.clock).delete_mount(entry.route)


def _purge(backend: Backend, entry: MountEntry) -> None:
    purge_auth(getattr(backend.vault, "sync", backend.vault), entry)


register_auth_method("approle", EngineType(lambda e: AppRoleEngine(e.route).routes(), purge=_purge,
                                           description="AppRole: a role id and a secret id"))
register_auth_method("userpass", EngineType(lambda e: UserpassEngine(e.route).routes(), purge=_purge,
                                            description="usernames and argon2id-hashed passwords"))
register_auth_method("jwt", EngineType(lambda e: JWTEngine(e.route).routes(), purge=_purge,
                                       description="JWT workload identity (no browser flow)"))


class AuthMounts:
    """The auth mounts of a plain (synchronous) vault: list, enable, disable -- the CLI's side of
    ``sys/auth``, through the same operations, over the same MAC'd mount rows."""

    def __init__(self, vault: Vault, server: ServerConfig) -> None:
        self.vault = vault
        self.repo = MountRepository(vault.mount_tables(), row_mac_for(vault))
        self.table = MountTable(builtin_mounts(server))

    def _fresh(self) -> MountTable:
        self.table.load(self.repo.snapshot()[1])
        return self.table

    def mounts(self) -> list[MountEntry]:
        return self._fresh().entries("auth")

    def entries(self, entry: MountEntry) -> list[str] | None:
        """The names of a mount's roles or users (None for a method that keeps none, as token)."""
        kind = ENTRIES.get(entry.type)
        if kind is None:
            return None
        return AuthStore(self.vault.auth_tables(), self.vault.provider, self.vault.clock).names(entry.route, kind[0])

    def enable(self, path: str, type_: str, description: str = "") -> MountEntry:
        body: dict[str, Any] = {"type": type_, "description": description}
        table = self._fresh()
        now = self.vault.clock().timestamp()
        return self.vault.audited_write(lambda tx: enable_mount(self.repo, table, "auth", path, body, now),
                                        "auth.enable", _details)

    def disable(self, path: str) -> MountEntry | None:
        table = self._fresh()
        purge: Callable[[MountEntry], None] = lambda entry: purge_auth(self.vault, entry)  # noqa: E731
        return self.vault.audited_write(lambda tx: disable_mount(self.repo, table, "auth", path, purge),
                                        "auth.disable", lambda e: {} if e is None else _details(e))


def _details(entry: MountEntry) -> dict[str, Any]:
    return {"mount": entry.route, "type": entry.type, "accessor": entry.accessor}


__all__ = ["AUTH_METHODS", "ENTRIES", "AuthMounts", "purge_auth"]
