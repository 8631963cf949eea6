"""The ASGI application: Vault's HTTP API routed by mount.

``/v1/sys``, ``/v1/auth/token``, and under ``/v1`` one dispatcher for every
other mount: the config file's and those enabled at runtime through
``sys/mounts`` and ``sys/auth``, kept in the store and shared by every
process (see :mod:`.mounts`).  An engine is an object with a ``routes()``
list, and every handler goes through ``_request.endpoint`` for the token,
the policy check and the audit event.

One pure-ASGI middleware runs first (:class:`.dispatch.VaultRequestPath`):
the source budget, the path normalised once (see :func:`.policies.normalise`)
and written back into the scope, so routing and authorisation see the same
path, ``GET ?list=true`` mapped to Vault's ``LIST``, the request body limit;
then under ``/v1`` the route from tables compiled once and the endpoint
called directly.  What those tables do not answer, and every other path,
goes through Starlette's Router below, the routes being the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

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
from ._request import audit_unrouted
from .database import DatabaseMount, purge_mount
from .dispatch import VaultRequestPath
from .mounts import EngineType, MountDispatcher, MountTable, builtin_mounts, register_secret_engine, sys_routes
from .ratelimit import ChangeWatch

# The secret engines beside kv and transit that ``sys/mounts`` enables (auth methods: authmounts).
register_secret_engine("database", EngineType(lambda e: DatabaseMount(e.path).routes(),
                                             purge=lambda backend, e: purge_mount(backend, e.path),
                                             description="database credentials: PostgreSQL"))

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
    app.add_middleware(VaultRequestPath, max_body=server.max_request_size)
    return app


def ops_routes(paths: list[str]) -> list[BaseRoute]:
    """The daemon's /metrics and /healthz, served from ``app.state.ops[path]`` (set at startup)."""

    async def run(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        handler = request.app.state.ops[request.url.path]
        status, ctype, body = await run_in_threadpool(handler)
        return Response(body, status_code=status, media_type=ctype)

    return [Route(path, run, methods=["GET"]) for path in paths]
