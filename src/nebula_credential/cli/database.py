"""``db``: the database secrets engine (PostgreSQL) without the HTTP server.

Passwords never come from the command line: a connection's root password is
read from stdin (piped) or a hidden prompt.  Credentials the engine hands
out (``db creds``, ``db static-role creds``) go to stdout only; ``--json``
gives one document for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from ..database import DEFAULT_MOUNT, DatabaseEngine
from ..exceptions import NebulaCredentialError
from ..leases import Lease
from ._common import AppContext, console, emit, pass_app


def _engine(app: AppContext, mount: str) -> DatabaseEngine:
    return DatabaseEngine(app.vault(), mount)


def _fields(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--field key=value`` pairs; a value that parses as JSON is taken as JSON (lists, numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise NebulaCredentialError(f"--field expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True))
    return sys.stdin.readline().rstrip("\r\n")


def _show(app: AppContext, data: Any) -> None:
    def human() -> None:
        if isinstance(data, list):
            for item in data:
                console.print(item if not isinstance(item, dict) else json.dumps(item, default=str))
        else:
            for key, value in data.items():
                console.print(f"{key}: {value if not isinstance(value, dict | list) else json.dumps(value)}")

    emit(app, data, human)


def _item_commands(group: click.Group, label: str, read: Callable[[DatabaseEngine, str], Any],
                   delete: Callable[[DatabaseEngine, str], None],
                   listing: Callable[[DatabaseEngine], list[str]] | None = None, read_help: str | None = None) -> None:
    """``read NAME``, ``delete NAME`` and (given ``listing``) ``list`` of one kind of item of a mount."""

    @group.command(name="read", help=read_help)
    @click.argument("name")
    @mount_option
    @pass_app
    def read_item(app: AppContext, name: str, mount: str) -> None:
        _show(app, read(_engine(app, mount), name))

    @group.command(name="delete")
    @click.argument("name")
    @mount_option
    @pass_app
    def delete_item(app: AppContext, name: str, mount: str) -> None:
        delete(_engine(app, mount), name)
        emit(app, {"deleted": name}, lambda: console.print(f"{label} {name} deleted"))

    if listing is not None:
        @group.command(name="list")
        @mount_option
        @pass_app
        def list_items(app: AppContext, mount: str) -> None:
            _show(app, listing(_engine(app, mount)))


def _lease_json(lease: Lease, now: float | None = None) -> dict[str, Any]:
    now = datetime.now(UTC).timestamp() if now is None else now
    return {"lease_id": lease.lease_id, "lease_duration": lease.ttl(now), "renewable": lease.renewable,
            "expire_time": datetime.fromtimestamp(lease.expire_time, UTC).isoformat()}


mount_option = click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Database engine mount.")


@click.group()
def db() -> None:
    """Database credentials (PostgreSQL): connections, static and dynamic roles, leases."""


#: Not searched when an unknown top-level command is guessed (see ``GlobalOptionsGroup.nested_guesses``).
db.suggest_nested = False  # type: ignore[attr-defined]


# ---- connections -------------------------------------------------------------------------------
@db.group()
def config() -> None:
    """Connections (Vault's database/config/:name)."""


@config.command(name="write")
@click.argument("name")
@click.option("--connection-url", required=False, help="URL with {{username}} and {{password}} templates.")
@click.option("--username", help="Root user the engine logs in as.")
@click.option("--password-stdin", is_flag=True, help="Read the root password from stdin (or a hidden prompt).")
@click.option("--allowed-roles", help="Comma-separated role names allowed to use it ('*': all).")
@click.option("--no-verify", is_flag=True, help="Do not log in before saving.")
@click.option("--field", "pairs", multiple=True, metavar="KEY=VALUE", help="Any other Vault field (JSON values).")
@mount_option
@pass_app
def config_write(app: AppContext, name: str, connection_url: str | None, username: str | None, password_stdin: bool,
                 allowed_roles: str | None, no_verify: bool, pairs: tuple[str, ...], mount: str) -> None:
    """Create or update a connection; it is verified by logging in unless --no-verify."""
    fields: dict[str, Any] = {"plugin_name": "postgresql-database-plugin", **_fields(pairs)}
    if connection_url is not None:
        fields["connection_url"] = connection_url
    if username is not None:
        fields["username"] = username
    if password_stdin:
        fields["password"] = _read_password("Root password")
    if allowed_roles is not None:
        fields["allowed_roles"] = allowed_roles
    if no_verify:
        fields["verify_connection"] = False
    warnings = _engine(app, mount).write_connection(name, fields)
    emit(app, {"name": name, "warnings": warnings}, lambda: console.print(
        f"connection {name} written" + "".join(f"\nwarning: {w}" for w in warnings)))


_item_commands(config, "connection", DatabaseEngine.read_connection, DatabaseEngine.delete_connection,
               DatabaseEngine.list_connections, read_help="A connection's settings (never its password).")


@config.command(name="rotate-root")
@click.argument("name")
@mount_option
@pass_app
def config_rotate_root(app: AppContext, name: str, mount: str) -> None:
    """Change the root user's password in PostgreSQL; only the new one is stored, none is shown."""
    _engine(app, mount).rotate_root(name)
    emit(app, {"rotated": name}, lambda: console.print(f"root credential of {name} rotated"))


# ---- dynamic roles -----------------------------------------------------------------------------
@db.group()
def role() -> None:
    """Dynamic roles (Vault's database/roles/:name)."""


@role.command(name="write")
@click.argument("name")
@click.option("--db-name", help="Connection name.")
@click.option("--creation-statement", "creation", multiple=True, help="Repeat for several statements.")
@click.option("--revocation-statement", "revocation", multiple=True)
@click.option("--renew-statement", "renew", multiple=True)
@click.option("--default-ttl")
@click.option("--max-ttl")
@click.option("--field", "pairs", multiple=True, metavar="KEY=VALUE", help="Any other Vault field (JSON values).")
@mount_option
@pass_app
def role_write(app: AppContext, name: str, db_name: str | None, creation: tuple[str, ...], revocation: tuple[str, ...],
               renew: tuple[str, ...], default_ttl: str | None, max_ttl: str | None, pairs: tuple[str, ...],
               mount: str) -> None:
    fields = _fields(pairs)
    for key, value in (("db_name", db_name), ("default_ttl", default_ttl), ("max_ttl", max_ttl)):
        if value is not None:
            fields[key] = value
    for key, many in (("creation_statements", creation), ("revocation_statements", revocation),
                      ("renew_statements", renew)):
        if many:
            fields[key] = list(many)
    _engine(app, mount).write_role(name, fields)
    emit(app, {"name": name}, lambda: console.print(f"role {name} written"))


_item_commands(role, "role", DatabaseEngine.read_role, DatabaseEngine.delete_role, DatabaseEngine.list_roles)


@db.command()
@click.argument("role_name", metavar="ROLE")
@mount_option
@pass_app
def creds(app: AppContext, role_name: str, mount: str) -> None:
    """A new PostgreSQL user of a dynamic role, with its lease (the password goes to stdout only)."""
    data, lease = _engine(app, mount).creds(role_name, display_name="cli")
    _show(app, {**_lease_json(lease), "data": data})


# ---- static roles ------------------------------------------------------------------------------
@db.group(name="static-role")
def static_role() -> None:
    """Static roles (Vault's database/static-roles/:name), plain or alternating rotation."""


@static_role.command(name="write")
@click.argument("name")
@click.option("--db-name", help="Connection name.")
@click.option("--username", help="The PostgreSQL user whose password is rotated.")
@click.option("--rotation-period", help="1h, 24h, 86400 ...")
@click.option("--rotation-schedule", help="Cron (5 fields; 6 with seconds first).")
@click.option("--rotation-timezone", help="IANA zone of --rotation-schedule (default UTC).")
@click.option("--rotation-window", help="How long after a scheduled time a rotation may still run.")
@click.option("--rotation-statement", "statements", multiple=True, help="Repeat for several statements.")
@click.option("--strategy", type=click.Choice(["plain", "alternating"]), help="Rotation strategy (default plain).")
@click.option("--grace-period", help="Alternating: how long the previous user keeps working.")
@click.option("--username-b", help="Alternating: the second user (default <username>_b, created if absent).")
@click.option("--field", "pairs", multiple=True, metavar="KEY=VALUE", help="Any other field (JSON values).")
@mount_option
@pass_app
def static_write(app: AppContext, name: str, db_name: str | None, username: str | None, rotation_period: str | None,
                 rotation_schedule: str | None, rotation_timezone: str | None, rotation_window: str | None,
                 statements: tuple[str, ...], strategy: str | None, grace_period: str | None,
                 username_b: str | None, pairs: tuple[str, ...], mount: str) -> None:
    """Create (and rotate at once) or update a static role."""
    fields = _fields(pairs)
    for key, value in (("db_name", db_name), ("username", username), ("rotation_period", rotation_period),
                       ("rotation_schedule", rotation_schedule), ("rotation_timezone", rotation_timezone),
                       ("rotation_window", rotation_window), ("rotation_strategy", strategy),
                       ("grace_period", grace_period), ("username_b", username_b)):
        if value is not None:
            fields[key] = value
    if statements:
        fields["rotation_statements"] = list(statements)
    _engine(app, mount).write_static_role(name, fields)
    emit(app, {"name": name}, lambda: console.print(f"static role {name} written"))


@static_role.command(name="list")
@mount_option
@pass_app
def static_list(app: AppContext, mount: str) -> None:
    """Every static role with its last and next rotation and its state."""
    engine = _engine(app, mount)
    rows = engine.overview()

    def human() -> None:
        for r in rows:
            console.print(f"{r['name']}  {r['strategy']}  current={r['current']}  last={r['last_rotation']}  "
                          f"next={r['next_rotation']}  {r['state']}")

    emit(app, rows, human)


_item_commands(static_role, "static role", DatabaseEngine.read_static_role, DatabaseEngine.delete_static_role)


@static_role.command(name="creds")
@click.argument("name")
@mount_option
@pass_app
def static_creds(app: AppContext, name: str, mount: str) -> None:
    """The current username and password (and the previous user's while in its grace period)."""
    _show(app, _engine(app, mount).static_creds(name))


@static_role.command(name="timeline")
@click.argument("name")
@mount_option
@pass_app
def static_timeline(app: AppContext, name: str, mount: str) -> None:
    """Each generation of the role's credential: current, grace or retired."""
    _show(app, _engine(app, mount).static_timeline(name))


@db.command()
@click.argument("name")
@click.option("--root", is_flag=True, help="NAME is a connection: rotate its root credential.")
@mount_option
@pass_app
def rotate(app: AppContext, name: str, root: bool, mount: str) -> None:
    """Rotate a static role's password now (or, with --root, a connection's root password)."""
    engine = _engine(app, mount)
    if root:
        engine.rotate_root(name)
    else:
        engine.rotate_role(name)
    emit(app, {"rotated": name}, lambda: console.print(f"{'root credential of ' if root else 'static role '}{name} "
                                                       "rotated"))


# ---- leases ------------------------------------------------------------------------------------
@db.group()
def leases() -> None:
    """Leases of dynamic credentials (Vault's sys/leases)."""


@leases.command(name="list")
@click.argument("prefix", default="")
@mount_option
@pass_app
def leases_list(app: AppContext, prefix: str, mount: str) -> None:
    _show(app, _engine(app, mount).leases.list(prefix or f"{mount}/creds/"))


@leases.command(name="lookup")
@click.argument("lease_id")
@mount_option
@pass_app
def leases_lookup(app: AppContext, lease_id: str, mount: str) -> None:
    _show(app, _lease_json(_engine(app, mount).leases.lookup(lease_id)))


@leases.command(name="renew")
@click.argument("lease_id")
@click.option("--increment", type=int, help="Seconds (default: the role's TTL), within the max TTL.")
@mount_option
@pass_app
def leases_renew(app: AppContext, lease_id: str, increment: int | None, mount: str) -> None:
    _show(app, _lease_json(_engine(app, mount).leases.renew(lease_id, increment)))


@leases.command(name="revoke")
@click.argument("lease_id")
@click.option("--prefix", is_flag=True, help="Revoke every lease whose id starts with LEASE_ID.")
@mount_option
@pass_app
def leases_revoke(app: AppContext, lease_id: str, prefix: bool, mount: str) -> None:
    engine = _engine(app, mount)
    if prefix:
        n = engine.leases.revoke_prefix(lease_id)
    else:
        engine.leases.revoke(lease_id)
        n = 1
    emit(app, {"revoked": n}, lambda: console.print(f"{n} lease(s) revoked"))


@leases.command(name="sweep")
@mount_option
@pass_app
def leases_sweep(app: AppContext, mount: str) -> None:
    """Revoke expired leases now (the scheduler does this in every maintain pass)."""
    _show(app, _engine(app, mount).leases.sweep().to_json())
