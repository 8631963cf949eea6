"""Request count and latency per method, route and status, for ``/metrics``.

A pure-ASGI middleware outside everything else, so it times the whole
request.  Both labels come from fixed sets, never from the client: the
method is one of :data:`METHODS` or ``other``, the route is a pattern of
the app's route table (``/v1/sys``, ``/v1/auth/token``, ``/ui``,
``/metrics``...), a mount of the mount table (``/v1/secret``: operators
choose those, clients do not) or ``other``.  Paths carry
credential ids and made-up first segments; as labels they made the
series unbounded (5,000 made-up requests grew ``/metrics`` from 93 KB to
10 MB before).  The counter
and histogram (``metrics.SERVER_METRICS``) are set on ``app.state.http_metrics``
at startup; before that nothing is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: Method label values; any other method is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "LIST", "OPTIONS"})
OTHER = "other"


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def route_patterns(routes: Any) -> tuple[str, ...]:
    """The top-level patterns of a route table (a Mount's path, a Route's path), longest first."""
    patterns = {str(getattr(route, "path", "")).rstrip("/") for route in routes}
    return tuple(sorted((p for p in patterns if p), key=len, reverse=True))


def route_label(path: str, patterns: tuple[str, ...]) -> str:
    """The pattern ``path`` falls under (empty segments ignored, as the path middleware does), else ``other``."""
    clean = "/" + "/".join(p for p in path.split("/") if p)
    for pattern in patterns:
        if clean == pattern or clean.startswith(pattern + "/"):
            return pattern
    return OTHER


#: Set on the scope by the /v1 request path: the request's route label, as :func:`route_label_of` gives.
ROUTE_LABEL = "nc.route_label"


def route_label_of(app: Any, scope: Scope) -> str:
    """The route label of a request (``scope`` as sent): a pattern of the app's route table, or under
    the mount dispatcher the mount it routes to."""
    state = app.state
    patterns = getattr(state, "route_patterns", None)
    if patterns is None:
        patterns = state.route_patterns = route_patterns(getattr(app, "routes", ()))
    route = route_label(str(scope.get("path", "")), patterns)
    mounts = getattr(state, "mounts", None)
    if route == "/v1" and mounts is not None:  # the mount dispatcher: label by the mount it routed to
        route = mounts.label(str(scope.get("path", ""))) or OTHER
    return route


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) -> the counter's and the histogram's child: ``labels()`` takes a lock
        # and checks its values on every call; the label sets are fixed and few, so each is looked up once
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._sink: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app: Any = scope.get("app")
        sink = getattr(app.state, "http_metrics", None) if app is not None else None
        if scope["type"] != "http" or sink is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            counter, histogram = sink
            method = method_label(str(scope.get("method", "")))
            route = scope.get(ROUTE_LABEL) or route_label_of(app, scope)  # the /v1 path's remembered one
            if sink is not self._sink:  # new metrics (tests register their own): new children
                self._children, self._sink = {}, sink
            key = (method, route, str(status))
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (counter.labels(*key), histogram.labels(method, route))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
