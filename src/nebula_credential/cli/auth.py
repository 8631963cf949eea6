"""``auth``, ``approle`` and ``userpass``: the server's auth methods from the command line.

They write the same items the HTTP API does (through the server's auth
repository over the store's narrow auth tables), each change and its audit
event in one transaction.  A secret id is printed once and never kept; a
password is read from stdin or a hidden prompt, never from the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._common import AppContext, console, emit, err_console, pass_app

F = TypeVar("F", bound=Callable[..., Any])


def _store(app: AppContext):  # type: ignore[no-untyped-def]
    from ..server.authstore import AuthStore

    vault = app.vault()
    return vault, AuthStore(vault.auth_tables(), vault.provider, vault.clock)


def _mounts(app: AppContext):  # type: ignore[no-untyped-def]
    from ..server.authmounts import AuthMounts

    return AuthMounts(app.vault(), app.config.server)


def _route(app: AppContext, mount: str, kind: str) -> str:
    """``auth/<mount>`` when an auth method of ``kind`` is enabled there, else a clear error (the
    roles or users written would be served by nothing, and a later ``auth enable`` there would
    find them)."""
    from ..exceptions import NebulaCredentialError

    path = mount.strip("/")
    if not any(e.path == path and e.type == kind for e in _mounts(app).mounts()):
        raise NebulaCredentialError(f"no {kind} auth method at auth/{path}/: enable it first with "
                                    f"`nebula-credential auth enable {kind} --path {path}`")
    return f"auth/{path}"


def _mount_option(kind: str) -> Callable[[F], F]:
    return click.option("--mount", default=kind, show_default=True, metavar="PATH",
                        help=f"Path of the {kind} method, under auth/.")


def _row(mounts: Any, entry: Any) -> dict[str, Any]:
    names = mounts.entries(entry)
    return {"path": f"{entry.path}/", "type": entry.type, "accessor": entry.accessor,
            "description": entry.description, "entries": None if names is None else len(names)}


@click.group()
def auth() -> None:
    """Auth methods: how machines and people log in to ``serve``."""


@auth.command("list")
@pass_app
def auth_list(app: AppContext) -> None:
    """The auth methods enabled and how many roles or users each holds."""
    from ..server.authmounts import ENTRIES

    mounts = _mounts(app)
    rows = [_row(mounts, e) for e in mounts.mounts()]

    def human() -> None:
        for r in rows:
            noun = ENTRIES.get(r["type"], ("role", "roles"))[0 if r["entries"] == 1 else 1]
            entries = "" if r["entries"] is None else f"  {r['entries']} {noun}"
            console.print(f"{r['path']:<16} {r['type']:<9} {r['accessor']:<24}{entries}", markup=False)

    emit(app, {"auth": rows}, human)


@auth.command("enable")
@click.argument("method")
@click.option("--path", default=None, help="Mount path under auth/ (default: the method's name).")
@click.option("--description", default="", help="Shown in auth list and sys/auth.")
@pass_app
def auth_enable(app: AppContext, method: str, path: str | None, description: str) -> None:
    """Enable auth method METHOD (approle, userpass, jwt) at auth/PATH, as POST sys/auth/PATH does."""
    entry = _mounts(app).enable(path or method, method, description)
    emit(app, {"path": f"{entry.path}/", "type": entry.type, "accessor": entry.accessor},
         lambda: console.print(f"enabled {entry.type} at auth/{entry.path}/ (accessor {entry.accessor})",
                               markup=False))


@auth.command("disable")
@click.argument("path")
@pass_app
def auth_disable(app: AppContext, path: str) -> None:
    """Disable the auth method at auth/PATH and delete its roles, users and secret ids."""
    entry = _mounts(app).disable(path)
    shown = path.strip("/")
    data = {"path": f"{shown}/", "disabled": entry is not None, "type": None if entry is None else entry.type}
    emit(app, data, lambda: console.print(
        f"disabled {entry.type} at auth/{shown}/" if entry is not None else f"no auth method at auth/{shown}/",
        markup=False))


@click.group()
def approle() -> None:
    """AppRole roles and secret ids (mount auth/approle)."""


@approle.group("role")
def approle_role() -> None:
    """AppRole roles."""


@approle_role.command("write")
@click.argument("name")
@click.option("--policy", "policies", multiple=True, required=True, help="Token policy (repeatable).")
@click.option("--token-ttl", default=None, help="Token lifetime, e.g. 20m.")
@click.option("--token-max-ttl", default=None, help="Longest a token may be renewed to, e.g. 1h.")
@click.option("--secret-id-ttl", default=None, help="Secret id lifetime, e.g. 10m.")
@click.option("--secret-id-num-uses", type=int, default=None, help="Logins per secret id (0: unlimited).")
@_mount_option("approle")
@pass_app
def approle_role_write(app: AppContext, name: str, policies: tuple[str, ...], token_ttl: str | None,
                       token_max_ttl: str | None, secret_id_ttl: str | None, secret_id_num_uses: int | None,
                       mount: str) -> None:
    """Create or update a role."""
    from ..server.auth_approle import AppRoleEngine

    body: dict[str, Any] = {"token_policies": list(policies)}
    for key, value in (("token_ttl", token_ttl), ("token_max_ttl", token_max_ttl),
                       ("secret_id_ttl", secret_id_ttl), ("secret_id_num_uses", secret_id_num_uses)):
        if value is not None:
            body[key] = value
    engine = AppRoleEngine(_route(app, mount, "approle"))
    vault, store = _store(app)
    role_id = vault.audited_write(lambda tx: engine.save_role(store, name, body), "auth.approle.role.write",
                                  lambda _: {"mount": engine.mount, "role": name})
    emit(app, {"role": name, "role_id": role_id},
         lambda: console.print(f"role {name} written (role_id {role_id})", markup=False))


@approle_role.command("read")
@click.argument("name")
@_mount_option("approle")
@pass_app
def approle_role_read(app: AppContext, name: str, mount: str) -> None:
    """A role's settings and role id."""
    from ..exceptions import NebulaCredentialError
    from ..server.auth_approle import AppRoleEngine

    engine = AppRoleEngine(_route(app, mount, "approle"))
    _, store = _store(app)
    role = engine.read_role(store, name)
    if role is None:
        raise NebulaCredentialError(f"no AppRole role named {name}")

    def human() -> None:
        for key in sorted(role):
            console.print(f"{key:<24} {role[key]}", markup=False)

    emit(app, role, human)


@approle.command("secret-id")
@click.argument("name")
@_mount_option("approle")
@pass_app
def approle_secret_id(app: AppContext, name: str, mount: str) -> None:
    """Generate a secret id for role NAME and print it once (it is stored only as a keyed hash)."""
    from ..server.auth_approle import AppRoleEngine

    engine = AppRoleEngine(_route(app, mount, "approle"))
    vault, store = _store(app)
    made = vault.audited_write(lambda tx: engine.new_secret_id(store, name), "auth.approle.secret_id.create",
                               lambda m: {"mount": engine.mount, "role": name,
                                          "secret_id_accessor": m["secret_id_accessor"]})
    emit(app, made, lambda: click.echo(made["secret_id"]))
    if not app.json:
        err_console.print(f"accessor {made['secret_id_accessor']}, ttl {made['secret_id_ttl']}s, "
                          f"uses {made['secret_id_num_uses'] or 'unlimited'}", style="dim", markup=False)


@click.group()
def userpass() -> None:
    """userpass users (mount auth/userpass)."""


@userpass.group("user")
def userpass_user() -> None:
    """userpass users."""


@userpass_user.command("write")
@click.argument("name")
@click.option("--policy", "policies", multiple=True, required=True, help="Token policy (repeatable).")
@click.option("--token-ttl", default=None, help="Token lifetime, e.g. 1h.")
@_mount_option("userpass")
@pass_app
def userpass_user_write(app: AppContext, name: str, policies: tuple[str, ...], token_ttl: str | None,
                        mount: str) -> None:
    """Create or update a user; the password comes from stdin (piped) or a hidden prompt."""
    from ..exceptions import NebulaCredentialError
    from ..server.auth_userpass import UserpassEngine

    engine = UserpassEngine(_route(app, mount, "userpass"))
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise NebulaCredentialError("an empty password is refused")
    body: dict[str, Any] = {"token_policies": list(policies), "password": password}
    if token_ttl:
        body["token_ttl"] = token_ttl
    vault, store = _store(app)
    vault.audited_write(lambda tx: engine.save_user(store, name, body), "auth.userpass.user.write",
                        lambda _: {"mount": engine.mount, "user": name.lower()})
    emit(app, {"user": name.lower()}, lambda: console.print(f"user {name.lower()} written", markup=False))
