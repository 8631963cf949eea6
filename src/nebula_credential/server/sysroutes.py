"""``/v1/sys/*``: health, ACL policies, the mount table clients probe, the OpenAPI document."""

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


async def ui_mounts(request: Request, ctx: Ctx) -> Response:
    """What the ``vault``/``bao`` CLI asks before a ``kv`` command: which engine serves a path."""
    ctx.operation = "read"
    path = str(request.path_params.get("path", ""))
    mount = path.split("/", 1)[0]
    if mount not in request.app.state.kv_mounts:
        raise HTTPError(403, "preflight capability check returned 403, please ensure client's policies "
                        "grant access to path \"" + path + "/\"")
    return ctx.reply({
        "path": mount + "/",
        "type": "kv",
        "description": f"KV v2 over keyring {request.app.state.kv_mounts[mount]}",
        "options": {"version": "2"},
        "accessor": f"kv_{mount}",
        "local": False,
        "seal_wrap": False,
        "external_entropy_access": False,
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
        "plugin_version": "",
        "running_plugin_version": "",
        "uuid": "",
    })


def routes() -> list[BaseRoute]:
    return [
        Route("/health", endpoint(health, authenticated=False), methods=["GET", "HEAD"]),
        Route("/internal/specs/openapi", endpoint(openapi, authenticated=False), methods=["GET"]),
        Route("/internal/ui/mounts/{path:path}", endpoint(ui_mounts), methods=["GET"]),
        Route("/policies/acl", endpoint(policy_list), methods=["LIST"]),
        Route("/policies/acl/{name}", endpoint(policy), methods=["GET", "PUT", "POST", "DELETE"]),
        Route("/policy", endpoint(policy_list), methods=["GET"]),
    ]
