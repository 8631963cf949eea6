"""granian inside this process: the daemon's /healthz and /metrics, and ``daemon --ui``.

``serve`` runs granian's process server; the daemon needs its HTTP beside the
scheduler thread, reading the scheduler's state, so it runs granian's
embedded server on a thread with its own event loop.  Both go through the
same server (granian), so there is one HTTP stack.  Needs the ``server``
extra; :mod:`nebula_credential.daemon` falls back to a minimal standard
library server for /healthz and /metrics on a base install (see
``docs/server.md``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .._http import Handler
from ..exceptions import ConfigError, MissingDependencyError, NebulaCredentialError
from ._bind import check_address_free

logger = logging.getLogger("nebula_credential.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long :meth:`EmbeddedServer.start` waits for the socket to be bound.
START_TIMEOUT = 30.0
_NOT_FOUND = (404, "text/plain; charset=utf-8", b"not found\n")
_FAILED = (500, "text/plain; charset=utf-8", b"internal error\n")


class _QuietExperimental(logging.Filter):
    """granian warns on every start that its embedded mode is experimental: said once in our docs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "experimental" not in record.getMessage()


def ops_app(routes: Mapping[str, Handler]) -> ASGIApp:
    """A plain ASGI app answering GET on each path of ``routes`` (``{path: handler}``; a handler
    returns ``(status, content_type, body)``, run on a thread as it may read the store).
    Other paths answer 404; a failing handler 500, logged by type only (never its message)."""
    table = dict(routes)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        handler = table.get(scope["path"])
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 501, "text/plain; charset=utf-8", b"unsupported method\n"  # as before
        elif handler is None:
            status, ctype, body = _NOT_FOUND
        else:
            try:
                status, ctype, body = await asyncio.to_thread(handler)
            except Exception as exc:  # report, never crash the server
                logger.warning("handler for %s failed: %s", scope["path"], type(exc).__name__)
                status, ctype, body = _FAILED
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


class EmbeddedServer:
    """One ASGI app served by granian on a daemon thread of this process."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, name: str = "nebula-http",
                 option: str = "--metrics-addr") -> None:
        try:
            from granian.constants import Interfaces
            from granian.server.embed import Server
        except ImportError as exc:
            raise MissingDependencyError("granian", "server") from exc
        logging.getLogger("granian").addFilter(_QuietExperimental())
        self._host, self._port, self._option = host, port, option
        self._server = Server(app, address=host, port=port, interface=Interfaces.ASGINL, websockets=False,
                              log_enabled=False, log_access=False)
        self._server.on_startup(self._listening)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    def _listening(self) -> None:
        self._ready.set()

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve()

        try:
            asyncio.run(serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> EmbeddedServer:
        """Start serving; returns once the socket is bound (raises if it could not be).

        An address another process listens on is refused first, as ``serve`` refuses it
        (granian's ``SO_REUSEPORT`` would otherwise share the port; see :mod:`._bind`)."""
        try:
            check_address_free(self._host, self._port)
        except ConfigError as exc:  # named after this server's own option, not serve's --listen
            raise ConfigError(self._option, str(exc).removeprefix(f"{exc.field}: ")) from None
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise NebulaCredentialError(f"HTTP server on {self._host}:{self._port} did not start")
        if self._error is not None:
            raise NebulaCredentialError(
                f"cannot serve HTTP on {self._host}:{self._port}: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop accepting, finish, and wait for the thread (a few seconds at most)."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(10)
