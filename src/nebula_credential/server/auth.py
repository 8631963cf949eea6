"""``/v1/auth/token/*``: Vault's token endpoints.

As with Vault's built-in ``default`` policy, any valid token may look up,
renew and revoke itself; ``create``, ``lookup-accessor`` and
``revoke-accessor`` need a policy granting the path (``create`` or
``update``), and a child token never gets a policy its parent lacks.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..servertables import TokenRow
from ._request import Ctx, duration_field, endpoint, read_json
from .errors import HTTPError, bad_request
from .tokens import token_json


def _auth(row: TokenRow, token: str, now: float) -> dict[str, Any]:
    lease = 0 if row.expires_at is None else max(0, int(row.expires_at - now))
    return {
        "client_token": token,
        "accessor": row.accessor,
        "policies": list(row.policies),
        "token_policies": list(row.policies),
        "metadata": row.meta or None,
        "lease_duration": lease,
        "renewable": row.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": row.parent is None,
        "num_uses": 0,
    }


def _now(ctx: Ctx) -> float:
    return ctx.backend.vault.clock().timestamp()


async def create(request: Request, ctx: Ctx) -> Response:
    ctx.require_any("update", "create")
    body = await read_json(request)
    policies = body.get("policies")
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    if policies is None:
        policies = list(ctx.token.policies)
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise bad_request("policies must be a list of policy names")
    meta = body.get("meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad_request("meta must be an object of strings")
    renewable = body.get("renewable", True)
    display = body.get("display_name") or "token"
    if not isinstance(renewable, bool) or not isinstance(display, str):
        raise bad_request("renewable must be a boolean and display_name a string")
    ttl = duration_field(body, "ttl")
    max_ttl = duration_field(body, "explicit_max_ttl")
    token, row = await ctx.backend.write(
        ctx.backend.tokens.create, policies, ttl=ttl, explicit_max_ttl=max_ttl, parent=ctx.token,
        display_name=f"token-{display}" if display != "token" else display, meta=meta, renewable=renewable,
    )
    ctx.details["created_accessor"] = row.accessor
    return ctx.reply(None, auth=_auth(row, token, _now(ctx)))


async def lookup_self(request: Request, ctx: Ctx) -> Response:
    ctx.operation = "read"
    return ctx.reply(token_json(ctx.token, _now(ctx), ctx.token_value))


async def lookup_accessor(request: Request, ctx: Ctx) -> Response:
    ctx.require("update")
    accessor = (await read_json(request)).get("accessor")
    if not isinstance(accessor, str) or not accessor:
        raise bad_request("missing accessor")
    row = await ctx.backend.run(ctx.backend.tokens.by_accessor, accessor)
    if row is None:
        raise bad_request("invalid accessor")
    return ctx.reply(token_json(row, _now(ctx)))


async def renew_self(request: Request, ctx: Ctx) -> Response:
    ctx.operation = "update"
    increment = duration_field(await read_json(request), "increment")
    row = await ctx.backend.write(ctx.backend.tokens.renew, ctx.token, increment)
    return ctx.reply(None, auth=_auth(row, ctx.token_value, _now(ctx)))


async def revoke_self(request: Request, ctx: Ctx) -> Response:
    ctx.operation = "update"
    await ctx.backend.write(ctx.backend.tokens.revoke, ctx.token.accessor)
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


def routes() -> list[BaseRoute]:
    return [
        Route("/create", endpoint(create), methods=["POST", "PUT"]),
        Route("/lookup-self", endpoint(lookup_self), methods=["GET", "POST"]),
        Route("/lookup-accessor", endpoint(lookup_accessor), methods=["POST", "PUT"]),
        Route("/renew-self", endpoint(renew_self), methods=["POST", "PUT"]),
        Route("/revoke-self", endpoint(revoke_self), methods=["POST", "PUT"]),
        Route("/revoke-accessor", endpoint(revoke_accessor), methods=["POST", "PUT"]),
    ]
