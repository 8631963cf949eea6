"""What every endpoint shares: the token, the policy check, the audit event, the answer.

:func:`endpoint` wraps a handler ``(request, ctx) -> Response``: it resolves
the token (``X-Vault-Token`` or ``Authorization: Bearer``), builds the
token's ACL, runs the handler under the request timeout, maps any exception
through :mod:`.errors`, and audits the request (accessor, operation, path,
outcome; never data, never the token).  A handler calls ``ctx.require(cap)``
before its first store access, so a denied request touches nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .. import logredact
from ..durations import parse_duration
from ..servertables import TokenRow
from . import _json
from ._backend import Backend
from .errors import HTTPError, PermissionDenied, bad_request, error_response
from .policies import ACL
from .ratelimit import Guards, hold_back

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
    return _json.JSONAnswer(body, status_code=status)


def new_request_id() -> str:
    """A random (version 4) UUID in its text form, as ``str(uuid.uuid4())`` gives, at a quarter of its
    cost (every request has one: the UUID object's checks and formatting were ~3 µs of a request)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_token(request: Request) -> str:
    return _token_in(request.scope)


def _token_in(scope: Any) -> str:
    """The token a request presents: ``X-Vault-Token``, else ``Authorization: Bearer`` (the first of
    each, as Starlette's ``headers.get`` gives), read from the scope's raw headers in one pass."""
    vault_token: bytes | None = None
    bearer: bytes | None = None
    for name, value in scope["headers"]:
        if vault_token is None and name == b"x-vault-token":
            vault_token = value
        elif bearer is None and name == b"authorization":
            bearer = value
    if vault_token:
        return vault_token.decode("latin-1")
    if bearer is not None and bearer[:7].lower() == b"bearer ":
        return bearer[7:].decode("latin-1").strip()
    return ""


async def read_body(request: Request) -> bytes:
    """The request body, as ``await request.body()`` gives it (and kept on the request as Starlette keeps it).

    Read from the ASGI ``receive`` channel directly, and done once the
    declared ``Content-Length`` has arrived: the server sends a whole small
    body as one message with ``more_body`` set and only says it is over in a
    second, empty one, and each ``receive`` is a task on the server's
    runtime handed back to the loop (~15 us of a Transit call's CPU each).
    A body without a length (chunked) is read to its last message.  The
    receive channel is the body-limit wrapper's, so an over-limit body is
    still its 413; a client gone mid-body is Starlette's ClientDisconnect.
    """
    known: bytes | None = getattr(request, "_body", None)
    if known is not None:
        return known
    expected = -1
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            expected = int(value) if value.isdigit() and len(value) < 19 else -1
        elif name == b"transfer-encoding":  # the framing is the chunks, whatever a length says
            expected = -2
            break
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False) or size == expected:
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # what Request.body() returns from now on
    request._stream_consumed = True
    return body


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, parsed within :mod:`._json`'s bounds (depth, integers, no NaN)."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    body = _json.loads(raw)
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
    if dt is None:
        return ""
    # remembered only for UTC times: aware datetimes of one instant compare (and hash) equal whatever
    # their offset, so another offset's string could otherwise come back
    return _iso(dt) if dt.tzinfo is UTC else dt.strftime(_ISO)


_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"


@functools.lru_cache(maxsize=4096)
def _iso(dt: datetime) -> str:
    """A KV read answers the same few timestamps again and again: strftime cost ~2 us each, a hit 0.1."""
    return dt.strftime(_ISO)


def guards(request: Request) -> Guards:
    """This worker's rate limit and free-space floor, built on first use from the served store's config."""
    return _guards_of(request.scope["app"].state)


def _guards_of(state: Any) -> Guards:
    found: Guards | None = getattr(state, "guards", None)
    if found is None:
        backend: Backend = state.backend
        vault = getattr(backend.vault, "sync", backend.vault)
        directory = vault.data_directory
        found = Guards.from_config(vault.config.server, None if directory is None else str(directory))
        state.guards = found
    return found


def source_of(request: Request) -> str:
    return _source_in(request.scope)


def _source_in(scope: Any) -> str:
    """The client's address, as Starlette's ``request.client.host`` gives it, without building the Address."""
    client = scope.get("client")
    return str(client[0]) if client else ""


#: Methods that only read: still answered under the free-space floor when authenticated.
READ_METHODS = frozenset({"GET", "HEAD", "LIST", "OPTIONS"})


def too_many(retry_after: int) -> JSONResponse:
    """The answer past a source's budget of unauthenticated or denied requests (not audited)."""
    return JSONResponse({"errors": ["too many unauthenticated or denied requests from this address"]},
                        status_code=429, headers={"Retry-After": str(retry_after)})


async def too_many_later(request: Request, retry_after: int) -> JSONResponse:
    """:func:`too_many`, held back ``app.state.refusal_delay`` seconds under ``serve`` (the tarpit of
    :func:`~.ratelimit.refuse_spent_source`, for refusals that needed the token looked up first)."""
    await hold_back(request.app.state)
    return too_many(retry_after)


def low_space() -> JSONResponse:
    return JSONResponse({"errors": ["the server is low on disk space: writes are refused, reads still answer"]},
                        status_code=503)


def endpoint(
    handler: Handler,
    *,
    keyring: str | None = None,
    authenticated: bool = True,
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        scope = request.scope
        state = scope["app"].state
        backend: Backend = state.backend
        timeout: float = state.request_timeout
        guard = _guards_of(state)
        source = _source_in(scope)
        request_id = new_request_id()
        secret = _token_in(scope) if authenticated else ""
        path = scope.get(VPATH, "")
        audited_path = redact_path(path, secret)  # what the audit trail keeps: no token, whatever its form
        ctx: Ctx | None = None
        accessor: str | None = None
        who: dict[str, str] = {}  # the token's display name, beside its accessor in the request's event
        if authenticated and not secret and guard.buckets.empty(source):
            return too_many(guard.buckets.retry_after(source))  # spent: no lookup, no audit event
        try:
            async with asyncio.timeout(timeout):  # anyio's cancel scope cost ~8 % of a read's CPU
                if not authenticated:
                    return await handler(request, None)  # type: ignore[arg-type]
                row = await backend.lookup(secret, source) if secret else None
                if row is None:
                    if guard.floor.low():
                        return low_space()  # nothing written for an unauthenticated client under the floor
                    raise PermissionDenied()
                accessor = row.accessor
                who = {"display_name": row.display_name} if row.display_name else {}
                if request.method not in READ_METHODS and guard.floor.low():
                    return await _audited(backend, request, low_space(), accessor=accessor,
                                          path=audited_path, keyring=keyring, **who)
                ctx = Ctx(backend, row, await backend.acl(row.policies), path, request_id, keyring,
                          _secret=secret)
                token = logredact.presented.set((secret,))
                try:
                    response = await handler(request, ctx)
                    wrapper = getattr(state, "wrap_response", None)
                    if wrapper is not None and request.headers.get("x-vault-wrap-ttl"):
                        response = await wrapper(request, response, path)  # Vault's response wrapping
                finally:
                    logredact.presented.reset(token)
        except TimeoutError:
            response = JSONResponse({"errors": ["request timed out"]}, status_code=503)
        except Exception as exc:
            response = error_response(exc)
        refused = accessor is None or response.status_code == 403
        if refused and not guard.buckets.take(source):
            return await too_many_later(request, guard.buckets.retry_after(source))
        if refused or response.status_code >= 400:
            # an error's path is the client's, not a stored secret's: cut it whoever asked (an allowed
            # token reading missing secrets at 60 KB paths filled the trail with no budget before)
            audited_path = bounded_path(audited_path, guard.audit_path_chars)
        operation = ctx.operation if ctx is not None and ctx.operation else request.method.lower()
        extra = {**who, **(ctx.details if ctx is not None else {})}
        # an engine may name the keyring a request used (Transit: the key's)
        audit_keyring = ctx.keyring if ctx is not None and ctx.keyring is not None else keyring
        return await _audited(backend, request, response, accessor=accessor, operation=operation,
                              path=audited_path, keyring=audit_keyring, **extra)

    return run


async def _audited(backend: Backend, request: Request, response: Response, *, accessor: str | None,
                   path: str, keyring: str | None, operation: str = "", **extra: Any) -> Response:
    """``response`` once its audit event is written; an unaudited answer is not given (Vault does the same)."""
    try:
        await audit_request(backend, request, response.status_code, accessor=accessor,
                            operation=operation or request.method.lower(), path=path, keyring=keyring, **extra)
    except Exception as exc:
        return error_response(exc)
    return response


async def audit_request(backend: Backend, request: Request, status: int, *, accessor: str | None,
                        operation: str, path: str, keyring: str | None, **extra: Any) -> None:
    """A request's audit event: ``server.denied`` for a 403, ``server.request`` for any other.

    Successful reads are left out when ``[audit] requests`` is off; writes,
    errors and denials never are.  The event names the token by accessor
    (and its display name, which the console shows as the actor) and holds
    no data from the request.
    """
    if status == 403:
        named = {"display_name": extra["display_name"]} if "display_name" in extra else {}
        await backend.audit("server.denied", keyring=keyring, outcome="denied", accessor=accessor,
                            operation=operation, path=path, method=request.method, status=status, **named)
    elif status >= 400 or backend.audit_reads or operation not in READ_OPERATIONS:
        await backend.audit("server.request", keyring=keyring, outcome="ok" if status < 400 else "error",
                            accessor=accessor, operation=operation, path=path, method=request.method,
                            status=status, **extra)


#: A token anywhere in a string: ours (``ncs.``) or Vault's (``hvs.``, ``hvb.``, ``s.``...), matched as a
#: value, not a segment, so one followed by ``;``, a space, NUL, NBSP or ZWSP, or inside a segment, is found.
#: Vault's legacy ``s.`` tokens are exactly 24 letters and digits after the prefix (fewer false matches).
_TOKENISH = re.compile(r"(?:ncs|hv[sbr])\.[A-Za-z0-9_.\-]{16,}|(?<![A-Za-z0-9])[sbr]\.[A-Za-z0-9]{24}(?![A-Za-z0-9])")
REDACTED = "<redacted>"


def redact_path(path: str, *secrets: str) -> str:
    """``path`` with every token-looking value and every given secret (the presented token) replaced.

    Vault's legacy endpoints (``auth/token/lookup/<token>``) carry tokens in
    the path, and a client may put its own token anywhere; an audit event or
    a log line keeps neither.
    """
    for secret in secrets:
        path = logredact.replace_value(path, secret)
    return _TOKENISH.sub(REDACTED, path)


def has_token(path: str) -> bool:
    """Whether ``path`` holds a token-looking value (what :func:`redact_path` would replace)."""
    return _TOKENISH.search(path) is not None


def redact_tokens(path: str) -> str:
    """Kept for callers of the old name: :func:`redact_path` without a presented token."""
    return redact_path(path)


def bounded_path(path: str, limit: int) -> str:
    """What a refused, unrouted or failed request's path costs the audit trail: at most
    ``limit`` characters, plus the length and a SHA-256 digest of the whole when cut."""
    if len(path) <= limit:
        return path
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{path[:limit]}...[{len(path)} chars, sha256:{digest}]"


async def audit_unrouted(request: Request, response: Response) -> Response:
    """Audit an answer given before any endpoint ran: the router's 404 (no such path) and 405
    (no such method), the path middleware's 400 (a path refused) and 413 (body too large).

    A valid token is recorded by its accessor, any other as none; the body
    is never read.  Outside /v1/ the path is recorded as sent, tokens
    redacted and cut to ``[server] audit_path_chars``.  Every such answer
    is an error, so the request spends from its source's bucket whatever
    its token (429 past it, not audited: a valid token allowed nothing
    flooded 404s unbounded before) and, without a valid token, under the
    free-space floor gets 503 unaudited.
    """
    try:
        backend: Backend = request.app.state.backend
        guard = guards(request)
        source = source_of(request)
        secret = request_token(request)
        if not secret and guard.buckets.empty(source):
            return too_many(guard.buckets.retry_after(source))
        async with asyncio.timeout(request.app.state.request_timeout):
            row = await backend.peek(secret) if secret else None  # no endpoint ran: no use is spent
            if row is None and guard.floor.low():
                return low_space()
            if not guard.buckets.take(source):
                return await too_many_later(request, guard.buckets.retry_after(source))
            path = redact_path(request.scope.get(VPATH, request.url.path), secret)
            await audit_request(backend, request, response.status_code,
                                accessor=row.accessor if row is not None else None,
                                operation=request.method.lower(),
                                path=bounded_path(path, guard.audit_path_chars), keyring=None)
    except TimeoutError:
        return JSONResponse({"errors": ["request timed out"]}, status_code=503)
    except Exception as exc:  # an unaudited answer is not given
        return error_response(exc)
    return response


__all__ = ["Ctx", "HTTPError", "audit_request", "audit_unrouted", "endpoint", "read_json", "vault_json"]
