"""What every endpoint shares: the token, the policy check, the audit event, the answer.

:func:`endpoint` wraps a handler ``(request, ctx) -> Response``: it resolves
the token (``X-Vault-Token`` or ``Authorization: Bearer``), builds the
token's ACL, runs the handler under the request timeout, maps any exception
through :mod:`.errors`, and audits the request (accessor, operation, path,
outcome; never data, never the token).  A handler calls ``ctx.require(cap)``
before its first store access, so a denied request touches nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..durations import parse_duration
from ..servertables import TokenRow
from ._backend import Backend
from .errors import HTTPError, PermissionDenied, bad_request, error_response
from .policies import ACL

#: Set by the path middleware: the normalised path below /v1/.
VPATH = "nc.vpath"
READ_OPERATIONS = frozenset({"read", "list"})

Handler = Callable[[Request, "Ctx"], Awaitable[Response]]


@dataclass
class Ctx:
    backend: Backend
    token: TokenRow
    acl: ACL
    path: str
    request_id: str
    keyring: str | None
    operation: str = ""
    #: Extra facts for this request's audit event (never data, never a token).
    details: dict[str, Any] = field(default_factory=dict)
    _secret: str = field(default="", repr=False)

    def allows(self, capability: str, path: str | None = None) -> bool:
        return self.acl.allows(self.path if path is None else path, capability)

    def require(self, capability: str, path: str | None = None) -> None:
        """Raise 403 unless the token's policies grant ``capability`` on the (normalised) path."""
        self.operation = capability
        if not self.allows(capability, path):
            raise PermissionDenied()

    def require_list(self) -> None:
        """Vault authorises a LIST on the folder, i.e. the path with a trailing slash."""
        self.require("list", self.path + "/")

    def require_any(self, *capabilities: str) -> None:
        for capability in capabilities:
            if self.allows(capability):
                self.operation = capability
                return
        self.operation = capabilities[0]
        raise PermissionDenied()

    @property
    def token_value(self) -> str:
        """The request's own token, echoed only by lookup-self as Vault does."""
        return self._secret

    def reply(self, data: Any = None, *, auth: Any = None, status: int = 200, **extra: Any) -> JSONResponse:
        return vault_json(self.request_id, data, auth=auth, status=status, **extra)


def vault_json(request_id: str, data: Any = None, *, auth: Any = None, status: int = 200,
               **extra: Any) -> JSONResponse:
    """Vault's response envelope, so unmodified clients parse it."""
    body = {
        "request_id": request_id,
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": auth,
        **extra,
    }
    return JSONResponse(body, status_code=status)


def request_token(request: Request) -> str:
    token = request.headers.get("x-vault-token", "")
    if not token:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("failed to parse JSON input: request body is not valid JSON") from None
    if body is None:  # `bao write -f` sends a JSON null
        return {}
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def duration_field(body: dict[str, Any], name: str) -> Any:
    """A Vault duration (``"1h"``, ``"90s"`` or a number of seconds) or None."""
    value = body.get(name)
    if value in (None, "", 0, "0"):
        return None
    if isinstance(value, bool):
        raise bad_request(f"{name}: expected a duration")
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            seconds = float(value)
            if not 0 < seconds < 10 * 365 * 86400:
                raise ValueError
            return parse_duration(f"{seconds}s", name)
        return parse_duration(str(value), name)
    except (ValueError, OverflowError):
        raise bad_request(f"{name}: expected a duration such as 1h or 3600") from None
    except Exception as exc:  # ConfigError from parse_duration carries the field name
        raise bad_request(str(exc)) from None


def iso(dt: datetime | None) -> str:
    """Vault's RFC 3339 timestamps (empty string for none)."""
    return "" if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint(
    handler: Handler,
    *,
    keyring: str | None = None,
    authenticated: bool = True,
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        backend: Backend = request.app.state.backend
        timeout: float = request.app.state.request_timeout
        request_id = str(uuid.uuid4())
        path = request.scope.get(VPATH, "")
        ctx: Ctx | None = None
        accessor: str | None = None
        try:
            with anyio.fail_after(timeout):
                if not authenticated:
                    return await handler(request, None)  # type: ignore[arg-type]
                secret = request_token(request)
                row = await backend.lookup(secret) if secret else None
                if row is None:
                    raise PermissionDenied()
                accessor = row.accessor
                ctx = Ctx(backend, row, await backend.acl(row.policies), path, request_id, keyring,
                          _secret=secret)
                response = await handler(request, ctx)
        except TimeoutError:
            response = JSONResponse({"errors": ["request timed out"]}, status_code=503)
        except Exception as exc:
            response = error_response(exc)
        operation = ctx.operation if ctx is not None and ctx.operation else request.method.lower()
        extra = ctx.details if ctx is not None else {}
        # an engine may name the keyring a request used (Transit: the key's)
        audit_keyring = ctx.keyring if ctx is not None and ctx.keyring is not None else keyring
        try:
            await audit_request(backend, request, response.status_code, accessor=accessor, operation=operation,
                                path=path, keyring=audit_keyring, **extra)
        except Exception as exc:  # an unaudited answer is not given (Vault does the same)
            return error_response(exc)
        return response

    return run


async def audit_request(backend: Backend, request: Request, status: int, *, accessor: str | None,
                        operation: str, path: str, keyring: str | None, **extra: Any) -> None:
    """A request's audit event: ``server.denied`` for a 403, ``server.request`` for any other.

    Successful reads are left out when ``[audit] requests`` is off; writes,
    errors and denials never are.  The event names the token by accessor
    and holds no data from the request.
    """
    if status == 403:
        await backend.audit("server.denied", keyring=keyring, outcome="denied", accessor=accessor,
                            operation=operation, path=path, method=request.method, status=status)
    elif status >= 400 or backend.audit_reads or operation not in READ_OPERATIONS:
        await backend.audit("server.request", keyring=keyring, outcome="ok" if status < 400 else "error",
                            accessor=accessor, operation=operation, path=path, method=request.method,
                            status=status, **extra)


#: A path segment that looks like a token: ours (``ncs.``) or Vault's (``hvs.``, ``hvb.``, ``s.``...).
_TOKENISH = re.compile(r"(?:ncs|hv[sbr]|[sbr])\.[A-Za-z0-9_.\-]{16,}")


def redact_tokens(path: str) -> str:
    """``path`` with every token-looking segment replaced: Vault's legacy endpoints
    (``auth/token/lookup/<token>``) carry tokens in the path, and we route none of them."""
    return "/".join("<redacted>" if _TOKENISH.fullmatch(part) else part for part in path.split("/"))


async def audit_unrouted(request: Request, response: Response) -> Response:
    """Audit an answer given before any endpoint ran: the router's 404 (no such path) and 405
    (no such method), the path middleware's 400 (a path refused) and 413 (body too large).

    A valid token is recorded by its accessor, any other as none; the body
    is never read.  Outside /v1/ the path is recorded as sent.
    """
    try:
        backend: Backend = request.app.state.backend
        with anyio.fail_after(request.app.state.request_timeout):
            secret = request_token(request)
            row = await backend.lookup(secret) if secret else None
            await audit_request(backend, request, response.status_code,
                                accessor=row.accessor if row is not None else None,
                                operation=request.method.lower(),
                                path=redact_tokens(request.scope.get(VPATH, request.url.path)), keyring=None)
    except TimeoutError:
        return JSONResponse({"errors": ["request timed out"]}, status_code=503)
    except Exception as exc:  # an unaudited answer is not given
        return error_response(exc)
    return response


__all__ = ["Ctx", "HTTPError", "audit_request", "audit_unrouted", "endpoint", "read_json", "vault_json"]
