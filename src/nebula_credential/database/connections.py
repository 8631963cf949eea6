"""Connections (``database/config/:name``) and the root credential's two-phase rotation.

A connection's settings are a MAC'd row; its root password is the
credential ``config/<name>`` of the mount's keyring.  ``rotate_root``
stores the new password as *pending* before ``ALTER ROLE`` runs, then makes
it current; a process that dies in between leaves a pending password that the
next use of the connection settles by logging in: the pending password works
(PostgreSQL was changed: finish) or the current one does (it was not: roll
back).  The root password is never returned by any read.
"""

from __future__ import annotations

import os
import secrets as _secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DatabaseConnectError, DatabaseInputError, DatabaseNotFoundError, DatabaseUnavailableError
from .fields import boolean, check_name, statements, strings, text
from .items import Items
from .passwords import generate_password
from .plugin import PLUGIN_NAME, PostgresPlugin, check_url
from .secrets_store import Secrets

if TYPE_CHECKING:
    from ..vault import Vault

KIND = "config"
#: How long a root rotation's lock holds before another process may settle what it left.
LOCK_TTL = 120.0
DEFAULT_ROOT_ROTATION = ["ALTER ROLE \"{{username}}\" WITH PASSWORD '{{password}}'"]
_KNOWN = frozenset({"plugin_name", "plugin_version", "verify_connection", "allowed_roles", "password_policy",
                    "root_rotation_statements", "connection_url", "username", "password", "max_open_connections",
                    "max_idle_connections", "max_connection_lifetime", "username_template", "disable_escaping",
                    "password_authentication", "tls_ca", "tls_certificate", "private_key"})


def secret_id(name: str) -> str:
    return f"config/{name}"


@dataclass(frozen=True)
class Connection:
    """A connection's settings (never its password)."""

    name: str
    connection_url: str
    username: str
    allowed_roles: list[str] = field(default_factory=list)
    password_policy: str = ""
    root_rotation_statements: list[str] = field(default_factory=list)
    verify_connection: bool = True
    plugin_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"connection_url": self.connection_url, "username": self.username,
                "allowed_roles": self.allowed_roles, "password_policy": self.password_policy,
                "root_rotation_statements": self.root_rotation_statements,
                "verify_connection": self.verify_connection, "plugin_version": self.plugin_version,
                "extra": self.extra}

    @classmethod
    def from_body(cls, name: str, body: dict[str, Any]) -> Connection:
        return cls(name, str(body["connection_url"]), str(body["username"]), list(body.get("allowed_roles", [])),
                   str(body.get("password_policy", "")), list(body.get("root_rotation_statements", [])),
                   bool(body.get("verify_connection", True)), str(body.get("plugin_version", "")),
                   dict(body.get("extra", {})))

    def allows(self, role: str) -> bool:
        return "*" in self.allowed_roles or role in self.allowed_roles

    def vault_shape(self) -> dict[str, Any]:
        details: dict[str, Any] = {"connection_url": self.connection_url, "username": self.username}
        details.update(self.extra)
        return {"plugin_name": PLUGIN_NAME, "plugin_version": self.plugin_version,
                "connection_details": details, "allowed_roles": self.allowed_roles,
                "password_policy": self.password_policy,
                "root_credentials_rotate_statements": self.root_rotation_statements,
                "verify_connection": self.verify_connection}


class Connections:
    """The connections of one mount."""

    def __init__(self, vault: Vault, items: Items, secrets: Secrets, *, holder: str | None = None) -> None:
        self.vault = vault
        self.items = items
        self.secrets = secrets
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{_secrets.token_hex(4)}"
        #: As :attr:`.static.StaticRoles.on_phase`, for the root credential's rotation.
        self.on_phase: Callable[[str], None] = lambda _phase: None

    # ---- config -----------------------------------------------------------------------------
    def get(self, name: str) -> Connection:
        found = self.items.get(KIND, check_name(name, "connection name"))
        if found is None:
            raise DatabaseNotFoundError(f"no connection named {name!r}")
        return Connection.from_body(name, found[0])

    def write(self, name: str, fields: dict[str, Any]) -> list[str]:
        check_name(name, "connection name")
        unknown = sorted(set(fields) - _KNOWN)
        warnings = [f"unknown field ignored: {k}" for k in unknown]
        found = self.items.get(KIND, name)
        old = None if found is None else Connection.from_body(name, found[0])
        plugin = fields.get("plugin_name", None if old is None else PLUGIN_NAME)
        if not plugin:
            raise DatabaseInputError("empty plugin name")
        if plugin != PLUGIN_NAME:
            raise DatabaseInputError(f"unsupported plugin {plugin!r}: only {PLUGIN_NAME} is available")
        url = fields.get("connection_url", None if old is None else old.connection_url)
        check_url(url)
        assert isinstance(url, str)
        extra = dict(old.extra) if old is not None else {}
        for k in ("max_open_connections", "max_idle_connections", "max_connection_lifetime", "username_template",
                  "disable_escaping", "password_authentication"):
            if k in fields:
                extra[k] = fields[k]
        conn = Connection(
            name=name, connection_url=url,
            username=text(fields.get("username", "" if old is None else old.username), "username"),
            allowed_roles=strings(fields["allowed_roles"], "allowed_roles") if "allowed_roles" in fields
            else ([] if old is None else old.allowed_roles),
            password_policy=text(fields.get("password_policy", "" if old is None else old.password_policy),
                                 "password_policy"),
            root_rotation_statements=statements(fields["root_rotation_statements"], "root_rotation_statements")
            if "root_rotation_statements" in fields else ([] if old is None else old.root_rotation_statements),
            verify_connection=boolean(fields.get("verify_connection", True), "verify_connection"),
            plugin_version=text(fields.get("plugin_version", ""), "plugin_version"), extra=extra,
        )
        if conn.password_policy:
            warnings.append("password policies are not evaluated: passwords come from the built-in generator")
        if "password" in fields:
            password = text(fields["password"], "password")
        else:
            current = self.secrets.get(secret_id(name)) if old is not None else None
            password = "" if current is None else str(current.get("password") or "")
        if conn.verify_connection:
            PostgresPlugin(conn.connection_url, conn.username, password).verify()
        if "password" in fields or old is None:
            self.secrets.put(secret_id(name), {"password": password, "gen": _secrets.token_hex(8)})
        self.items.put(KIND, name, conn.to_body())
        self._audit("database.config.write", name)
        return warnings

    def names(self) -> list[str]:
        return self.items.names(KIND)

    def delete(self, name: str) -> None:
        check_name(name, "connection name")
        self.items.delete(KIND, name)
        self.secrets.delete(secret_id(name))
        self._audit("database.config.delete", name)

    # ---- the root credential ----------------------------------------------------------------
    def plugin(self, name: str) -> PostgresPlugin:
        """A plugin logged in as the root user, after settling any interrupted root rotation."""
        conn = self.get(name)
        record = self._settle(conn)
        plugin = PostgresPlugin(conn.connection_url, conn.username, str(record.get("password") or ""))
        if record.get("pending"):  # a rotation is under way elsewhere (or died in it): use what logs in
            try:
                plugin.verify()
            except DatabaseConnectError:
                return PostgresPlugin(conn.connection_url, conn.username, str(record["pending"]))
        return plugin

    def _settle(self, conn: Connection, *, locked: bool = False) -> dict[str, Any]:
        """The root password record with no pending password left, if PostgreSQL can tell which one it holds.

        Only under the connection's rotation lock: a rotation in progress elsewhere has stored its
        pending password but may not have sent it yet, and must not be rolled back under its feet."""
        record = self.secrets.get(secret_id(conn.name)) or {"password": ""}
        if not record.get("pending"):
            return record
        if locked:
            return self._settle_locked(conn)
        lock = f"root/{conn.name}"
        if not self.items.acquire(lock, self.holder, LOCK_TTL):
            return record  # being rotated right now: its current password is still the stored one
        try:
            return self._settle_locked(conn)
        finally:
            self.items.release(lock, self.holder)

    def _settle_locked(self, conn: Connection) -> dict[str, Any]:
        record = self.secrets.get(secret_id(conn.name)) or {"password": ""}
        pending = record.get("pending")
        if not pending:
            return record
        try:
            PostgresPlugin(conn.connection_url, conn.username, str(pending)).verify()
        except DatabaseUnavailableError:
            try:
                PostgresPlugin(conn.connection_url, conn.username, str(record.get("password") or "")).verify()
            except DatabaseUnavailableError:
                return record  # neither logs in now: keep both, decide at the next use
            settled = {"password": record.get("password"), "gen": record.get("gen")}
            self.secrets.put(secret_id(conn.name), settled)
            self._audit("database.rotate_root.rolled_back", conn.name)
            return settled
        settled = {"password": pending, "gen": record.get("pending_gen")}
        self.secrets.put(secret_id(conn.name), settled)
        self._audit("database.rotate_root.finished", conn.name)
        return settled

    def rotate_root(self, name: str) -> None:
        conn = self.get(name)
        if not conn.username:
            raise DatabaseInputError("unable to rotate root credentials: no username in configuration")
        lock = f"root/{name}"
        if not self.items.acquire(lock, self.holder, LOCK_TTL):
            raise DatabaseUnavailableError(f"the root credential of {name!r} is being rotated by another process")
        try:
            self._rotate_root(conn)
        finally:
            self.items.release(lock, self.holder)

    def _rotate_root(self, conn: Connection) -> None:
        name = conn.name
        record = self._settle(conn, locked=True)
        if record.get("pending"):
            raise DatabaseUnavailableError("unable to rotate root credentials: an earlier rotation is unsettled "
                                           "and PostgreSQL cannot be reached to settle it")
        old = str(record.get("password") or "")
        new = generate_password()
        gen = _secrets.token_hex(8)
        # phase 1: the new password is stored before PostgreSQL hears of it
        self.secrets.put(secret_id(name), {"password": old, "gen": record.get("gen"), "pending": new,
                                           "pending_gen": gen})
        self.on_phase("stored")
        plugin = PostgresPlugin(conn.connection_url, conn.username, old)
        stmts = conn.root_rotation_statements or DEFAULT_ROOT_ROTATION
        try:
            plugin.execute(stmts, {"name": conn.username, "username": conn.username, "password": new})
        except DatabaseConnectError:
            self.secrets.put(secret_id(name), {"password": old, "gen": record.get("gen")})  # nothing sent
            self._audit("database.rotate_root", name, outcome="failed")
            raise
        except DatabaseUnavailableError:
            self._settle(conn, locked=True)  # the statement may or may not have committed: ask PostgreSQL
            self._audit("database.rotate_root", name, outcome="failed")
            raise
        self.on_phase("applied")
        # phase 2: PostgreSQL has the new password; only it is kept
        self.secrets.put(secret_id(name), {"password": new, "gen": gen})
        self._audit("database.rotate_root", name)

    def _audit(self, action: str, name: str, outcome: str = "ok") -> None:
        with self.vault.store.transaction() as tx:
            self.vault.audit.record(tx, action, keyring=self.vault.keyring_name, outcome=outcome,
                                    mount=self.items.mount, connection=name)
