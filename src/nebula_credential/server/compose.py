"""Where the HTTP server meets the console: the one module of ``server`` that imports it.

The console takes an authorizer and never imports the server; here its
logins are checked with the server's tokens and HCL policies, through the
same :mod:`.acl` as the HTTP API (:func:`server_authorizer`).  ``serve``
mounts it at ``/ui`` (:class:`DeferredConsole`, filled in once the worker's
vault is open) and ``daemon --ui`` serves it alone on a loopback address
(:func:`serve_console`).  Both get the plain vault (the console works from
threads), not the worker's event-loop one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._http import EmbeddedServer
from .._net import is_loopback
from ..config import KeyManagementConfig, parse_addr
from ..console import Authorizer, Principal
from ..exceptions import ConfigError
from ..vault import Vault
from .acl import access_control_for

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def console_app(vault: Vault, config: KeyManagementConfig) -> ASGIApp:
    """The console over ``vault``, its logins checked as the HTTP API checks tokens."""
    from ..console import create_console

    app: ASGIApp = create_console(vault, server_authorizer(vault, config))
    return app


def server_authorizer(vault: Vault, config: KeyManagementConfig) -> Authorizer:
    """Checks a console login as the HTTP API checks a token: a live token row, then its policies' ACL."""
    access = access_control_for(vault, config)

    def authorize(token: str) -> Principal | None:
        found = access.authorize(token)
        if found is None:
            return None
        row, acl = found
        return Principal(f"{row.display_name} ({row.accessor[:8]})", lambda cap, path: acl.allows(path, cap))

    return authorize


class DeferredConsole:
    """Mounted at ``/ui`` when the app is built; forwards to ``app.state.console``, which the
    worker's startup sets once its vault is open (404 until then)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        console = getattr(scope["app"].state, "console", None)
        if console is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await console(scope, receive, send)


def serve_console(vault: Vault, config: KeyManagementConfig, addr: str) -> EmbeddedServer:
    """``daemon --ui HOST:PORT``: the console on granian in a thread of the daemon, on a loopback
    address only (plain HTTP; anything else is what ``serve`` with TLS is for)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host, port = parse_addr(addr, "--ui")
    if not is_loopback(host):
        raise ConfigError("--ui", f"{host} is not a loopback address; serve the console over TLS with "
                                  "`nebula-credential serve` instead")
    app = Starlette(routes=[Mount("/ui", app=console_app(vault, config))])
    return EmbeddedServer(app, host, port, name="nebula-console", option="--ui").start()
