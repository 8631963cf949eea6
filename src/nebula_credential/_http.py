"""The HTTP of the operational endpoints (/healthz, /metrics) and ``daemon --ui``: granian.

``serve`` runs granian's process server.  The daemon needs its HTTP beside
the scheduler thread, reading the scheduler's state, so it runs granian's
*embedded* server on a thread with its own event loop
(:class:`EmbeddedServer`): one HTTP stack.  On a base install without the
``server`` extra, :func:`serve_ops` falls back to a minimal standard-library
server (:class:`OpsServer`) for /healthz and /metrics, so a health probe
works wherever the scheduler runs (``--ui`` needs the extra).

Routes are a table ``{path: handler}`` where a handler returns
``(status, content_type, body)``; the daemon and the metrics layer each add
theirs.  Both servers bind where they are told (default loopback), answer
the same statuses, and log nothing about request contents.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .exceptions import ConfigError, MissingDependencyError, NebulaCredentialError

Handler = Callable[[], tuple[int, str, bytes]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
logger = logging.getLogger("nebula_credential.http")

#: How long :meth:`EmbeddedServer.start` waits for the socket to be bound.
START_TIMEOUT = 30.0
_TEXT = "text/plain; charset=utf-8"
_NOT_FOUND = (404, _TEXT, b"not found\n")
_FAILED = (500, _TEXT, b"internal error\n")


class Serving(Protocol):
    """A started server: where it listens, and how to stop it."""

    @property
    def address(self) -> tuple[str, int]: ...

    def stop(self) -> None: ...


def serve_ops(host: str, port: int, routes: Mapping[str, Handler], *, option: str = "--metrics-addr") -> Serving:
    """Serve ``routes`` on granian (the ``server`` extra), else on the standard-library fallback."""
    try:
        server = EmbeddedServer(ops_app(routes), host, port, option=option)
    except MissingDependencyError:
        logger.debug("the server extra is not installed: /healthz and /metrics on the standard library server")
        return OpsServer(host, port, dict(routes)).start()
    return server.start()


def _answer(handler: Handler | None, path: str) -> tuple[int, str, bytes]:
    if handler is None:
        return _NOT_FOUND
    try:
        return handler()
    except Exception as exc:  # report, never crash the server
        logger.warning("handler for %s failed: %s", path, type(exc).__name__)
        return _FAILED


def ops_app(routes: Mapping[str, Handler]) -> ASGIApp:
    """A plain ASGI app answering GET on each path of ``routes`` (handlers run on a thread,
    as they may read the store); other paths 404, other methods 501, a failing handler 500."""
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
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 501, _TEXT, b"unsupported method\n"  # as http.server answers
        else:
            status, ctype, body = await asyncio.to_thread(_answer, table.get(scope["path"]), scope["path"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


def check_address_free(host: str, port: int, option: str) -> None:
    """Raise ConfigError "address already in use" when something listens on ``host:port``.

    granian binds with ``SO_REUSEPORT`` (so its workers can share a socket),
    and Linux then lets a later process asking the same join the port: a
    second daemon would split the probes with the first.  Binding the address
    here without it (only ``SO_REUSEADDR``, so TIME_WAIT after a restart is
    fine) fails when a socket listens there.  Two starts in the same instant
    could both pass: this closes the everyday mistake, not that race.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(option, f"cannot resolve {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(option, f"{host}:{port}: address already in use "
                                      "(another server listens there; stop it or choose another port)") from None
                raise ConfigError(option, f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _QuietExperimental(logging.Filter):
    """granian warns on every start that its embedded mode is experimental (said in docs/server.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "experimental" not in record.getMessage()


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
        An address another process listens on is refused first (:func:`check_address_free`)."""
        check_address_free(self._host, self._port, self._option)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise NebulaCredentialError(f"HTTP server on {self._host}:{self._port} did not start")
        if self._error is not None:
            raise NebulaCredentialError(
                f"cannot serve HTTP on {self._host}:{self._port}: {self._error}") from self._error
        if self._port:  # port 0: an ephemeral port no other server can be asked for
            self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        """granian calls its startup hook before its socket listens: wait until a connection is
        accepted, so a second server started right after this one is refused by the address check."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((self._host.strip("[]"), self._port), timeout=0.5).close()
                return
            except OSError:
                if self._error is not None or time.monotonic() > deadline:
                    raise NebulaCredentialError(f"HTTP server on {self._host}:{self._port} did not start") from None
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop accepting, finish, and wait for the thread (a few seconds at most)."""
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(10)


class OpsServer:
    """The standard-library fallback (no ``server`` extra): the same routes and answers."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.routes = dict(routes)
        table = self.routes

        class _Req(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                status, ctype, body = _answer(table.get(path), path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http %s", self.requestline)

        self._server = ThreadingHTTPServer((host, port), _Req)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="nebula-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
