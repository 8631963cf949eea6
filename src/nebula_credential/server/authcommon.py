"""What every auth method shares: a role's token settings, issuing the token, the audited login.

A login is unauthenticated (the client has no token yet), so it does not go
through :func:`._request.endpoint`; :func:`login_endpoint` gives it the same
guarantees instead: a timeout, Vault's error envelope, a failure budget per
source address and per user (429 past it), and one audit event per attempt,
success or failure, naming the method, mount, role or user and the source
address -- never the secret id, the password or the JWT.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._net import address_in, cidr_text
from ._backend import Backend
from ._request import Ctx, duration_field, guards, source_of, too_many, vault_json
from .authstore import AuthStore
from .errors import HTTPError, bad_request, error_response
from .ratelimit import SourceBuckets

logger = logging.getLogger("nebula_credential.server")

#: A login handler: the request, the backend, the audit details it fills in.
LoginHandler = Callable[[Request, Backend, dict[str, Any]], Awaitable[Response]]

#: Stores a create or update of an item, given what was there before (None: a create).
Saver = Callable[[dict[str, Any] | None], Awaitable[None]]
#: Removes an existing item and whatever hangs off it (in a write transaction).
Remover = Callable[[AuthStore, str, dict[str, Any]], None]

#: Token fields a role or user carries (Vault's "tokenutil" fields).
DURATION_FIELDS = ("token_ttl", "token_max_ttl", "token_explicit_max_ttl", "token_period")


def auth_store(request: Request) -> AuthStore:
    """This app's auth repository, built on first use over the served vault's tables."""
    state = request.app.state
    found: AuthStore | None = getattr(state, "auth_store", None)
    if found is None:
        backend: Backend = state.backend
        vault = backend.vault
        found = AuthStore(vault.auth_tables(), vault.provider, vault.clock, rowmac=backend.access.tokens.rowmac,
                          on_reject=backend.access.rejections.note)
        state.auth_store = found
    return found


def _strings(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise bad_request(f"{name}: expected a list of strings or a comma-separated string")


def strings(body: dict[str, Any], name: str) -> list[str]:
    return _strings(body.get(name), name)


def cidrs(body: dict[str, Any], name: str) -> list[str]:
    out = []
    for text in strings(body, name):
        try:
            out.append(cidr_text(text))
        except ValueError:
            raise bad_request(f"{name}: {text!r} is not a CIDR block") from None
    return out


def seconds(body: dict[str, Any], name: str) -> int:
    value = duration_field(body, name)
    return 0 if value is None else int(value.total_seconds())


def integer(body: dict[str, Any], name: str, default: int = 0) -> int:
    value = body.get(name, default)
    if isinstance(value, bool):
        raise bad_request(f"{name}: expected an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise bad_request(f"{name}: expected an integer") from None
    if number < 0:
        raise bad_request(f"{name}: must not be negative")
    return number


def boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise bad_request(f"{name}: expected a boolean")


def token_settings(body: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A role's or user's token fields from a write, over what it had (``policies`` is the legacy name)."""
    out = dict(old or {})
    if "token_policies" in body:
        out["token_policies"] = strings(body, "token_policies")
    elif "policies" in body:
        out["token_policies"] = strings(body, "policies")
    out.setdefault("token_policies", [])
    for name in DURATION_FIELDS:
        if name in body:
            out[name] = seconds(body, name)
        out.setdefault(name, 0)
    if "token_num_uses" in body:
        out["token_num_uses"] = integer(body, "token_num_uses")
    out.setdefault("token_num_uses", 0)
    if "token_bound_cidrs" in body:
        out["token_bound_cidrs"] = cidrs(body, "token_bound_cidrs")
    out.setdefault("token_bound_cidrs", [])
    if "token_no_default_policy" in body:
        out["token_no_default_policy"] = boolean(body, "token_no_default_policy", False)
    out.setdefault("token_no_default_policy", False)
    if "token_type" in body:
        kind = str(body["token_type"] or "default")
        if kind not in ("default", "service", "default-service"):
            raise bad_request("token_type: only service tokens are issued here")
        out["token_type"] = kind
    out.setdefault("token_type", "default")
    return out


def token_read(settings: dict[str, Any]) -> dict[str, Any]:
    """Vault's read shape of the token fields (``policies`` mirrors ``token_policies``)."""
    return {
        "token_policies": list(settings.get("token_policies", [])),
        "policies": list(settings.get("token_policies", [])),
        "token_ttl": settings.get("token_ttl", 0),
        "token_max_ttl": settings.get("token_max_ttl", 0),
        "token_explicit_max_ttl": settings.get("token_explicit_max_ttl", 0),
        "token_period": settings.get("token_period", 0),
        "token_num_uses": settings.get("token_num_uses", 0),
        "token_bound_cidrs": list(settings.get("token_bound_cidrs", [])),
        "token_no_default_policy": settings.get("token_no_default_policy", False),
        "token_type": settings.get("token_type", "default"),
        "token_strictly_bind_ip": False,
    }


async def item_endpoint(request: Request, ctx: Ctx, store: AuthStore, mount: str, kind: str, name: str, *,
                        shown: Callable[[dict[str, Any]], dict[str, Any]], save: Saver,
                        remove: Remover | None = None) -> Response:
    """One role's or user's ``GET``/``DELETE``/``POST``, as every auth method answers them.

    GET needs ``read`` and answers 404 for no item; DELETE needs ``delete`` and answers 204
    whether or not the item existed (``remove`` also clears what hangs off an existing one;
    without it the row goes, even one refused for its MAC); a write needs ``create`` or
    ``update`` -- which one depends on whether the item exists, as in Vault -- then ``save``
    gets the old item (None for a create) and the answer is 204.
    """
    if request.method == "GET":
        ctx.require("read")
        item = await ctx.backend.run(store.get, mount, kind, name)
        if item is None:
            raise HTTPError(404)
        return ctx.reply(shown(item))
    if request.method == "DELETE":
        ctx.require("delete")
        if remove is None:
            await ctx.backend.write(store.delete, mount, kind, name)
        else:
            item = await ctx.backend.run(store.get, mount, kind, name)
            if item is not None:
                await ctx.backend.write(remove, store, name, item)
        return Response(status_code=204)
    ctx.require_any("create", "update")
    old = await ctx.backend.run(store.get, mount, kind, name)
    ctx.require("update" if old is not None else "create")
    await save(old)
    return Response(status_code=204)


def source_allowed(source: str, blocks: list[str]) -> bool:
    return address_in(source, blocks)


async def issue(backend: Backend, settings: dict[str, Any], *, display_name: str,
                metadata: dict[str, str], extra_policies: list[str] | None = None,
                bound_cidrs: list[str] | None = None, path: str = "") -> dict[str, Any]:
    """A new token for a successful login, as Vault's ``auth`` block.

    The token is bound to the role's or user's ``token_bound_cidrs`` (or ``bound_cidrs``, when
    the login decides them, as an AppRole secret id's own): used from elsewhere it is refused.
    ``path`` is the login's (``auth/approle/login``), which a token lookup shows, as Vault's."""
    from datetime import timedelta

    policies = sorted({*settings.get("token_policies", []), *(extra_policies or [])})
    granted = [p for p in policies if p != "default"]
    if not granted:
        raise bad_request("no policies are granted by this role or user: a token needs at least one policy")
    period = int(settings.get("token_period") or 0)
    ttl = settings.get("token_ttl") or period
    max_ttl = settings.get("token_explicit_max_ttl") or settings.get("token_max_ttl") or 0
    token, row = await backend.write(  # the token manager adds `default` unless the role says not to
        backend.tokens.create, granted, ttl=timedelta(seconds=ttl) if ttl else None,
        explicit_max_ttl=timedelta(seconds=max_ttl) if max_ttl else None,
        display_name=display_name, meta=metadata, renewable=True,
        num_uses=int(settings.get("token_num_uses") or 0),
        period=timedelta(seconds=period) if period else None,
        no_default_policy=bool(settings.get("token_no_default_policy", False)),
        bound_cidrs=list(bound_cidrs if bound_cidrs is not None else settings.get("token_bound_cidrs", [])),
        **({"path": path} if path else {}),
    )
    shown = list(row.policies)
    return {
        "client_token": token,
        "accessor": row.accessor,
        "policies": shown,
        "token_policies": shown,
        "identity_policies": None,
        "metadata": metadata,
        "lease_duration": int(row.ttl),
        "renewable": row.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": True,
        "mfa_requirement": None,
        "num_uses": int(settings.get("token_num_uses", 0)),
    }


class LoginLimiter:
    """Failed logins per source address and per (mount, user): a token bucket each, 429 past either."""

    def __init__(self, *, user_rate: float = 0.2, user_burst: int = 10, source_rate: float = 1.0,
                 source_burst: int = 50) -> None:
        # one user: 10 failures, then one every 5 s; one address (many users behind one NAT): 50, then 1/s
        self.users = SourceBuckets(user_rate, user_burst, reason="login_user")
        self.sources = SourceBuckets(source_rate, source_burst, reason="login_source")

    def spent(self, source: str, user: str | None) -> int:
        """Seconds to wait when either budget is empty, else 0."""
        if self.sources.empty(source):
            return self.sources.retry_after(source)
        if user is not None and self.users.empty(user):
            return self.users.retry_after(user)
        return 0

    def failed(self, source: str, user: str | None) -> None:
        self.sources.spend(source)
        if user is not None:
            self.users.spend(user)


def count_login(request: Request, method: str, outcome: str) -> None:
    metric = getattr(request.app.state, "login_metric", None)
    if metric is not None:
        metric.labels(method, outcome).inc()


def login_endpoint(handler: LoginHandler, *, method: str, mount: str,
                   limiter: LoginLimiter | None = None,
                   user_of: Callable[[Request], str | None] | None = None) -> Callable[[Request], Awaitable[Response]]:
    """An unauthenticated login route: timed out, limited, audited and counted (see the module doc)."""

    async def run(request: Request) -> Response:
        backend: Backend = request.app.state.backend
        source = source_of(request)
        user = user_of(request) if user_of is not None else None
        user_key = None if user is None else f"{mount}\0{user}"
        details: dict[str, Any] = {"method": method, "mount": mount, "source": source}
        if user is not None:
            details["user"] = user[:128]
        if limiter is not None:
            wait = limiter.spent(source, user_key)
            if wait:
                count_login(request, method, "limited")
                await backend.audit("auth.login", keyring=None, outcome="limited", status=429, **details)
                return too_many(wait)
        try:
            with anyio.fail_after(request.app.state.request_timeout):
                response = await handler(request, backend, details)
                if request.headers.get("x-vault-wrap-ttl") and response.status_code == 200:
                    wrapper = getattr(request.app.state, "wrap_response", None)
                    if wrapper is not None and method != "wrapping":
                        response = await wrapper(request, response, mount + "/login")
        except TimeoutError:
            response = JSONResponse({"errors": ["request timed out"]}, status_code=503)
        except Exception as exc:
            response = error_response(exc)
        ok = response.status_code < 400
        if not ok and limiter is not None:
            limiter.failed(source, user_key)
        if not ok:
            guards(request).buckets.spend(source)
        count_login(request, method, "ok" if ok else "error")
        try:
            await backend.audit("auth.login", keyring=None, outcome="ok" if ok else "error",
                                status=response.status_code, **details)
            await backend.report_rejections()  # a role or user refused for its MAC, audited now
        except Exception as exc:  # an unaudited answer is not given
            return error_response(exc)
        return response

    return run


def login_reply(auth: dict[str, Any], details: dict[str, Any]) -> JSONResponse:
    details["accessor"] = auth["accessor"]
    return vault_json(str(uuid.uuid4()), None, auth=auth)


def invalid(message: str) -> HTTPError:
    """A refused login: 400 as Vault answers (its message names no secret)."""
    return HTTPError(400, message)
