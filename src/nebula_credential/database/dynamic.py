"""Dynamic roles (``database/roles/:name``) and their credentials (``database/creds/:name``).

Each ``creds`` call makes a new PostgreSQL user from the role's creation
statements, with ``VALID UNTIL`` its lease's expiry, so PostgreSQL itself
refuses the password once the lease has run out, even before the sweep
drops the user.  The lease row is written *before* the user is created: a
process that dies in between leaves a lease whose revocation finds no user
(idempotent), never a user without a lease.

Revocation (:meth:`DynamicRoles.revoke_user`) first forbids new logins
(``NOLOGIN``, committed), then terminates the user's sessions and waits until
none is left, then runs the revocation statements: no session of a revoked
user remains.  The password of a dynamic user is never stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..leases import Lease, Leases, new_lease_id
from . import templates
from .connections import Connections
from .errors import DatabaseInputError, DatabaseNotFoundError
from .fields import check_name, seconds, statements, text
from .items import Items
from .passwords import dynamic_username, generate_password
from .plugin import default_drop_user, role_exists, terminate_sessions

if TYPE_CHECKING:
    from ..vault import Vault

KIND = "role"
ENGINE = "database"
#: Vault's system defaults for a role without TTLs (768 h).
DEFAULT_TTL = 768 * 3600
DEFAULT_MAX_TTL = 768 * 3600
DEFAULT_RENEW = ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"]
#: How long a revocation waits for terminated sessions to be gone (seconds).
SESSION_DRAIN = 5.0
_KNOWN = frozenset({"db_name", "default_ttl", "max_ttl", "creation_statements", "revocation_statements",
                    "rollback_statements", "renew_statements", "credential_type", "credential_config"})


def expiration(ts: float) -> str:
    """A ``VALID UNTIL`` timestamp, in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S+00")


@dataclass(frozen=True)
class DynamicRole:
    name: str
    db_name: str
    creation_statements: list[str]
    revocation_statements: list[str] = field(default_factory=list)
    rollback_statements: list[str] = field(default_factory=list)
    renew_statements: list[str] = field(default_factory=list)
    default_ttl: int = 0
    max_ttl: int = 0
    credential_type: str = "password"

    def vault_shape(self) -> dict[str, Any]:
        return {"db_name": self.db_name, "creation_statements": self.creation_statements,
                "revocation_statements": self.revocation_statements,
                "rollback_statements": self.rollback_statements, "renew_statements": self.renew_statements,
                "default_ttl": self.default_ttl, "max_ttl": self.max_ttl, "credential_type": self.credential_type,
                "credential_config": {}}


class DynamicRoles:
    """The dynamic roles of one mount, and the users made from them."""

    def __init__(self, vault: Vault, items: Items, connections: Connections, leases: Leases) -> None:
        self.vault = vault
        self.items = items
        self.connections = connections
        self.leases = leases
        #: Called with "leased" (lease row written, no user yet) and "created" (user made): crash tests.
        self.on_phase: Callable[[str], None] = lambda _phase: None

    def _now(self) -> float:
        return self.vault.clock().timestamp()

    def get(self, name: str) -> DynamicRole:
        found = self.items.get(KIND, check_name(name, "role name"))
        if found is None:
            raise DatabaseNotFoundError(f"unknown role: {name}")
        return DynamicRole(**found[0])

    def write(self, name: str, fields: dict[str, Any]) -> None:
        check_name(name, "role name")
        found = self.items.get(KIND, name)
        old = None if found is None else DynamicRole(**found[0])

        def pick(key: str, default: Any) -> Any:
            return fields[key] if key in fields else (getattr(old, key) if old is not None else default)

        db_name = text(pick("db_name", ""), "db_name")
        if not db_name:
            raise DatabaseInputError("database name is required")
        creation = statements(pick("creation_statements", []), "creation_statements")
        if not creation:
            raise DatabaseInputError("creation_statements is required")
        default_ttl = seconds(pick("default_ttl", 0), "default_ttl")
        max_ttl = seconds(pick("max_ttl", 0), "max_ttl")
        if max_ttl and default_ttl > max_ttl:
            raise DatabaseInputError("ttl cannot be greater than max_ttl")
        ctype = text(pick("credential_type", "password"), "credential_type") or "password"
        if ctype != "password":
            raise DatabaseInputError(f"unsupported credential_type {ctype!r}: only password")
        role = DynamicRole(name, db_name, creation,
                           statements(pick("revocation_statements", []), "revocation_statements"),
                           statements(pick("rollback_statements", []), "rollback_statements"),
                           statements(pick("renew_statements", []), "renew_statements"),
                           default_ttl, max_ttl, ctype)
        self.connections.get(db_name)
        self.items.put(KIND, name, asdict(role))
        self._audit("database.role.write", name)

    def names(self) -> list[str]:
        return self.items.names(KIND)

    def delete(self, name: str) -> None:
        check_name(name, "role name")
        self.items.delete(KIND, name)
        self._audit("database.role.delete", name)

    # ---- credentials ------------------------------------------------------------------------
    def creds(self, name: str, *, token_accessor: str | None = None, token_expires_at: float | None = None,
              display_name: str = "token") -> tuple[dict[str, Any], Lease]:
        role = self.get(name)
        conn = self.connections.get(role.db_name)
        if not conn.allows(name):
            raise DatabaseInputError(f'"{name}" is not an allowed role')
        max_ttl = role.max_ttl or DEFAULT_MAX_TTL
        ttl = min(role.default_ttl or DEFAULT_TTL, max_ttl)
        now = self._now()
        username = dynamic_username(display_name, name, now)
        password = generate_password()
        body = {"db_name": role.db_name, "role": name, "username": username, "ttl": ttl,
                "revocation_statements": role.revocation_statements, "renew_statements": role.renew_statements}
        lease = self.leases.issue(lease_id=new_lease_id(f"{self.items.mount}/creds/{name}"), mount=self.items.mount,
                                  engine=ENGINE, body=body, ttl=ttl, max_ttl=max_ttl, renewable=True,
                                  token_accessor=token_accessor, token_expires_at=token_expires_at)
        values = {"name": username, "username": username, "password": password,
                  "expiration": expiration(lease.expire_time)}
        plugin = self.connections.plugin(role.db_name)
        self.on_phase("leased")
        try:
            plugin.execute(role.creation_statements, values)
        except Exception:
            if role.rollback_statements:
                with suppress(Exception):  # the lease below still drops the user if it exists
                    plugin.execute(role.rollback_statements, values)
            self.leases.revoke(lease.lease_id, sync=False)
            self._audit("database.creds", name, outcome="failed", lease=lease.lease_id)
            raise
        self.on_phase("created")
        self._audit("database.creds", name, username=username, lease=lease.lease_id)
        return {"username": username, "password": password}, lease

    def revoke_user(self, body: dict[str, Any]) -> None:
        """Drop one dynamic user: no new login, no session left, then the revocation statements."""
        username = str(body["username"])
        plugin = self.connections.plugin(str(body["db_name"]))

        def forbid(conn: Any) -> bool:
            if not role_exists(conn, username):
                return False
            conn.execute(templates.render("ALTER ROLE {{name}} NOLOGIN", {"name": username}))
            return True

        if not plugin.run(forbid):
            return  # never created, or already dropped: revoked
        deadline = time.monotonic() + SESSION_DRAIN
        while plugin.run(lambda conn: terminate_sessions(conn, username)) and time.monotonic() < deadline:
            time.sleep(0.05)
        stmts = list(body.get("revocation_statements") or [])
        if stmts:
            plugin.execute(stmts, {"name": username, "username": username})
        else:
            plugin.run(lambda conn: default_drop_user(conn, username))

    def renew_user(self, body: dict[str, Any], expire_time: float) -> None:
        username = str(body["username"])
        stmts = list(body.get("renew_statements") or []) or DEFAULT_RENEW
        self.connections.plugin(str(body["db_name"])).execute(
            stmts, {"name": username, "username": username, "expiration": expiration(expire_time)})

    def _audit(self, action: str, name: str, outcome: str = "ok", **details: Any) -> None:
        with self.vault.store.transaction() as tx:
            self.vault.audit.record(tx, action, keyring=self.vault.keyring_name, outcome=outcome,
                                    mount=self.items.mount, role=name, **details)
