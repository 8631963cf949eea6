"""The request path under ``/v1/``: one pure-ASGI pass from the socket to the endpoint.

Before, a KV read went through two middlewares (the source budget, the
path rules), Starlette's Router, a Mount, the mount dispatcher, a second
Router and Mount and the ``request_response`` wrapper, each a coroutine and
most with a scope copy or a send wrapper: about 40 % of its CPU
(docs/benchmarks.md, issue 27).  :class:`VaultRequestPath` does in one pass:

1. the source budget: a request without a token from a source whose budget
   of unauthenticated or denied requests is spent gets its 429 before any
   work (:func:`.ratelimit.refuse_spent_source`, the 0.25 s tarpit under
   ``serve``);
2. under ``/v1`` the path rules: the path normalised once
   (:func:`.policies.normalise`, 400 when refused) and written back into
   the scope, so routing and authorisation see the same path; the other
   workers' changes followed (:func:`.workers.follow_changes`); ``GET
   ?list=true`` mapped to Vault's ``LIST``;
3. for every path, the body limit: 413 for a declared length past
   ``max_request_size`` (the body drained first, up to a bound), and a body
   that grows past it while read fails with 413 inside the endpoint;
4. under ``/v1`` the route, from tables compiled once (:mod:`._routes`; a
   mount's below the mount table's longest prefix,
   :meth:`.mounts.MountTable.resolve`), and its endpoint called directly.
   Where a method and path were routed is remembered per worker (routing
   was ~15 % of a KV read's CPU) while the compiled tables and the mount
   table's version stay the same; a mount enabled, disabled, moved or
   tuned, here or in another worker, moves that version.  Bounded
   (:data:`KNOWN_LIMIT` routes of paths up to :data:`KNOWN_PATH_LIMIT`
   bytes); a path holding a token is never remembered.

Whatever the compiled tables do not answer (404, 405, a redirect, a route
that is not a plain endpoint) and every path outside ``/v1`` (console,
``/metrics``, ``/healthz``) goes on through Starlette's Router exactly as
before, with the same scope; an exception from an endpoint goes to the
app's exception handlers as Starlette's would.  404, 405, 400 and 413 are
audited by :func:`._request.audit_unrouted`, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ._httpmetrics import ROUTE_LABEL, route_label_of
from ._request import VPATH, audit_unrouted, has_token
from ._routes import Branch, Entry, Found, Opaque, Reached, compile_routes, walk
from .errors import HTTPError
from .mounts import RESOLVED, MountDispatcher, MountTable
from .policies import BadPathError, normalise
from .ratelimit import refuse_spent_source
from .workers import follow_changes

#: How much of a refused body is read and dropped before answering 413.
DRAIN_LIMIT = 16 * 1024 * 1024
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: Routes remembered per worker, and the longest path remembered (longer ones are routed each time).
KNOWN_LIMIT = 4096
KNOWN_PATH_LIMIT = 512


@dataclass(frozen=True, slots=True)
class _Known:
    """A request path routed once: what routing it again would give while nothing it depends on moved."""

    tables: tuple[Entry, ...] = field(repr=False)  # the compiled route tables it was found in
    version: int  # the mount table's version (when under a mount)
    vpath: str = field(repr=False)  # the path normalised (a client's path: never in a repr)
    path: str = field(repr=False)  # the scope's path for the endpoint (a mount's own path gets its "/")
    found: Found = field(repr=False)
    resolved: tuple[Any, Any, tuple[Entry, ...]] | None = field(repr=False)  # under a mount: (entry, router, routes)
    label: str  # the metrics route label


def _rememberable(entries: tuple[Entry, ...]) -> bool:
    """Whether a route found in ``entries`` depends on the path and method alone: a route that is neither
    a plain Route nor a Mount (a Host, a custom route) may match on more, so nothing found past it is kept."""
    for entry in entries:
        if type(entry) is Opaque and entry.regex is None:
            return False
        if type(entry) is Branch and not _rememberable(entry.routes):
            return False
    return True


class VaultRequestPath:
    """The app's innermost middleware: the steps above, then Starlette's Router for the rest."""

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self._compiled: tuple[Any, int, tuple[Entry, ...]] | None = None
        #: (method, path as sent) -> where it was routed, while the route tables and the mount table
        #: stay the same: a KV read's routing (normalise, two walks, the mount's longest prefix, the
        #: metrics label) was ~15 % of its CPU
        self._known: dict[tuple[str, bytes], _Known] = {}
        #: whether the compiled tables route on path and method alone (decided once per compile)
        self._rememberable = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if await refuse_spent_source(scope, send):
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw.split(b"?", 1)[0]
        v1 = raw.startswith(b"/v1/") or raw == b"/v1"
        known: _Known | None = None
        outer = scope
        if v1:
            method = scope["method"]
            if method == "GET" and scope.get("query_string"):
                query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                if query.get("list", "").lower() in ("true", "1"):
                    method = "LIST"
            known = self._known.get((method, raw)) if not scope.get("root_path") else None
            if known is not None:
                vpath = known.vpath
            else:
                try:
                    vpath = normalise(raw[4:])
                except BadPathError as exc:
                    await _refuse(scope, receive, send, 400, str(exc))
                    return
            state = getattr(scope.get("app"), "state", None)
            if state is not None:
                follow_changes(state)  # another worker of this serve revoked or changed something
            scope = dict(scope)  # the outer middlewares (metrics) keep the path as sent
            scope["path"] = "/v1/" + vpath
            scope["raw_path"] = scope["path"].encode("utf-8")
            scope[VPATH] = vpath
            scope["method"] = method
        length = expect = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                length = value
            elif name == b"expect":
                expect = value
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            if (expect or b"").lower() != b"100-continue":  # else the client sends nothing yet
                await _drain(receive)
            await _refuse(scope, receive, send, 413, f"request body larger than {self.max_body} bytes")
            return
        receive = self._limited(receive)
        if v1 and await self._answer(scope, receive, send, raw, known, outer):
            return
        await self.app(scope, receive, send)

    def _tables(self, app: Any) -> tuple[Any, int, tuple[Entry, ...]] | None:
        """The app's routes compiled (once, and again if a route was added to the app since)."""
        routes = getattr(app, "routes", None)
        if routes is None:
            return None
        compiled = self._compiled
        if compiled is None or compiled[0] is not routes or compiled[1] != len(routes):
            compiled = self._compiled = (routes, len(routes),
                                         compile_routes(routes, lambda a: isinstance(a, MountDispatcher)))
            self._known.clear()
            self._rememberable = _rememberable(compiled[2])
        return compiled

    async def _answer(self, scope: Scope, receive: Receive, send: Send, raw: bytes, known: _Known | None,
                      outer: Scope) -> bool:
        """Answer a /v1 request whose route the compiled tables find; False leaves it to Starlette."""
        app = scope.get("app")
        compiled = self._tables(app)
        if compiled is None:
            return False
        if known is not None and known.tables is compiled[2]:
            if known.resolved is not None:
                table: MountTable = app.state.mounts  # type: ignore[union-attr]
                await table.refresh(app.state.backend)  # type: ignore[union-attr]  # as resolve() does
                if table.version != known.version:
                    known = None
        else:
            known = None
        if known is None:
            known = await self._find(app, compiled[2], scope, outer)
            if known is None:
                return False
            if (len(raw) <= KNOWN_PATH_LIMIT and not scope.get("root_path") and not has_token(known.vpath)
                    and self._rememberable
                    and (known.resolved is None or _rememberable(known.resolved[2]))):
                # a path holding a token (auth/token/lookup/<token>) is routed each time: no token is kept
                if len(self._known) >= KNOWN_LIMIT:
                    self._known.clear()  # a client making up paths costs what it did before, no more
                self._known[(scope["method"], raw)] = known
        found = known.found
        if known.resolved is not None:
            scope[RESOLVED] = known.resolved  # Starlette's dispatcher, if it routes after all, uses the same mount
            scope["path"] = known.path
        leaf = found.leaf
        scope["router"] = app.router  # type: ignore[union-attr]
        scope["route"] = leaf.route
        scope["endpoint"] = leaf.endpoint
        scope["path_params"] = dict(found.path_params)
        if found.app_root_path is not None:
            scope["root_path"] = found.root_path
            scope["app_root_path"] = found.app_root_path
        outer[ROUTE_LABEL] = known.label
        request = Request(scope, receive, send)
        try:
            response = await leaf.endpoint(request)
        except Exception as exc:
            response = await _handled(app, request, exc)
        await response(scope, receive, send)
        return True

    async def _find(self, app: Any, entries: tuple[Entry, ...], scope: Scope, outer: Scope) -> _Known | None:
        """Where the compiled tables send this request (None: Starlette routes it)."""
        found = walk(entries, scope, scope.get("path_params") or {}, scope.get("root_path", ""),
                     scope.get("app_root_path"))
        resolved = None
        version = -1
        path: str = scope["path"]
        if type(found) is Reached:  # under the mount dispatcher: the mount table's longest prefix
            table: MountTable = app.state.mounts
            vpath: str = scope[VPATH]
            resolved = await table.resolve(app.state.backend, vpath)
            version = table.version
            scope[RESOLVED] = resolved  # Starlette's dispatcher, if it routes after all, uses the same mount
            entry, _, mount_entries = resolved
            if entry is None or not mount_entries:
                return None
            path = path + "/" if vpath == entry.route else path  # LIST kv/: the "/" route
            found = walk(mount_entries, {"path": path, "method": scope["method"], "type": "http"},
                         found.path_params, found.root_path, found.app_root_path)
        if type(found) is not Found:
            return None
        return _Known(entries, version, scope[VPATH], path, found, resolved, route_label_of(app, outer))

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                if message.get("more_body"):
                    await _drain(receive)
                raise HTTPError(413, f"request body larger than {self.max_body} bytes")
            return message

        return wrapped


async def _handled(app: Any, request: Request, exc: Exception) -> Response:
    """An endpoint's exception answered as Starlette's exception middleware would (the app's handlers
    by status, then by class; its own default for an HTTPException); anything else is raised on."""
    handlers: dict[Any, Any] = getattr(app, "exception_handlers", {})
    handler = None
    if isinstance(exc, HTTPException) and exc.status_code != 500:
        handler = handlers.get(exc.status_code)
    if handler is None:
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers and c is not Exception), None)
    if handler is not None:
        response: Response = await handler(request, exc)
        exc.__traceback__ = None
        return response
    if isinstance(exc, HTTPException):
        if exc.status_code in {204, 304}:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    raise exc


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Answer a request refused before routing (bad path, body too large), audited as any refusal."""
    response = await audit_unrouted(Request(scope, receive), JSONResponse({"errors": [message]}, status_code=status))
    await response(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body (up to a bound), so the client reads our 413
    instead of a reset connection; a bigger body is cut off."""
    dropped = 0
    while dropped < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body"):
            return


__all__ = ["DRAIN_LIMIT", "VaultRequestPath"]
