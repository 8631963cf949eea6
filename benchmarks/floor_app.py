"""The framework floor: the least a request can cost on granian, ASGI and RSGI.

Both apps read the whole body and answer one fixed JSON document, nothing
else: the server benchmark runs them on granian with the worker count our
``serve`` uses, driven by the same ``wrk`` script, so the gap between them
and our server is the cost of our request path (token, policy, store,
crypto, audit), not of the framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

BODY = b'{"request_id":"00000000-0000-0000-0000-000000000000","data":{"value":"ok"}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def asgi_app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                   send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """ASGI: drain the body, answer the fixed document."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class _RSGI:
    """RSGI (granian's own interface): the same work without the ASGI message dicts."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        await protocol()  # the whole body
        protocol.response_bytes(200, [("content-type", "application/json")], BODY)


rsgi_app = _RSGI()
