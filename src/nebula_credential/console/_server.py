"""The console on ``nebula-credential serve``: the server's tokens and HCL policies decide.

The server's worker opens its serving vault on the event loop; the console
works from threads, so it gets the plain vault the worker opens for
``/metrics`` and the scheduler, and reads tokens and policies through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..config import KeyManagementConfig
from ..vault import Vault
from ._access import Authorizer, Principal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def server_authorizer(vault: Vault, config: KeyManagementConfig) -> Authorizer:
    """Checks a token as the HTTP API does: a live token row, then its policies' ACL."""
    from ..server.policies import ACL, ROOT_POLICY, Rule, parse
    from ..server.tokens import TokenManager

    server = config.server
    tokens = TokenManager(vault.store, vault.provider, clock=vault.clock, default_ttl=server.default_ttl,
                          max_ttl=server.max_ttl, cache_ttl=server.cache_ttl)

    def authorize(token: str) -> Principal | None:
        row = tokens.lookup(token)
        if row is None:
            return None
        if ROOT_POLICY in row.policies:
            acl = ACL([], root=True)
        else:
            rules: list[Rule] = []
            with vault.store.read() as tx:
                for name in row.policies:
                    text = tx.policy_get(name)
                    if text:
                        rules.extend(parse(text))
            acl = ACL(rules)
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


def serve_beside_daemon(vault: Vault, config: KeyManagementConfig, addr: str) -> Any:
    """``daemon --ui HOST:PORT``: the console in a thread of the daemon, on a loopback address
    only (plain HTTP; anything else is what ``serve`` with TLS is for).  Returns the uvicorn server."""
    import threading

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from .._extras import extra
    from ..config import parse_addr
    from ..exceptions import ConfigError
    from ..server.run import is_loopback
    from .app import create_console

    host, port = parse_addr(addr, "--ui")
    if not is_loopback(host):
        raise ConfigError("--ui", f"{host} is not a loopback address; serve the console over TLS with "
                                  "`nebula-credential serve` instead")
    with extra("server"):
        # a thread-friendly embedded server; ``serve`` itself runs on granian
        import uvicorn
    app = Starlette(routes=[Mount("/ui", app=create_console(vault, server_authorizer(vault, config)))])
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, name="nebula-console", daemon=True).start()
    return server
