"""``auth/<mount>`` userpass: people log in with a username and password (Vault's API).

Passwords are kept only as argon2id hashes (``argon2-cffi``, its default
memory-hard parameters).  A login for an unknown user verifies against a
dummy hash, so its timing does not tell which users exist.  Failed logins
spend from a budget per source address and per user (429 past either; see
:class:`.authcommon.LoginLimiter`), and every attempt is audited.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._backend import Backend
from ._request import Ctx, endpoint, read_json, source_of
from .authcommon import (
    LoginLimiter,
    auth_store,
    cidrs,
    invalid,
    issue,
    item_endpoint,
    login_endpoint,
    login_reply,
    source_allowed,
    token_read,
    token_settings,
)
from .authstore import AuthStore
from .errors import HTTPError, PermissionDenied, bad_request

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
INVALID = "invalid username or password"
_HASHER = PasswordHasher()
#: argon2id needs its memory cost (64 MiB by default) per hash: at most this many at once per process,
#: so a burst of logins queues instead of taking the thread pool's 40 x 64 MiB.
HASHING = anyio.CapacityLimiter(4)


@functools.cache
def _dummy() -> str:
    """Verified against when the user does not exist, so an unknown name costs as much as a wrong password."""
    return _HASHER.hash("not a password of anyone")


def _username(request: Request) -> str:
    name = str(request.path_params["username"]).lower()  # Vault folds usernames to lower case
    if not _NAME.match(name):
        raise bad_request(f"invalid username {name!r}")
    return name


def _password(body: dict[str, Any]) -> str:
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise bad_request("missing password")
    return password


def verify(stored: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored or _dummy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class UserpassEngine:
    """One userpass mount (``auth/userpass`` by default)."""

    method = "userpass"

    def __init__(self, mount: str = "auth/userpass") -> None:
        self.mount = mount.strip("/")
        self.limiter = LoginLimiter()

    async def user(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        name = _username(request)

        async def save(old: dict[str, Any] | None) -> None:
            body = await read_json(request)
            user = token_settings(body, old)
            if "password" in body or old is None:
                user["hash"] = await anyio.to_thread.run_sync(_HASHER.hash, _password(body), limiter=HASHING)
            if "bound_cidrs" in body:
                user["token_bound_cidrs"] = cidrs(body, "bound_cidrs")
            await ctx.backend.write(store.put, self.mount, "user", name, user)

        return await item_endpoint(request, ctx, store, self.mount, "user", name, shown=token_read, save=save)

    def save_user(self, store: AuthStore, name: str, body: dict[str, Any]) -> None:
        """Create or update a user from a write's fields (the CLI's way in; the password is hashed here)."""
        if not _NAME.match(name.lower()):
            raise bad_request(f"invalid username {name!r}")
        old = store.get(self.mount, "user", name.lower())
        user = token_settings(body, old)
        if "password" in body or old is None:
            user["hash"] = _HASHER.hash(_password(body))
        store.put(self.mount, "user", name.lower(), user)

    async def password(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        store = auth_store(request)
        name = _username(request)
        user = await ctx.backend.run(store.get, self.mount, "user", name)
        if user is None:
            raise bad_request("username does not exist")
        user["hash"] = await anyio.to_thread.run_sync(_HASHER.hash, _password(await read_json(request)),
                                                     limiter=HASHING)
        await ctx.backend.write(store.put, self.mount, "user", name, user)
        return Response(status_code=204)

    async def policies(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        store = auth_store(request)
        name = _username(request)
        user = await ctx.backend.run(store.get, self.mount, "user", name)
        if user is None:
            raise bad_request("username does not exist")
        user = token_settings(await read_json(request), user)
        await ctx.backend.write(store.put, self.mount, "user", name, user)
        return Response(status_code=204)

    async def list_users(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("list", self.mount + "/users/")
        names = await ctx.backend.run(auth_store(request).names, self.mount, "user")
        if not names:
            raise HTTPError(404)
        return ctx.reply({"keys": names})

    async def login(self, request: Request, backend: Backend, details: dict[str, Any]) -> Response:
        store = auth_store(request)
        name = _username(request)
        password = _password(await read_json(request))
        user = await backend.run(store.get, self.mount, "user", name)
        ok = await anyio.to_thread.run_sync(verify, None if user is None else user.get("hash"), password,
                                            limiter=HASHING)
        if not ok or user is None:
            raise invalid(INVALID)
        if not source_allowed(source_of(request), user.get("token_bound_cidrs", [])):
            raise PermissionDenied()  # after the password, as Vault: 403, not 400
        auth = await issue(backend, user, display_name=f"{self.mount.split('/')[-1]}-{name}",
                           metadata={"username": name}, path=f"{self.mount}/login/{name}")
        return login_reply(auth, details)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/login/{username}", login_endpoint(self.login, method=self.method, mount=self.mount,
                                                      limiter=self.limiter, user_of=_login_user),
                  methods=["POST", "PUT"]),
            Route("/users", endpoint(self.list_users), methods=["LIST"]),
            Route("/users/{username}", endpoint(self.user), methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/users/{username}/password", endpoint(self.password), methods=["POST", "PUT"]),
            Route("/users/{username}/policies", endpoint(self.policies), methods=["POST", "PUT"]),
        ]


def _login_user(request: Request) -> str:
    return str(request.path_params.get("username", "")).lower()[:128]
