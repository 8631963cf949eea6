"""``/v1/sys/*``: health, ACL policies, the OpenAPI document (the mount table is :mod:`.mounts`)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._version import __version__
from ._request import Ctx, endpoint, read_json
from .errors import HTTPError, bad_request
from .openapi import document
from .policies import BUILTIN, ROOT_POLICY, check_name


async def health(request: Request, ctx: Ctx | None) -> Response:
    """Vault's answer for an initialised, unsealed, active node."""
    body = {
        "initialized": True,
        "sealed": False,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": __version__,
        "cluster_name": "nebula-credential",
        "cluster_id": "",
        "enterprise": False,
    }
    return JSONResponse(body, status_code=200)


async def openapi(request: Request, ctx: Ctx | None) -> Response:
    return JSONResponse(document(request.app.state.kv_mounts))


async def policy(request: Request, ctx: Ctx) -> Response:
    name = check_name(str(request.path_params["name"]))
    backend = ctx.backend
    if request.method == "GET":
        ctx.require("read")
        text = await backend.policy_get(name)
        if text is None:
            raise HTTPError(404, f"no policy named: {name}")
        return ctx.reply({"name": name, "policy": text, "rules": text})
    if request.method == "DELETE":
        ctx.require("delete")
        if name in BUILTIN:
            raise bad_request(f"cannot delete the {name} policy")
        await backend.policy_delete(name)
        return Response(status_code=204)
    ctx.require_any("create", "update")
    exists = await backend.policy_get(name) is not None
    ctx.require("update" if exists else "create")
    body = await read_json(request)
    text = body.get("policy", body.get("rules"))
    if not isinstance(text, str) or not text.strip():
        raise bad_request("'policy' parameter not supplied or empty")
    if name == ROOT_POLICY:
        raise bad_request("cannot update the root policy")
    await backend.policy_put(name, text)
    return Response(status_code=204)


async def policy_list(request: Request, ctx: Ctx) -> Response:
    ctx.require_list()
    names = await ctx.backend.policy_list()
    return ctx.reply({"keys": names, "policies": names})


def routes() -> list[BaseRoute]:
    return [
        Route("/health", endpoint(health, authenticated=False), methods=["GET", "HEAD"]),
        Route("/internal/specs/openapi", endpoint(openapi, authenticated=False), methods=["GET"]),
        Route("/policies/acl", endpoint(policy_list), methods=["LIST"]),
        Route("/policies/acl/{name}", endpoint(policy), methods=["GET", "PUT", "POST", "DELETE"]),
        Route("/policy", endpoint(policy_list), methods=["GET"]),
    ]
