"""``/v1/auth/token/*``: Vault's token endpoints.

Access is decided by policy, as in Vault: the built-in ``default`` policy
lets a token look up, renew and revoke itself; every other endpoint needs
its path granted (``revoke-orphan``, ``accessors``, ``no_parent`` and
``period`` also need ``sudo``, or ``root``).  A child token never gets a
policy its parent lacks unless a token role allows it.  Fields Vault has
and this server does not are refused with a 400 naming them, never
silently ignored.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..durations import parse_duration
from ..servertables import TokenRow
from ._request import Ctx, endpoint, read_json
from .errors import HTTPError, PermissionDenied, bad_request
from .policies import ROOT_POLICY
from .tokenroles import Role, role_json
from .tokens import TokenError, remaining, token_json

_CREATE_FIELDS = frozenset({
    "policies", "meta", "no_parent", "no_default_policy", "renewable", "ttl", "lease", "type",
    "explicit_max_ttl", "display_name", "num_uses", "period", "format",
})
_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms|us|µs|ns))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def duration(body: dict[str, Any], name: str) -> timedelta | None:
    """A Vault duration field: seconds as a number or digits, ``90m``, ``1h0m0s`` (what the CLI
    sends), ``24h``...; None when absent, empty or zero."""
    value = body.get(name)
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, bool):
        raise bad_request(f"{name}: expected a duration")
    try:
        if isinstance(value, str) and _GO_DURATION.match(value.strip()):
            seconds = sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(value.strip()))
            found = parse_duration(seconds, name)
        elif isinstance(value, str) and value.strip().isdigit():
            found = parse_duration(int(value.strip()), name)
        else:
            found = parse_duration(value, name)
    except Exception:
        raise bad_request(f"{name}: expected a duration such as 1h, 1h30m0s or 3600") from None
    return found if found > timedelta(0) else None


def _flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "t", "f"):
        return value.lower() in ("true", "1", "t")
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean")
    return value


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 0)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) < value < 2**31:
        raise bad_request(f"{name} must be an integer")
    return value


def _names(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise bad_request(f"{field} must be a list of policy names")
    return [p.strip() for p in value if p.strip()]


def _auth(row: TokenRow, token: str, now: float) -> dict[str, Any]:
    policies = list(row.policies)
    return {
        "client_token": token,
        "accessor": row.accessor,
        "policies": policies,
        "token_policies": policies,
        "metadata": row.meta or None,
        "lease_duration": remaining(row, now),
        "renewable": row.renewable,
        "entity_id": "",
        "token_type": row.token_type,
        "orphan": row.parent is None,
        "mfa_requirement": None,
        "num_uses": row.num_uses,
    }


def _now(ctx: Ctx) -> float:
    return ctx.backend.vault.clock().timestamp()


def _privileged(ctx: Ctx) -> bool:
    return ROOT_POLICY in ctx.token.policies or ctx.allows("sudo")


async def _create(request: Request, ctx: Ctx, *, orphan: bool, role: Role | None = None) -> Response:
    body = await read_json(request)
    unknown = sorted(k for k, v in body.items() if k not in _CREATE_FIELDS and v not in (None, "", [], {}, False, 0))
    if unknown:
        raise bad_request(f"unsupported field(s) for token creation: {', '.join(unknown)}")
    kind = body.get("type") or "service"
    if kind not in ("service", "default", "batch"):
        raise bad_request(f"invalid 'token_type' value {str(kind)[:32]!r}")
    if kind == "batch" or (role is not None and "batch" in role.token_type):
        raise bad_request("batch tokens are not supported by this server: create a service token (type=service)")
    requested = _names(body.get("policies"), "policies")
    meta = body.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad_request("meta must be an object of strings")
    display = body.get("display_name") or "token"
    if not isinstance(display, str):
        raise bad_request("display_name must be a string")
    num_uses = _int(body, "num_uses")
    if num_uses < 0:
        raise bad_request("number of uses cannot be negative")
    no_parent = _flag(body, "no_parent")
    if no_parent and not orphan and role is None and not _privileged(ctx):
        raise bad_request("root or sudo privileges required to create orphan token")
    period = duration(body, "period")
    if period is not None and role is None and not _privileged(ctx):
        raise bad_request("root or sudo privileges required to create periodic token")
    ttl = duration(body, "ttl") or duration(body, "lease")
    explicit_max = duration(body, "explicit_max_ttl")
    renewable = _flag(body, "renewable", True)
    no_default = _flag(body, "no_default_policy")
    check_subset = True
    path = "auth/token/create-orphan" if orphan else "auth/token/create"
    if role is not None:
        path = f"auth/token/create/{role.name}"
        policies, check_subset = role.policies_for(requested, ctx.token.policies)
        orphan = role.orphan
        renewable = renewable and role.renewable
        period = role.period or period
        explicit_max = role.explicit_max_ttl or explicit_max
        no_default = no_default or role.no_default_policy
        num_uses = num_uses or role.num_uses
    else:
        policies = requested if requested is not None else [p for p in ctx.token.policies]
    parent = None if (orphan or no_parent) else ctx.token
    try:
        token, row = await ctx.backend.write(
            ctx.backend.tokens.create, policies, ttl=ttl, explicit_max_ttl=explicit_max, parent=parent,
            display_name=f"token-{display}" if display != "token" else display, meta=meta, renewable=renewable,
            num_uses=num_uses, period=period, no_default_policy=no_default, role=role.name if role else "",
            path=path, check_subset=check_subset,
            bound_cidrs=role.bound_cidrs if role is not None and role.bound_cidrs else None,  # else the parent's
        )
    except TokenError as exc:
        raise bad_request(str(exc)) from None
    ctx.details["created_accessor"] = row.accessor
    return ctx.reply(None, auth=_auth(row, token, row.created_at))


async def create(request: Request, ctx: Ctx) -> Response:
    ctx.require_any("update", "create")
    return await _create(request, ctx, orphan=False)


async def create_orphan(request: Request, ctx: Ctx) -> Response:
    ctx.require_any("update", "create")
    return await _create(request, ctx, orphan=True)


async def create_role(request: Request, ctx: Ctx) -> Response:
    ctx.require_any("update", "create")
    name = request.path_params["name"]
    role = await ctx.backend.run(ctx.backend.roles.get, name)
    if role is None:
        raise bad_request("unknown role " + name[:64])
    return await _create(request, ctx, orphan=False, role=role)


async def _target(ctx: Ctx, body: dict[str, Any]) -> TokenRow:
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("missing token")
    row = await ctx.backend.run(ctx.backend.tokens.lookup, token)
    if row is None:
        raise HTTPError(403, "bad token")
    return row


async def _by_accessor(ctx: Ctx, body: dict[str, Any]) -> TokenRow:
    accessor = body.get("accessor")
    if not isinstance(accessor, str) or not accessor:
        raise bad_request("missing accessor")
    ctx.details["target_accessor"] = accessor
    row = await ctx.backend.run(ctx.backend.tokens.by_accessor, accessor)
    if row is None:
        raise bad_request("invalid accessor")
    return row


async def lookup_self(request: Request, ctx: Ctx) -> Response:
    ctx.require("read")
    return ctx.reply(token_json(ctx.token, _now(ctx), ctx.token_value))


async def lookup(request: Request, ctx: Ctx) -> Response:
    if request.method == "GET":
        ctx.require("read")
        return ctx.reply(token_json(ctx.token, _now(ctx), ctx.token_value))
    ctx.require("update")
    body = await read_json(request)
    row = await _target(ctx, body)
    return ctx.reply(token_json(row, _now(ctx), str(body["token"])))


async def lookup_accessor(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    row = await _by_accessor(ctx, await read_json(request))
    return ctx.reply(token_json(row, _now(ctx)))


async def _renew(ctx: Ctx, row: TokenRow, body: dict[str, Any], token: str) -> Response:
    try:
        renewed = await ctx.backend.write(ctx.backend.tokens.renew, row, duration(body, "increment"))
    except TokenError as exc:
        raise bad_request(str(exc)) from None
    return ctx.reply(None, auth=_auth(renewed, token, _now(ctx)))


async def renew_self(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    return await _renew(ctx, ctx.token, await read_json(request), ctx.token_value)


async def renew(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    row = await _target(ctx, body)
    return await _renew(ctx, row, body, str(body["token"]))


async def renew_accessor(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    return await _renew(ctx, await _by_accessor(ctx, body), body, "")


async def revoke_self(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    await ctx.backend.write(ctx.backend.tokens.revoke, ctx.token.accessor)
    return Response(status_code=204)


async def revoke(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    body = await read_json(request)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("missing token")
    row = await ctx.backend.run(ctx.backend.tokens.lookup, token)
    if row is not None:  # Vault answers 204 for a token already gone
        ctx.details["target_accessor"] = row.accessor
        await ctx.backend.write(ctx.backend.tokens.revoke, row.accessor)
    return Response(status_code=204)


async def revoke_orphan(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    if not _privileged(ctx):
        raise bad_request("root or sudo privileges required to revoke and orphan")
    row = await _target(ctx, await read_json(request))
    ctx.details["target_accessor"] = row.accessor
    await ctx.backend.write(ctx.backend.tokens.revoke_orphan, row.accessor)
    return Response(status_code=204)


async def revoke_accessor(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    accessor = (await read_json(request)).get("accessor")
    if not isinstance(accessor, str) or not accessor:
        raise bad_request("missing accessor")
    ctx.details["target_accessor"] = accessor
    if not await ctx.backend.write(ctx.backend.tokens.revoke, accessor):
        raise HTTPError(400, "invalid accessor")
    return Response(status_code=204)


async def accessors(request: Request, ctx: Ctx) -> Response:
    ctx.require("list", ctx.path + "/" if ctx.allows("list", ctx.path + "/") else ctx.path)
    if not _privileged(ctx):
        raise PermissionDenied()
    rows = await ctx.backend.run(ctx.backend.tokens.list)
    return ctx.reply({"keys": [r.accessor for r in rows]})


async def roles_list(request: Request, ctx: Ctx) -> Response:
    ctx.require_list()
    names = await ctx.backend.run(ctx.backend.roles.names)
    if not names:
        raise HTTPError(404, "no token roles")
    return ctx.reply({"keys": names})


async def role(request: Request, ctx: Ctx) -> Response:
    name = request.path_params["name"]
    if request.method == "LIST":
        ctx.require_list()
        raise HTTPError(404, "no token roles under a role name")
    if request.method == "GET":
        ctx.require("read")
        found = await ctx.backend.run(ctx.backend.roles.get, name)
        if found is None:
            raise HTTPError(404, f"no token role named {name[:64]}")
        return ctx.reply(role_json(found))
    if request.method == "DELETE":
        ctx.require("delete")
        await ctx.backend.write(ctx.backend.roles.delete, name)
        return Response(status_code=204)
    ctx.require_any("update", "create")
    body = await read_json(request)
    try:
        await ctx.backend.write(ctx.backend.roles.put, name, body, duration)
    except TokenError as exc:
        raise bad_request(str(exc)) from None
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    post = ["POST", "PUT"]
    return [
        Route("/create", endpoint(create), methods=post),
        Route("/create-orphan", endpoint(create_orphan), methods=post),
        Route("/create/{name}", endpoint(create_role), methods=post),
        Route("/lookup", endpoint(lookup), methods=["GET", *post]),
        Route("/lookup-self", endpoint(lookup_self), methods=["GET", *post]),
        Route("/lookup-accessor", endpoint(lookup_accessor), methods=post),
        Route("/renew", endpoint(renew), methods=post),
        Route("/renew-self", endpoint(renew_self), methods=post),
        Route("/renew-accessor", endpoint(renew_accessor), methods=post),
        Route("/revoke", endpoint(revoke), methods=post),
        Route("/revoke-self", endpoint(revoke_self), methods=post),
        Route("/revoke-orphan", endpoint(revoke_orphan), methods=post),
        Route("/revoke-accessor", endpoint(revoke_accessor), methods=post),
        Route("/accessors", endpoint(accessors), methods=["LIST", "GET"]),
        Route("/roles", endpoint(roles_list), methods=["LIST", "GET"]),
        Route("/roles/{name}", endpoint(role), methods=["GET", "LIST", "DELETE", *post]),
    ]
