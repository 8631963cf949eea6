"""Response wrapping (``X-Vault-Wrap-TTL``, ``sys/wrapping/*``) and the per-token ``cubbyhole/``.

A wrapped response is kept, encrypted (:meth:`.authstore.AuthStore.put_sealed`),
under the wrapping token's accessor with one use left; the wrapping token
carries only the ``response-wrapping`` policy, which grants nothing here.
Unwrapping spends that one use with a conditional UPDATE and revokes the
token, so of N concurrent unwraps exactly one gets the answer and every
other gets 400 "wrapping token is not valid or does not exist" -- audited,
since a second unwrap is how a stolen secret id shows itself.

``cubbyhole/`` is private to each token: its items live under the token's
accessor, and no policy opens another token's cubbyhole.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..durations import parse_duration
from ._backend import Backend
from ._request import Ctx, endpoint, read_json, request_token, vault_json
from .authcommon import auth_store
from .authstore import AuthStore
from .errors import HTTPError, bad_request
from .policies import WRAP_POLICY

WRAP_MOUNT = "sys/wrapping"
CUBBY_MOUNT = "cubbyhole"
NOT_VALID = "wrapping token is not valid or does not exist"
MAX_WRAP_TTL = timedelta(days=30)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_wrap_ttl(text: str) -> timedelta:
    try:
        ttl = timedelta(seconds=int(text)) if text.strip().isdigit() else parse_duration(text.strip(), "wrap ttl")
    except Exception:
        raise bad_request("invalid wrap TTL: expected a duration such as 5m or 300") from None
    if ttl <= timedelta(0) or ttl > MAX_WRAP_TTL:
        raise bad_request("wrap TTL must be positive and at most 30 days")
    return ttl


async def wrap(backend: Backend, store: AuthStore, payload: dict[str, Any], ttl: timedelta,
               path: str) -> dict[str, Any]:
    """Keep ``payload`` behind a new single-use wrapping token; Vault's ``wrap_info``."""
    token, row = await backend.write(backend.tokens.create, [WRAP_POLICY], ttl=ttl, explicit_max_ttl=ttl,
                                     display_name="wrapping", meta={"creation_path": path}, renewable=False,
                                     no_default_policy=True)
    body = {"response": payload, "creation_path": path, "creation_time": row.created_at, "ttl": int(row.ttl)}
    await backend.write(store.put_sealed, WRAP_MOUNT, "wrap", row.accessor, body,
                        expires_at=row.expires_at, uses_left=1)
    info: dict[str, Any] = {
        "token": token,
        "accessor": row.accessor,
        "ttl": int(row.ttl),
        "creation_time": _iso(row.created_at),
        "creation_path": path,
    }
    wrapped_auth = payload.get("auth") if isinstance(payload, dict) else None
    wrapped_data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(wrapped_auth, dict) and wrapped_auth.get("accessor"):
        info["wrapped_accessor"] = wrapped_auth["accessor"]
    elif isinstance(wrapped_data, dict) and wrapped_data.get("secret_id_accessor"):
        info["wrapped_accessor"] = wrapped_data["secret_id_accessor"]  # as Vault does for a wrapped secret id
    return info


async def wrap_response(request: Request, response: Response, path: str) -> Response:
    """``response`` replaced by its ``wrap_info`` when the request asked for wrapping (a 200 JSON answer)."""
    header = request.headers.get("x-vault-wrap-ttl", "")
    if not header or response.status_code != 200 or not isinstance(response, JSONResponse):
        return response
    backend: Backend = request.app.state.backend
    payload = json.loads(bytes(response.body))
    if isinstance(payload, dict) and payload.get("wrap_info") is not None:
        return response  # already a wrapping answer (sys/wrapping/wrap, rewrap)
    info = await wrap(backend, auth_store(request), payload, parse_wrap_ttl(header), path)
    return vault_json(str(uuid.uuid4()), None, wrap_info=info)


async def _token_of(request: Request) -> tuple[str, dict[str, Any]]:
    body = await read_json(request)
    token = body.get("token") or request_token(request)
    if not isinstance(token, str) or not token:
        raise bad_request("no wrapping token given")
    return token, body


async def _wrapping_row(backend: Backend, token: str) -> str:
    """The accessor of a live wrapping token, else 400 (never a hint which part failed)."""
    row = await backend.peek(token)  # the wrapped answer is spent once (auth_spend), not the token
    if row is None or row.policies != (WRAP_POLICY,):
        raise HTTPError(400, NOT_VALID)
    return row.accessor


async def _take(request: Request, backend: Backend, details: dict[str, Any]) -> dict[str, Any]:
    """Spend the wrapped response (exactly once) and revoke its token."""
    token, _ = await _token_of(request)
    accessor = await _wrapping_row(backend, token)
    details["wrapping_accessor"] = accessor
    store = auth_store(request)
    sealed = await backend.write(store.spend, WRAP_MOUNT, "wrap", accessor)
    if sealed is None:
        raise HTTPError(400, NOT_VALID)
    await backend.write(backend.tokens.revoke, accessor)
    return dict(await backend.run(store.open_sealed, WRAP_MOUNT, "wrap", accessor, sealed))


async def unwrap(request: Request, backend: Backend, details: dict[str, Any]) -> Response:
    held = await _take(request, backend, details)
    response = held["response"]
    if isinstance(response, dict):
        response = {**response, "request_id": str(uuid.uuid4())}
    return JSONResponse(response)


async def lookup(request: Request, backend: Backend, details: dict[str, Any]) -> Response:
    token, _ = await _token_of(request)
    accessor = await _wrapping_row(backend, token)
    store = auth_store(request)
    sealed = await backend.run(store.get, WRAP_MOUNT, "wrap", accessor)
    if sealed is None:
        raise HTTPError(400, NOT_VALID)
    held = await backend.run(store.open_sealed, WRAP_MOUNT, "wrap", accessor, sealed)
    return vault_json(str(uuid.uuid4()), {"creation_path": held["creation_path"],
                                          "creation_time": _iso(held["creation_time"]),
                                          "creation_ttl": held["ttl"]})


async def rewrap(request: Request, backend: Backend, details: dict[str, Any]) -> Response:
    held = await _take(request, backend, details)
    info = await wrap(backend, auth_store(request), held["response"], timedelta(seconds=held["ttl"]),
                      held["creation_path"])
    return vault_json(str(uuid.uuid4()), None, wrap_info=info)


async def wrap_data(request: Request, ctx: Ctx) -> Response:
    """``sys/wrapping/wrap``: any token wraps the body it sends (the default policy's grant in Vault)."""
    ctx.operation = "update"
    body = await read_json(request)
    if not body:
        raise bad_request("no data provided")
    header = request.headers.get("x-vault-wrap-ttl", "") or "5m"
    info = await wrap(ctx.backend, auth_store(request), {"data": body, "auth": None, "lease_duration": 0,
                                                         "renewable": False, "lease_id": "", "warnings": None,
                                                         "wrap_info": None},
                      parse_wrap_ttl(header), "sys/wrapping/wrap")
    return ctx.reply(None, wrap_info=info)


def wrapping_routes() -> list[BaseRoute]:
    from .authcommon import login_endpoint

    def audited(handler: Any, name: str) -> Any:
        return login_endpoint(handler, method="wrapping", mount=f"sys/wrapping/{name}")

    return [
        Route("/unwrap", audited(unwrap, "unwrap"), methods=["POST", "PUT"]),
        Route("/lookup", audited(lookup, "lookup"), methods=["POST", "PUT", "GET"]),
        Route("/rewrap", audited(rewrap, "rewrap"), methods=["POST", "PUT"]),
        Route("/wrap", endpoint(wrap_data), methods=["POST", "PUT"]),
    ]


# ---- cubbyhole ---------------------------------------------------------------------------
class CubbyholeEngine:
    """``cubbyhole/``: a private key/value space per token, gone when the token is."""

    def __init__(self, mount: str = "cubbyhole") -> None:
        self.mount = mount.strip("/")

    async def item(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        key = str(request.path_params.get("path", "")).strip("/")
        owner = ctx.token.accessor
        if request.method == "LIST":
            ctx.operation = "list"
            prefix = key + "/" if key else ""
            names = await ctx.backend.run(store.names, CUBBY_MOUNT, owner)
            keys = sorted({prefix_child(n[len(prefix):]) for n in names if n.startswith(prefix)})
            if not keys:
                raise HTTPError(404)
            return ctx.reply({"keys": keys})
        if not key:
            raise bad_request("missing path")
        if request.method == "GET":
            ctx.operation = "read"
            sealed = await ctx.backend.run(store.get, CUBBY_MOUNT, owner, key)
            if sealed is None:
                raise HTTPError(404)
            return ctx.reply(await ctx.backend.run(store.open_sealed, CUBBY_MOUNT, owner, key, sealed))
        if request.method == "DELETE":
            ctx.operation = "delete"
            await ctx.backend.write(store.delete, CUBBY_MOUNT, owner, key)
            return Response(status_code=204)
        ctx.operation = "update"
        body = await read_json(request)
        if not body:
            raise bad_request("missing data fields")
        await ctx.backend.write(store.put_sealed, CUBBY_MOUNT, owner, key, body,
                                    expires_at=ctx.token.max_expires_at)
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        methods = ["GET", "POST", "PUT", "DELETE", "LIST"]
        return [Route("/{path:path}", endpoint(self.item), methods=methods)]

    def root_route(self) -> BaseRoute:
        """LIST at the mount itself (``/v1/cubbyhole``: a Mount would redirect it to a trailing slash)."""
        return Route(f"/v1/{self.mount}", endpoint(self.item), methods=["LIST"])


def prefix_child(rest: str) -> str:
    head, sep, _ = rest.partition("/")
    return head + sep
