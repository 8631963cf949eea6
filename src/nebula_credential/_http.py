"""A tiny threaded HTTP server for operational endpoints (/healthz, /metrics): the fallback.

The daemon serves these with granian (:mod:`.server.embedded`), as ``serve``
does; this standard-library server is used only on a base install without
the ``server`` extra, so a health probe works wherever the scheduler runs.

Routes are a table ``{path: handler}`` where a handler returns
``(status, content_type, body)``; the daemon and the metrics layer each add
theirs.  It binds where it is told (default loopback) and logs nothing
about request contents.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handler = Callable[[], tuple[int, str, bytes]]
logger = logging.getLogger("nebula_credential.http")


class OpsServer:
    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self.routes = dict(routes)
        table = self.routes

        class _Req(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                handler = table.get(self.path.split("?", 1)[0])
                if handler is None:
                    status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
                else:
                    try:
                        status, ctype, body = handler()
                    except Exception as exc:  # report, never crash the server thread
                        logger.warning("handler for %s failed: %s", self.path, type(exc).__name__)
                        status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
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
