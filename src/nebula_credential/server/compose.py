"""Where the HTTP server meets the console: the one module of ``server`` that imports it.

The console takes a session store and never imports the server; here (with
:mod:`.authconsole`, the adapter of its auth pages) its
logins are checked with the server's tokens and HCL policies, through the
same :mod:`.acl` as the HTTP API (:class:`TokenSessions`): a session is a
short-lived child token of the token logged in with, so it works across
workers, dies with its parent and is revoked at logout; failed logins are
audited and spend the same per-source budget as the API's refused requests.
``serve`` mounts it at ``/ui`` (:func:`console_routes`, filled in once the
worker's vault is open) and ``daemon --ui`` serves it alone on a loopback
address (:func:`serve_console`).  Both get the plain vault (the console
works from threads), not the worker's event-loop one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from .._http import EmbeddedServer
from .._net import is_loopback
from ..audit import Event
from ..config import KeyManagementConfig, parse_addr
from ..console import SESSION_TTL, Authorizer, Principal, Sessions, host_allowed
from ..exceptions import ConfigError
from ..servertables import TokenRow
from ..vault import Vault
from .acl import AccessControl, access_control_for
from .policies import ACL
from .ratelimit import SourceBuckets
from .tokens import TokenError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Marks a console session's child token (a raw API token in the cookie opens nothing).
SESSION_META = {"nebula_console": "session"}
#: Also on a session opened by a console login (username and password): its parent, the login's
#: token, was made for this session alone and is revoked with it at logout.
OWNED_META = {**SESSION_META, "nebula_console_parent": "owned"}


def console_app(vault: Vault, config: KeyManagementConfig, *, listen: str | None = None,
                api: ASGIApp | None = None) -> ASGIApp:
    """The console over ``vault``, its logins checked as the HTTP API checks tokens, answering only
    the ``Host`` of ``listen`` (default ``[server] listen``) and ``[server] public_addr``.  With the
    server's ``api`` app, it also lists the auth methods and takes username logins through it."""
    from ..console import create_console
    from .authconsole import ServerAuthConsole

    sessions = TokenSessions(vault, config)
    app: ASGIApp = create_console(vault, sessions,
                                  hosts=console_hosts(listen or config.server.listen, config.server.public_addr),
                                  auth=ServerAuthConsole(vault, config, sessions, api))
    return app


def console_hosts(listen: str, public_addr: str = "") -> frozenset[str] | None:
    """The ``Host`` values the console answers: the listen address (every loopback name for a
    loopback one) and ``public_addr``.  None (any Host) for a wildcard listen address without a
    ``public_addr``: there is no name to check against (redirects stay relative either way)."""
    host, port = parse_addr(listen, "server.listen")
    bare = host.strip("[]").lower()
    names: set[str] = set()
    if is_loopback(bare):
        names |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    elif bare not in ("0.0.0.0", "::", "*"):  # noqa: S104 (a comparison, not a bind)
        names.add(f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}")
    elif not public_addr:
        return None
    if public_addr:
        names.add(public_addr.lower())
    return frozenset(names)


def server_authorizer(vault: Vault, config: KeyManagementConfig) -> Authorizer:
    """Checks a token as the HTTP API checks one: a live token row, then its policies' ACL."""
    access = access_control_for(vault, config)

    def authorize(token: str) -> Principal | None:
        found = access.authorize(token)
        if found is None:
            return None
        row, acl = found
        return _principal(row, acl)

    return authorize


def _principal(row: TokenRow, acl: ACL) -> Principal:
    return Principal(f"{row.display_name} ({row.accessor[:8]})", lambda cap, path: acl.allows(path, cap))


class TokenSessions(Sessions):
    """Console sessions as child tokens of the server's token store (see the module docstring)."""

    def __init__(self, vault: Vault, config: KeyManagementConfig, *, ttl: timedelta = SESSION_TTL) -> None:
        self.vault = vault
        self.access: AccessControl = access_control_for(vault, config)
        self.session_ttl = ttl
        self.buckets = SourceBuckets(config.server.unauthenticated_rate, config.server.unauthenticated_burst,
                                     reason="console_login")

    def retry_after(self, source: str) -> int | None:
        return self.buckets.retry_after(source) if self.buckets.empty(source) else None

    def login(self, token: str, source: str) -> tuple[str, Principal] | None:
        return self.open(token, source)

    def open(self, token: str, source: str, *, owned: bool = False,
             **details: Any) -> tuple[str, Principal] | None:
        """A session for ``token`` (a child of it; ``owned``: the token was made for this session,
        by a console login, and logout revokes it too); None when the token is refused."""
        found = self.access.authorize(token, source) if token else None
        if found is None:
            self.buckets.spend(source)  # spent only by failures, as the API's refused requests
            self._audit("console.login", "denied", source=source, **details)
            return None
        parent, acl = found
        ttl = self.session_ttl
        if parent.expires_at is not None:  # never longer than the token logged in with
            left = parent.expires_at - self.vault.clock().timestamp()
            ttl = min(ttl, timedelta(seconds=max(1.0, left)))
        try:
            secret, row = self.access.tokens.create(
                list(parent.policies), ttl=ttl, parent=parent, display_name=parent.display_name,
                meta=OWNED_META if owned else SESSION_META, renewable=False)
        except TokenError as exc:  # e.g. a token with no policy a child could carry
            if owned:  # nobody else holds the login's token: it goes
                self.access.tokens.revoke(parent.accessor)
            self._audit("console.login", "denied", accessor=parent.accessor, source=source, reason=str(exc), **details)
            return None
        # the principal names the session's accessor; console.login links it to the parent's
        self._audit("console.login", "ok", accessor=parent.accessor, session_accessor=row.accessor, source=source,
                    **details)
        return secret, _principal(row, acl)

    def check(self, session: str, source: str | None = None) -> Principal | None:
        found = self.access.authorize(session, source)  # a session keeps its token's bound_cidrs
        if found is None or found[0].meta.get("nebula_console") != "session":
            return None
        return _principal(*found)

    def logout(self, session: str) -> None:
        row = self.access.tokens.lookup(session)
        if row is None or row.meta.get("nebula_console") != "session":
            return
        owned = row.meta.get("nebula_console_parent") == "owned" and row.parent is not None
        self.access.tokens.revoke(row.parent if owned and row.parent is not None else row.accessor)
        self._audit("console.logout", "ok", accessor=row.parent, session_accessor=row.accessor,
                    **({"revoked_parent": True} if owned else {}))

    def _audit(self, action: str, outcome: str, **details: Any) -> None:
        self.vault.record_events([Event(action, outcome=outcome, details=details)])


async def _to_console(request: Request) -> Response:
    """``GET /`` and ``GET /ui``: a relative redirect to ``/ui/``, after the console's Host check
    (never a URL built from the Host header)."""
    console = getattr(request.app.state, "console", None)
    if console is None:
        return PlainTextResponse("not found", status_code=404)
    if not host_allowed(request.scope, getattr(getattr(console, "state", None), "hosts", None)):
        return PlainTextResponse("unexpected Host header", status_code=400)
    return RedirectResponse("/ui/", status_code=307)


def console_routes() -> list[BaseRoute]:
    """``/`` and ``/ui`` (relative redirects) and ``/ui/*`` (the console of ``app.state.console``)."""
    return [Route("/", _to_console, methods=["GET", "HEAD"]), Route("/ui", _to_console, methods=["GET", "HEAD"]),
            Mount("/ui", app=DeferredConsole())]


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

    host, port = parse_addr(addr, "--ui")
    if not is_loopback(host):
        raise ConfigError("--ui", f"{host} is not a loopback address; serve the console over TLS with "
                                  "`nebula-credential serve` instead")
    app = Starlette(routes=console_routes())
    app.state.console = console_app(vault, config, listen=addr)
    return EmbeddedServer(app, host, port, name="nebula-console", option="--ui").start()
