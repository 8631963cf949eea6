"""The database secrets engine mount: Vault's ``/v1/<mount>/...`` over :mod:`nebula_credential.database`.

A thin router, as the Transit mount is: each handler authorises first
(``ctx.require``), then runs one :class:`~nebula_credential.database.DatabaseEngine`
call off the event loop and shapes Vault's answer.  Paths and capabilities
follow Vault's: ``config/:name``, ``reset/:name``, ``rotate-root/:name``,
``roles/:name``, ``creds/:name`` (read), ``static-roles/:name``,
``static-creds/:name`` (read), ``rotate-role/:name``; a write to a name that
does not exist yet needs ``create`` or ``update``, to an existing one
``update``, as Vault's existence check decides.

Status codes are OpenBao's (recorded by ``tests/test_diff_database.py``): a
write answers 204 (200 with ``warnings`` when there are some), a read of an
absent connection or role 404 with no message, ``creds``/``static-creds`` of an
absent role 400 ``unknown role: <name>``.  Where OpenBao answers 500 for the
caller's mistake (an unknown connection name, a role not in
``allowed_roles``), we answer 400 with the same words; PostgreSQL unreachable
is 502, never a 5xx dressed as bad input and never the password or URL.

``creds/:name`` answers with ``lease_id``, ``lease_duration`` and ``renewable``
as Vault does; the lease belongs to the requesting token (its accessor), so
revoking the token revokes the lease.  The generated password is added to the
request's redaction set (:data:`~nebula_credential.logredact.presented`), so no
log line written while the request runs can show it; audit events never carry
response data at all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import logredact
from ..database import (
    DatabaseEngine,
    DatabaseInputError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
)
from ..leases import LeaseInputError
from ._backend import Backend
from ._request import Ctx, endpoint, read_json
from .errors import HTTPError

NO_CONTENT = 204
#: Answered when PostgreSQL could not be reached or failed: an upstream fault, not the caller's and not ours.
BAD_GATEWAY = 502
Handler = Callable[[Request, Ctx], Awaitable[Response]]


def _protect(*values: Any) -> None:
    """Redact ``values`` from every log line written for the rest of this request."""
    extra = tuple(v for v in values if isinstance(v, str) and v)
    if extra:
        logredact.presented.set((*logredact.presented.get(), *extra))


class DatabaseMount:
    """Routes of one ``database`` mount; the mount table mounts them at ``/v1/<mount>``."""

    def __init__(self, mount: str = "database") -> None:
        self.mount = mount
        self._engine: DatabaseEngine | None = None
        self._lock = threading.Lock()

    async def engine(self, backend: Backend) -> DatabaseEngine:
        """The mount's engine, built on first use off the event loop (its constructor reads the store)."""
        if self._engine is None:
            engine = await backend.run(DatabaseEngine, backend.vault, mount=self.mount)
            with self._lock:
                if self._engine is None:
                    self._engine = engine
        return self._engine

    def routes(self) -> list[BaseRoute]:
        def route(path: str, handler: Handler, methods: list[str]) -> Route:
            return Route(path, endpoint(handler), methods=methods)

        post = ["POST", "PUT"]
        item = ["GET", "POST", "PUT", "DELETE"]
        return [
            route("/config", self.list_connections, ["LIST"]),
            route("/config/{name}", self.connection, item),
            route("/reset/{name}", self.reset, post),
            route("/rotate-root/{name}", self.rotate_root, post),
            route("/roles", self.list_roles, ["LIST"]),
            route("/roles/{name}", self.role, item),
            route("/creds/{name}", self.creds, ["GET"]),
            route("/static-roles", self.list_static_roles, ["LIST"]),
            route("/static-roles/{name}", self.static_role, item),
            route("/static-creds/{name}", self.static_creds, ["GET"]),
            route("/rotate-role/{name}", self.rotate_role, post),
        ]

    # ---- plumbing ---------------------------------------------------------------------
    async def _call(self, ctx: Ctx, op: str, *args: Any, missing: HTTPError | None = None, write: bool = False,
                    **kw: Any) -> Any:
        """Engine operation ``op`` off the event loop, its typed errors turned into Vault's answers.

        Called only after the handler authorised the request: the engine is built here, on first use,
        and building it reads the store.
        """
        fn = getattr(await self.engine(ctx.backend), op)
        try:
            if write:
                return await ctx.backend.write(fn, *args, **kw)
            return await ctx.backend.run(fn, *args, **kw)
        except DatabaseNotFoundError as exc:
            if missing is not None:
                raise missing from None
            raise HTTPError(400, str(exc)) from None
        except DatabaseInputError as exc:
            raise HTTPError(400, str(exc)) from None
        except DatabaseUnavailableError as exc:
            raise HTTPError(BAD_GATEWAY, str(exc) or "the database could not be reached") from None

    @staticmethod
    def _name(request: Request) -> str:
        return str(request.path_params["name"])

    async def _require_write(self, ctx: Ctx, exists: str, name: str) -> None:
        """``update`` on an existing item, ``create`` (or ``update``) on a new one: Vault's existence check.
        The existence read runs only for a token that may create (so it is authorised to learn it)."""
        if ctx.allows("update"):
            ctx.require("update")
            return
        if not ctx.allows("create"):
            ctx.require("update")  # raises 403
        try:
            await self._call(ctx, exists, name, missing=_Absent(404))
        except _Absent:
            ctx.require("create")
            return
        ctx.require("update")  # it exists: create alone does not allow overwriting it

    async def _list(self, ctx: Ctx, folder: str, op: str) -> Response:
        ctx.require("list", f"{self.mount}/{folder}/")
        names = await self._call(ctx, op)
        if not names:
            raise HTTPError(404)
        return ctx.reply({"keys": sorted(names)})

    @staticmethod
    def _written(ctx: Ctx, warnings: Any) -> Response:
        """204, or 200 with ``data`` null and the warnings, as Vault answers a write that has some."""
        if not warnings:
            return Response(status_code=NO_CONTENT)
        return ctx.reply(None, warnings=[str(w) for w in warnings])

    async def _item(self, request: Request, ctx: Ctx, kind: str, *, hidden: frozenset[str] = frozenset(),
                    unavailable: int = BAD_GATEWAY) -> Response:
        """GET/POST/PUT/DELETE of one ``kind`` (``connection``, ``role``, ``static_role``): the engine's
        ``read_<kind>``, ``write_<kind>``, ``delete_<kind>``.  ``hidden`` fields are left out of the read
        (Vault has none there), ``unavailable`` is the status of a PostgreSQL failure during the write."""
        name = self._name(request)
        if request.method == "GET":
            ctx.require("read")
            found = await self._call(ctx, f"read_{kind}", name, missing=HTTPError(404))
            return ctx.reply({k: v for k, v in found.items() if k not in hidden})
        if request.method == "DELETE":
            ctx.require("delete")
            with contextlib.suppress(_Absent):  # deleting nothing succeeds, as in Vault
                await self._call(ctx, f"delete_{kind}", name, missing=_Absent(404), write=True)
            return Response(status_code=NO_CONTENT)
        await self._require_write(ctx, f"read_{kind}", name)
        body = await read_json(request)
        if kind == "connection":
            _protect(body.get("password"))
        db_name = body.get("db_name")
        missing = _no_connection(db_name) if isinstance(db_name, str) else None
        try:
            warnings = await self._call(ctx, f"write_{kind}", name, body, missing=missing, write=True)
        except HTTPError as exc:
            if exc.status == BAD_GATEWAY and unavailable != BAD_GATEWAY:
                raise HTTPError(unavailable, *exc.messages) from None
            raise
        return self._written(ctx, warnings)

    # ---- connections ------------------------------------------------------------------
    async def list_connections(self, request: Request, ctx: Ctx) -> Response:
        return await self._list(ctx, "config", "list_connections")

    async def connection(self, request: Request, ctx: Ctx) -> Response:
        # a write verifies the connection: a failure there is the request's (a wrong password, a bad URL),
        # answered 400 as OpenBao does
        return await self._item(request, ctx, "connection", unavailable=400)

    async def reset(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        name = self._name(request)
        await self._call(ctx, "reset_connection", name, missing=_no_connection(name), write=True)
        return Response(status_code=NO_CONTENT)

    async def rotate_root(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        name = self._name(request)
        await self._call(ctx, "rotate_root", name, missing=_no_connection(name), write=True)
        return Response(status_code=NO_CONTENT)

    # ---- dynamic roles ----------------------------------------------------------------
    async def list_roles(self, request: Request, ctx: Ctx) -> Response:
        return await self._list(ctx, "roles", "list_roles")

    async def role(self, request: Request, ctx: Ctx) -> Response:
        return await self._item(request, ctx, "role")

    async def creds(self, request: Request, ctx: Ctx) -> Response:
        """A new PostgreSQL user under a lease owned by the requesting token."""
        ctx.require("read")
        name = self._name(request)
        token = ctx.token
        try:
            data, lease = await self._call(ctx, "creds", name, token_accessor=token.accessor,
                                           token_expires_at=token.expires_at, missing=_Absent(404), write=True)
        except _Absent:  # the role, or the connection it names: OpenBao's words for each
            role = await self._call(ctx, "read_role", name, missing=HTTPError(400, f"unknown role: {name}"))
            raise _no_connection(str(role.get("db_name", ""))) from None
        _protect(data.get("password"))
        ctx.details.update(lease_id=lease.lease_id)
        return ctx.reply(data, lease_id=lease.lease_id, renewable=lease.renewable,
                         lease_duration=max(0, round(lease.expire_time - lease.issue_time)))

    # ---- static roles -----------------------------------------------------------------
    async def list_static_roles(self, request: Request, ctx: Ctx) -> Response:
        return await self._list(ctx, "static-roles", "list_static_roles")

    async def static_role(self, request: Request, ctx: Ctx) -> Response:
        # its first rotation runs inside the write: a failure there (no such user) refuses the role, 400
        return await self._item(request, ctx, "static_role", hidden=frozenset({"ttl"}), unavailable=400)

    async def static_creds(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("read")
        name = self._name(request)
        data = await self._call(ctx, "static_creds", name, missing=HTTPError(400, f"unknown role: {name}"))
        previous = data.get("previous")
        _protect(data.get("password"), previous.get("password") if isinstance(previous, dict) else None)
        return ctx.reply(data)

    async def rotate_role(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        await self._call(ctx, "rotate_role", self._name(request),
                         missing=HTTPError(400, "no static role found for role name"), write=True)
        return Response(status_code=NO_CONTENT)


def _no_connection(name: str) -> HTTPError:
    """OpenBao's words for a connection name that is not configured (it answers them with 500; we, 400)."""
    return HTTPError(400, f'failed to find entry for connection with name: "{name[:200]}"')


class _Absent(HTTPError):
    """Raised by :meth:`DatabaseMount._call` for an absent item where that is not an error."""




def purge_mount(backend: Backend, mount: str) -> None:
    """A disabled mount's leases are revoked (their users dropped), then its connections, roles and
    passwords deleted, as Vault does; runs in a worker thread.  A revocation that fails keeps the mount
    (400, OpenBao's answer too): its connection is still needed to drop those users."""
    try:
        DatabaseEngine(backend.vault, mount=mount).purge()
    except (DatabaseInputError, DatabaseUnavailableError, LeaseInputError) as exc:
        raise HTTPError(400, f"failed to revoke the leases of {mount}/: {exc}; they stay queued for retry and the "
                             "mount stays enabled") from None


__all__ = ["DatabaseMount", "purge_mount"]
