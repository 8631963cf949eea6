""":class:`DatabaseEngine`: the database secrets engine of one mount, as Vault's ``database/`` paths.

The HTTP mount, the CLI and Python callers use this one object; it composes
the connections (:mod:`.connections`), static roles (:mod:`.static`) and
dynamic roles (:mod:`.dynamic`) of the mount over one row store
(:mod:`.items`) and one keyring (:mod:`.secrets_store`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..leases import Lease, LeaseHandler, Leases
from .connections import Connections
from .dynamic import KIND as DYNAMIC_KIND
from .dynamic import DynamicRoles
from .errors import DatabaseInputError
from .items import Items
from .secrets_store import Secrets
from .static import KIND as STATIC_KIND
from .static import RotationResult, StaticRoles

if TYPE_CHECKING:
    from ..rowmac import RowMac
    from ..vault import Vault

DEFAULT_MOUNT = "database"
MOUNT_KIND = "mount"


def default_keyring(mount: str) -> str:
    return f"{mount.strip('/')}/database"


class DatabaseEngine:
    """Connections, static roles, dynamic roles and their leases, for one mount."""

    def __init__(self, vault: Vault, mount: str = DEFAULT_MOUNT, *, keyring: str | None = None,
                 rowmac: RowMac | None = None, holder: str | None = None) -> None:
        self.mount = mount.strip("/")
        self._registered = False
        self.items = Items(vault, self.mount, rowmac)
        self.keyring = keyring or self._registered_keyring() or default_keyring(self.mount)
        self.vault = vault if vault.keyring_name == self.keyring else vault.keyring(self.keyring)
        self.items.vault = self.vault
        self.secrets = Secrets(self.vault)
        self.connections = Connections(self.vault, self.items, self.secrets, holder=holder)
        self.static = StaticRoles(self.vault, self.items, self.secrets, self.connections, holder=holder)
        self.leases = Leases(vault, lease_handlers(vault, self), rowmac=self.items.rowmac, holder=holder)
        self.dynamic = DynamicRoles(self.vault, self.items, self.connections, self.leases)

    def _registered_keyring(self) -> str | None:
        found = self.items.get(MOUNT_KIND, "")
        return None if found is None else str(found[0].get("keyring") or "") or None

    def _register(self) -> None:
        """Record the mount and its keyring, so the scheduler finds both (see :func:`.scheduler.run`)."""
        if self._registered:
            return
        self.vault.keys.initialize()  # the mount's keyring gets its first key version before any password
        if self.items.get(MOUNT_KIND, "") is None:
            self.items.put(MOUNT_KIND, "", {"keyring": self.keyring})
        self._registered = True

    def __repr__(self) -> str:
        return f"<DatabaseEngine mount={self.mount!r} keyring={self.keyring!r}>"

    # ---- connections ------------------------------------------------------------------------
    def write_connection(self, name: str, fields: dict[str, Any]) -> list[str]:
        self._register()
        return self.connections.write(name, fields)

    def read_connection(self, name: str) -> dict[str, Any]:
        return self.connections.get(name).vault_shape()

    def list_connections(self) -> list[str]:
        return self.connections.names()

    def delete_connection(self, name: str) -> None:
        self.connections.delete(name)

    def reset_connection(self, name: str) -> None:
        """``database/reset/:name``: no plugin process or pool to reset; checks the connection exists."""
        self.connections.get(name)

    def rotate_root(self, name: str) -> None:
        self.connections.rotate_root(name)

    # ---- static roles -----------------------------------------------------------------------
    def write_static_role(self, name: str, fields: dict[str, Any]) -> None:
        self._unique(name, DYNAMIC_KIND)
        self._register()
        self.static.write(name, fields)

    def read_static_role(self, name: str) -> dict[str, Any]:
        return self.static.read(name)

    def list_static_roles(self) -> list[str]:
        return self.static.names()

    def delete_static_role(self, name: str) -> None:
        self.static.delete(name)

    def static_creds(self, name: str) -> dict[str, Any]:
        return self.static.creds(name)

    def rotate_role(self, name: str) -> None:
        self.static.rotate(name)

    def static_timeline(self, name: str) -> list[dict[str, Any]]:
        return self.static.timeline(name)

    def overview(self) -> list[dict[str, Any]]:
        return [self.static.overview_of(n) for n in self.static.names()]

    # ---- dynamic roles ----------------------------------------------------------------------
    def write_role(self, name: str, fields: dict[str, Any]) -> None:
        self._unique(name, STATIC_KIND)
        self._register()
        self.dynamic.write(name, fields)

    def _unique(self, name: str, other_kind: str) -> None:
        """A static and a dynamic role may not share a name (Vault refuses it both ways: one name, one
        kind of credentials)."""
        if isinstance(name, str) and self.items.get(other_kind, name) is not None:
            raise DatabaseInputError("Role and Static Role names must be unique")

    def read_role(self, name: str) -> dict[str, Any]:
        return self.dynamic.get(name).vault_shape()

    def list_roles(self) -> list[str]:
        return self.dynamic.names()

    def delete_role(self, name: str) -> None:
        self.dynamic.delete(name)

    def creds(self, role: str, *, token_accessor: str | None = None, token_expires_at: float | None = None,
              display_name: str = "token") -> tuple[dict[str, Any], Lease]:
        """A new PostgreSQL user and its lease (the lease's life clipped to the token's, as Vault)."""
        return self.dynamic.creds(role, token_accessor=token_accessor, token_expires_at=token_expires_at,
                                  display_name=display_name)

    # ---- the mount --------------------------------------------------------------------------
    def purge(self) -> int:
        """The mount is being disabled: revoke every lease it issued, then delete its rows and its keyring's
        passwords; returns how many leases were revoked.  A revocation that fails raises (as Vault's unmount
        fails) and nothing is deleted: the connection is still needed to drop those users."""
        with self.vault.store.read() as tx:
            ids = tx.lease_ids(f"{self.mount}/")
        for lease_id in ids:
            self.leases.revoke(lease_id)
        with self.vault.store.transaction() as tx:
            for kind in (MOUNT_KIND, "config", "static", "static-state", "role", "lock"):
                for name in tx.db_item_names(self.mount, kind):
                    tx.db_item_delete(self.mount, kind, name)
        self.vault.purge_credentials(reason=f"database mount {self.mount}/ disabled")
        return len(ids)

    # ---- the scheduler ----------------------------------------------------------------------
    def run_due(self) -> list[RotationResult]:
        """Settle, retire and rotate the static roles that need it (the scheduler's pass)."""
        return self.static.run_due()


class DatabaseLeaseHandler:
    """Revokes and renews the database engine's leases, finding each lease's mount by its row."""

    def __init__(self, vault: Vault, engine: DatabaseEngine | None = None) -> None:
        self.vault = vault
        self._engines: dict[str, DatabaseEngine] = {} if engine is None else {engine.mount: engine}

    def _engine(self, mount: str) -> DatabaseEngine:
        if mount not in self._engines:
            self._engines[mount] = DatabaseEngine(self.vault, mount)
        return self._engines[mount]

    def revoke(self, mount: str, body: dict[str, Any]) -> None:
        self._engine(mount).dynamic.revoke_user(body)

    def renew(self, mount: str, body: dict[str, Any], expire_time: float) -> None:
        self._engine(mount).dynamic.renew_user(body, expire_time)


def lease_handlers(vault: Vault, engine: DatabaseEngine | None = None) -> dict[str, LeaseHandler]:
    """The handlers a :class:`~nebula_credential.leases.Leases` needs for this engine's leases."""
    return {"database": DatabaseLeaseHandler(vault, engine)}
