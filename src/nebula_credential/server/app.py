"""The ASGI application: Vault's HTTP API routed by mount.

``/v1/sys``, ``/v1/auth/token``, and under ``/v1`` one dispatcher for every
other mount: the config file's and those enabled at runtime through
``sys/mounts`` and ``sys/auth``, kept in the store and shared by every
process (see :mod:`.mounts`).  An engine is an object with a ``routes()``
list, and every handler goes through ``_request.endpoint`` for the token,
the policy check and the audit event.

A pure-ASGI middleware runs first: it normalises the path once (see
:func:`.policies.normalise`) and writes the result back into the scope, so
routing and authorisation see the same path; it maps ``GET ?list=true`` to
Vault's ``LIST`` and enforces the request body limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..aio import AsyncVault
from ..config import KeyManagementConfig
from ..vault import Vault
from . import (
    auth,
    authmounts,  # noqa: F401 - registers AppRole, userpass and JWT with sys/auth
    leaseroutes,
    sysroutes,
    wrapping,
)
from ._backend import backend_for
from ._request import VPATH, audit_unrouted
from .database import DatabaseMount, purge_mount
from .errors import HTTPError
from .mounts import EngineType, MountDispatcher, MountTable, builtin_mounts, register_secret_engine, sys_routes
from .policies import BadPathError, normalise
from .ratelimit import ChangeWatch, SourceBudgetMiddleware
from .workers import follow_changes

# The secret engines beside kv and transit that ``sys/mounts`` enables (auth methods: authmounts).
register_secret_engine("database", EngineType(lambda e: DatabaseMount(e.path).routes(),
                                             purge=lambda backend, e: purge_mount(backend, e.path),
                                             description="database credentials: PostgreSQL"))

#: How much of a refused body is read and dropped before answering 413.
DRAIN_LIMIT = 16 * 1024 * 1024
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Answer a request refused before routing (bad path, body too large), audited as any refusal."""
    response = await audit_unrouted(Request(scope, receive), JSONResponse({"errors": [message]}, status_code=status))
    await response(scope, receive, send)


class VaultPathMiddleware:
    """Normalise the path, map ``?list=true`` to LIST, cap the body size."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw.split(b"?", 1)[0]
        if raw.startswith(b"/v1/") or raw == b"/v1":
            try:
                vpath = normalise(raw[4:])
            except BadPathError as exc:
                await _refuse(scope, receive, send, 400, str(exc))
                return
            state = getattr(scope.get("app"), "state", None)
            if state is not None:
                follow_changes(state)  # another worker of this serve revoked or changed something
            scope = dict(scope)
            scope["path"] = "/v1/" + vpath
            scope["raw_path"] = scope["path"].encode("utf-8")
            scope[VPATH] = vpath
            if scope["method"] == "GET":
                query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
                if query.get("list", "").lower() in ("true", "1"):
                    scope["method"] = "LIST"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else the client sends nothing yet
                await _drain(receive)
            await _refuse(scope, receive, send, 413, f"request body larger than {self.max_body} bytes")
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                if message.get("more_body"):
                    await _drain(receive)
                raise HTTPError(413, f"request body larger than {self.max_body} bytes")
            return message

        return wrapped


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body (up to a bound), so the client reads our 413
    instead of a reset connection; a bigger body is cut off."""
    dropped = 0
    while dropped < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def _not_found(request: Request, exc: Exception) -> Response:
    return await audit_unrouted(request, JSONResponse({"errors": [sysroutes.not_found_message(request)]},
                                                      status_code=404))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return await audit_unrouted(request, JSONResponse({"errors": [f"unsupported operation {request.method}"]},
                                                      status_code=405))


def create_app(
    vault: Vault | AsyncVault | None,
    config: KeyManagementConfig | None = None,
    *,
    extra_routes: list[BaseRoute] | None = None,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """The server for ``vault``'s store; ``extra_routes`` adds /metrics, /healthz and the like.

    ``vault`` may be None when the ``lifespan`` opens it (an AsyncVault needs
    the running loop) and sets ``app.state.backend = backend_for(...)``.
    """
    if config is None:
        if vault is None:
            raise ValueError("create_app needs a config when the vault is opened later")
        config = vault.config
    server = config.server
    routes: list[BaseRoute] = [
        Mount("/v1/sys/wrapping", routes=wrapping.wrapping_routes()),
        Mount("/v1/sys", routes=[*sys_routes(), *sysroutes.routes(), *leaseroutes.routes()]),
        Mount("/v1/auth/token", routes=auth.routes()),
        wrapping.CubbyholeEngine().root_route(),  # cubbyhole/ is built in, as in Vault
        Mount("/v1/cubbyhole", routes=wrapping.CubbyholeEngine().routes()),
        *(extra_routes or []),
        Mount("/v1", app=MountDispatcher()),  # every other mount: the longest prefix in the mount table
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed}, lifespan=lifespan)
    if vault is not None:
        app.state.backend = backend_for(vault, config)
    app.state.request_timeout = server.request_timeout.total_seconds()
    app.state.kv_mounts = dict(server.kv_mounts)
    app.state.mounts = MountTable(builtin_mounts(server))
    app.state.changes = ChangeWatch()  # the other workers' revocations and policy and mount changes
    app.state.wrap_response = wrapping.wrap_response  # X-Vault-Wrap-TTL on any endpoint (see _request)
    app.add_middleware(VaultPathMiddleware, max_body=server.max_request_size)
    app.add_middleware(SourceBudgetMiddleware)  # outside: a spent budget is refused before any work
    return app


def ops_routes(paths: list[str]) -> list[BaseRoute]:
    """The daemon's /metrics and /healthz, served from ``app.state.ops[path]`` (set at startup)."""

    async def run(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        handler = request.app.state.ops[request.url.path]
        status, ctype, body = await run_in_threadpool(handler)
        return Response(body, status_code=status, media_type=ctype)

    return [Route(path, run, methods=["GET"]) for path in paths]
