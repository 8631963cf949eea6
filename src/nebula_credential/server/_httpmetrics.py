"""Request count and latency per method, route and status, for ``/metrics``.

A pure-ASGI middleware outside everything else, so it times the whole
request.  The route label is the mount (``/v1/secret``, ``/v1/sys``,
``/v1/auth/token``, ``/ui``, ``/metrics``...), never the full path: paths
carry credential ids and would make the label set unbounded.  The counter
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


def route_label(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "/"
    if parts[0] == "v1" and len(parts) > 1:
        if parts[1] == "auth" and len(parts) > 2:
            return f"/v1/auth/{parts[2]}"
        return f"/v1/{parts[1]}"
    return f"/{parts[0]}"


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = getattr(scope["app"].state, "http_metrics", None) if "app" in scope else None
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
            method, route = str(scope.get("method", "")), route_label(str(scope.get("path", "")))
            counter.labels(method, route, str(status)).inc()
            histogram.labels(method, route).observe(time.perf_counter() - started)
