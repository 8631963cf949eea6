"""``/v1/sys/*``: health, seal status, ACL policies, capabilities (the mount table is :mod:`.mounts`).

The node answers as Vault's unsealed, initialised, single active node: there
is nothing to seal (keys stay behind the provider) and no cluster, so the
``seal-status``, ``leader`` and ``init`` answers are fixed, with Vault's
field names and types, and unauthenticated as in Vault.  Capabilities are
decided by the same ACL that authorises every request (:mod:`.policies`).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .._version import __version__
from ._request import VPATH, Ctx, endpoint, read_json
from .errors import HTTPError, bad_request
from .mounts import table_of
from .openapi import document
from .policies import BUILTIN, ROOT_POLICY, check_name

CLUSTER_NAME = "nebula-credential"
#: Our one audit device: the hash-chained trail in the store (``nebula-credential audit``).
AUDIT_PATH = "store/"
#: Keys of Vault's response envelope, never overwritten by a copied data field.
_ENVELOPE = frozenset({"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings",
                       "auth"})


def _storage_type(request: Request) -> str:
    vault = request.app.state.backend.vault
    return str(getattr(vault, "sync", vault).storage_type)


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
        "cluster_name": CLUSTER_NAME,
        "cluster_id": "",
        "enterprise": False,
    }
    return JSONResponse(body, status_code=200)


async def seal_status(request: Request, ctx: Ctx | None) -> Response:
    """``bao status``: never sealed (the root key lives behind the provider, not a Shamir split)."""
    return JSONResponse({
        "type": "shamir",
        "initialized": True,
        "sealed": False,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": __version__,
        "build_date": "",
        "commit_date": "",
        "migration": False,
        "cluster_name": CLUSTER_NAME,
        "cluster_id": "",
        "recovery_seal": False,
        "storage_type": _storage_type(request),
    })


async def leader(request: Request, ctx: Ctx | None) -> Response:
    """A node without HA, as Vault reports one: every ``serve`` on a store is equal."""
    return JSONResponse({
        "ha_enabled": False,
        "is_self": False,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": "",
        "leader_cluster_address": "",
        "performance_standby": False,
        "performance_standby_last_remote_wal": 0,
    })


async def init(request: Request, ctx: Ctx | None) -> Response:
    if request.method == "GET":
        return JSONResponse({"initialized": True})
    raise bad_request("already initialized: the store is set up with `nebula-credential init`")


async def openapi(request: Request, ctx: Ctx | None) -> Response:
    return JSONResponse(document(request.app.state.kv_mounts))


# ---- policies ------------------------------------------------------------------------
async def _policy_read(ctx: Ctx, name: str) -> str:
    ctx.require("read")
    text = await ctx.backend.policy_get(name)
    if text is None:
        raise HTTPError(404, f"no policy named: {name}")
    return text


async def _policy_write(request: Request, ctx: Ctx, name: str) -> list[str] | None:
    """Store a policy from ``policy`` (or the legacy ``rules``); returns Vault's warnings."""
    backend = ctx.backend
    ctx.require_any("create", "update")
    exists = await backend.policy_get(name) is not None
    ctx.require("update" if exists else "create")
    body = await read_json(request)
    text = body.get("policy")
    warnings = None
    if text is None and "rules" in body:
        text = body.get("rules")
        warnings = ["'rules' is deprecated, please use 'policy' instead"]
    if not isinstance(text, str) or not text.strip():
        raise bad_request("'policy' parameter not supplied or empty")
    if name == ROOT_POLICY:
        raise bad_request("cannot update the root policy")
    await backend.policy_put(name, text)
    return warnings


async def _policy_delete(ctx: Ctx, name: str) -> Response:
    ctx.require("delete")
    if name in BUILTIN:
        raise bad_request(f"cannot delete the {name} policy")
    await ctx.backend.policy_delete(name)
    return Response(status_code=204)


async def policy(request: Request, ctx: Ctx) -> Response:
    """``sys/policies/acl/:name``: the policy text as ``policy``."""
    name = check_name(str(request.path_params["name"]))
    if request.method == "GET":
        return ctx.reply({"name": name, "policy": await _policy_read(ctx, name)})
    if request.method == "DELETE":
        return await _policy_delete(ctx, name)
    await _policy_write(request, ctx, name)
    return Response(status_code=204)


async def legacy_policy(request: Request, ctx: Ctx) -> Response:
    """``sys/policy/:name``: Vault's older endpoint; the text is ``rules``, copied to the top level."""
    name = check_name(str(request.path_params["name"]))
    if request.method == "GET":
        data: dict[str, Any] = {"name": name, "rules": await _policy_read(ctx, name)}
        return ctx.reply(data, **data)
    if request.method == "DELETE":
        return await _policy_delete(ctx, name)
    warnings = await _policy_write(request, ctx, name)
    if warnings:
        return ctx.reply(None, warnings=warnings)
    return Response(status_code=204)


async def policy_list(request: Request, ctx: Ctx) -> Response:
    """``LIST sys/policies/acl``: ``keys`` only, as Vault."""
    ctx.require_list()
    return ctx.reply({"keys": await ctx.backend.policy_list()})


async def legacy_policy_list(request: Request, ctx: Ctx) -> Response:
    """``GET sys/policy``: ``keys`` and ``policies``, in ``data`` and at the top level, as Vault."""
    ctx.require("read")
    names = await ctx.backend.policy_list()
    data: dict[str, Any] = {"keys": names, "policies": names}
    return ctx.reply(data, **data)


# ---- capabilities ------------------------------------------------------------------
def _paths(body: dict[str, Any]) -> list[str]:
    raw = body.get("paths", body.get("path"))
    if isinstance(raw, str):
        raw = [p.strip() for p in raw.split(",") if p.strip()]
    if not raw or not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise bad_request("paths must be supplied")
    if len(raw) > 256:
        raise bad_request("at most 256 paths per request")
    return raw


async def _capabilities(ctx: Ctx, policies: tuple[str, ...], paths: list[str]) -> Response:
    """Vault's shape: one key per path (and ``capabilities`` for a single path), also at the top level.

    The caps come from the token's ACL, the same object every request is
    authorised with; ``root`` for the root policy, ``deny`` for nothing.
    """
    acl = await ctx.backend.acl(policies)
    data: dict[str, Any] = {}
    for path in paths:  # answered under the path as sent, decided on it without its leading slash
        if ROOT_POLICY in policies:
            data[path] = ["root"]
        else:
            data[path] = sorted(acl.capabilities(path.lstrip("/"))) or ["deny"]
    if len(paths) == 1:
        data["capabilities"] = data[paths[0]]
    return ctx.reply(data, **{k: v for k, v in data.items() if k not in _ENVELOPE})


async def capabilities(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    paths = _paths(body)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("no token found")
    row = await ctx.backend.peek(token)
    if row is None:
        raise bad_request("invalid token")
    return await _capabilities(ctx, row.policies, paths)


async def capabilities_self(request: Request, ctx: Ctx) -> Response:
    """Any valid token may ask about itself (Vault's ``default`` policy grants it)."""
    ctx.operation = "update"
    return await _capabilities(ctx, ctx.token.policies, _paths(await read_json(request)))


async def capabilities_accessor(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    paths = _paths(body)
    accessor = body.get("accessor")
    if not isinstance(accessor, str) or not accessor:
        raise bad_request("missing accessor")
    row = await ctx.backend.run(ctx.backend.tokens.by_accessor, accessor)
    if row is None:
        raise bad_request("invalid accessor")
    return await _capabilities(ctx, row.policies, paths)


# ---- audit devices ---------------------------------------------------------------------
async def audit_list(request: Request, ctx: Ctx) -> Response:
    """Our one audit device, read-only: the hash-chained trail every request is written to."""
    ctx.require("sudo")
    ctx.require("read")
    data: dict[str, Any] = {AUDIT_PATH: {
        "type": "store",
        "description": "hash-chained audit trail in the credential store (read with `nebula-credential audit`)",
        "options": {},
        "local": False,
        "path": AUDIT_PATH,
    }}
    return ctx.reply(data, **data)


async def audit_change(request: Request, ctx: Ctx) -> Response:
    ctx.require("sudo")
    raise bad_request("audit devices cannot be enabled or disabled through the API: every request is "
                      "audited to the store's hash-chained trail, which is always on")


# ---- what the mount table does not route -------------------------------------------------
def not_found_message(request: Request) -> str:
    """Vault's words for a 404: ``unsupported path`` inside a mount, ``no handler for route`` outside."""
    vpath = str(request.scope.get(VPATH, request.url.path.removeprefix("/v1/")))
    if vpath == "sys" or vpath.startswith("sys/") or table_of(request).find(vpath) is not None:
        return "unsupported path"
    return f'no handler for route "{vpath[:200]}". route entry not found.'


def routes() -> list[BaseRoute]:
    return [
        Route("/health", endpoint(health, authenticated=False), methods=["GET", "HEAD"]),
        Route("/seal-status", endpoint(seal_status, authenticated=False), methods=["GET"]),
        Route("/leader", endpoint(leader, authenticated=False), methods=["GET"]),
        Route("/init", endpoint(init, authenticated=False), methods=["GET", "PUT", "POST"]),
        Route("/internal/specs/openapi", endpoint(openapi, authenticated=False), methods=["GET"]),
        Route("/policies/acl", endpoint(policy_list), methods=["LIST"]),
        Route("/policies/acl/{name}", endpoint(policy), methods=["GET", "PUT", "POST", "DELETE"]),
        Route("/policy", endpoint(legacy_policy_list), methods=["GET", "LIST"]),
        Route("/policy/{name}", endpoint(legacy_policy), methods=["GET", "PUT", "POST", "DELETE"]),
        Route("/capabilities", endpoint(capabilities), methods=["POST", "PUT"]),
        Route("/capabilities-self", endpoint(capabilities_self), methods=["POST", "PUT"]),
        Route("/capabilities-accessor", endpoint(capabilities_accessor), methods=["POST", "PUT"]),
        Route("/audit", endpoint(audit_list), methods=["GET"]),
        Route("/audit/{path:path}", endpoint(audit_change), methods=["PUT", "POST", "DELETE"]),
    ]
