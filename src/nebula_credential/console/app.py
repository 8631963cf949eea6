"""The console's Starlette app: mount it at ``/ui`` on the server (or the daemon).

``create_console(vault, sessions)`` takes the synchronous vault and where
sessions live (:class:`~._access.Sessions`; the server's make each one a
short-lived child token that logout revokes).  The cookie holds the session
secret, never the token logged in with.  Every page re-checks the session;
every POST needs the same origin (scheme included), the session's CSRF value
and, for actions, the confirmation form's echo of the keyring and version it
named.  With ``hosts`` given, a request whose ``Host`` is not one of them is
refused before anything else (no page, no redirect).  Store work runs in the
thread pool.  Destroy is deliberately not offered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..exceptions import NebulaCredentialError
from ..vault import Vault
from . import _auth as auth_pages
from . import _html as pages
from ._access import (
    ACTIONS,
    COOKIE,
    VERSIONED,
    Authorizer,
    Principal,
    Sessions,
    csrf_ok,
    csrf_token,
    security_headers,
)
from ._database import database_handler
from ._state import Jobs, audit_state, keyring_names, keyring_view, provider_health, timeline

STATIC = Path(__file__).with_name("static")
MAX_FORM = 8 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Request, str, Principal], Awaitable[Response]]


class _SecurityHeaders:
    """Adds the CSP and friends to every response of the console (pure ASGI, no buffering), HSTS
    over TLS; and refuses a ``Host`` outside ``hosts`` before the app (or a redirect) sees it."""

    def __init__(self, app: ASGIApp, hosts: Collection[str] | None = None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        if not host_allowed(scope, self.hosts):
            body = b"unexpected Host header"
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                                    *security_headers(tls)]})
            await send({"type": "http.response.body", "body": body})
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + security_headers(tls)
            await send(message)

        await self.app(scope, receive, with_headers)


class _Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def host_allowed(scope: Scope, hosts: Collection[str] | None) -> bool:
    """Whether the request's ``Host`` is one the console is served under (any when ``hosts`` is None).

    Compared lower-case; a name without a port also matches with the
    scheme's default port (``example.com`` is ``example.com:443`` over TLS).
    """
    if hosts is None:
        return True
    host = next((v for k, v in scope.get("headers") or () if k == b"host"), b"").decode("latin-1").lower()
    if host in hosts:
        return True
    default = "443" if scope.get("scheme") == "https" else "80"
    if host.endswith(f":{default}"):
        return host[: -len(default) - 1] in hosts
    return f"{host}:{default}" in hosts


def _same_origin(request: Request) -> bool:
    """A browser's POST from another site carries Sec-Fetch-Site and Origin; refuse it.

    The Origin must name this scheme too: ``http://host`` is another origin
    than ``https://host`` (a page served over plain HTTP on the same name).
    """
    site = request.headers.get("sec-fetch-site")
    if site not in (None, "same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.headers.get("host", ""))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise _Denied(413, "form too large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def create_console(vault: Vault, sessions: Sessions | Authorizer, *, secure_cookie: bool = True,
                   hosts: Collection[str] | None = None, auth: auth_pages.AuthConsole | None = None) -> Starlette:
    """The console over ``vault``'s store.

    ``sessions`` is where sessions live, or a plain ``authorize(token)``
    giving a :class:`Principal` or None (sessions then kept in memory).
    ``hosts``: the ``Host`` values the console answers (lower-case
    ``host:port``); None accepts any (tests, a mount whose server checks).
    ``auth``: the server's auth methods (:mod:`._auth`): the auth page and the username login.
    """
    jobs = Jobs()
    store = sessions if isinstance(sessions, Sessions) else Sessions(sessions)

    async def session(request: Request) -> tuple[str, Principal] | None:
        secret = request.cookies.get(COOKIE)
        if not secret:
            return None
        source = request.client.host if request.client is not None else None
        principal = await run_in_threadpool(store.check, secret, source)
        return (secret, principal) if principal is not None else None

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            base = _base(request)
            found = await session(request)
            if found is None:
                if request.headers.get("hx-request"):
                    return Response(status_code=401, headers={"HX-Redirect": f"{base}/login"})
                if request.method == "POST":
                    return HTMLResponse(pages.error_page(base, 403, "not logged in"), status_code=403)
                return RedirectResponse(f"{base}/login", status_code=303)
            token, principal = found
            try:
                if request.method == "POST" and not _same_origin(request):
                    raise _Denied(403, "cross-site request refused")
                return await handler(request, token, principal)
            except _Denied as exc:
                return HTMLResponse(pages.error_page(base, exc.status, str(exc), principal, csrf_token(token)),
                                    status_code=exc.status)

        return run

    async def visible_keyring(request: Request, principal: Principal) -> str:
        name = request.path_params["keyring"]
        if not principal.can("view", name):
            raise _Denied(403, f"this token may not read keyring {name}")
        if name not in await run_in_threadpool(keyring_names, vault):
            raise _Denied(404, f"no keyring {name}")
        return str(name)

    async def readable_views(principal: Principal) -> list[Any]:
        names = [n for n in await run_in_threadpool(keyring_names, vault) if principal.can("view", n)]
        return [await run_in_threadpool(keyring_view, vault, n) for n in names]

    # ---- login ---------------------------------------------------------------
    async def login_html(base: str, error: str = "", username_error: str = "") -> str:
        mounts = await run_in_threadpool(auth.password_mounts) if auth is not None else []
        return pages.login_page(base, error, auth_pages.password_form(base, mounts, username_error))

    def opened(base: str, session_secret: str) -> Response:
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(COOKIE, session_secret, httponly=True, secure=secure_cookie, samesite="strict",
                            path=base or "/")
        return response

    async def login(request: Request) -> Response:
        base = _base(request)
        if request.method == "GET":
            return HTMLResponse(await login_html(base))
        if not _same_origin(request):
            return HTMLResponse(pages.login_page(base, "cross-site request refused"), status_code=403)
        source = request.client.host if request.client is not None else ""
        wait = store.retry_after(source)
        if wait is not None:
            return HTMLResponse(pages.login_page(base, "Too many failed logins from this address; try again "
                                                       f"in {wait} s."), status_code=429,
                                headers={"Retry-After": str(wait)})
        token = (await _form(request)).get("token", "").strip()
        session = await run_in_threadpool(store.login, token, source)
        if session is None:
            return HTMLResponse(await login_html(base, "Unknown, expired or revoked token."), status_code=403)
        return opened(base, session[0])

    async def login_userpass(request: Request) -> Response:
        """A username and password, checked by the server's own userpass login (see :mod:`._auth`)."""
        base = _base(request)
        if auth is None:
            return HTMLResponse(pages.error_page(base, 404, "no username login here"), status_code=404)
        if not _same_origin(request):
            return HTMLResponse(await login_html(base, username_error="cross-site request refused"), status_code=403)
        form = await _form(request)
        mount, username = form.get("mount", "").strip("/"), form.get("username", "").strip()
        refused = auth_pages.PasswordOutcome(None, 400)
        if auth_pages.USERNAME.match(username) and mount in await run_in_threadpool(auth.password_mounts):
            source = request.client.host if request.client is not None else ""
            outcome = await auth.password_login(mount, username, form.get("password", ""), source, request.scope)
            if outcome.session is not None:
                return opened(base, outcome.session[0])
            refused = outcome
        headers = {"Retry-After": str(refused.retry_after or 1)} if refused.status == 429 else None
        return HTMLResponse(await login_html(base, username_error=auth_pages.refusal(refused)),
                            status_code=429 if refused.status == 429 else 403, headers=headers)

    async def logout(request: Request, token: str, principal: Principal) -> Response:
        if not csrf_ok(token, (await _form(request)).get("csrf", "")):
            raise _Denied(403, "missing or wrong CSRF token")
        await run_in_threadpool(store.logout, token)
        base = _base(request)
        response = RedirectResponse(f"{base}/login", status_code=303)
        response.delete_cookie(COOKIE, path=base or "/", secure=secure_cookie, httponly=True, samesite="strict")
        return response

    # ---- pages ---------------------------------------------------------------
    async def auth_methods(request: Request, token: str, principal: Principal) -> Response:
        if not auth_pages.can_list_mounts(principal):
            raise _Denied(403, "this token may not read sys/auth")
        views = None if auth is None else await run_in_threadpool(auth_pages.mount_views, auth, principal)
        return HTMLResponse(auth_pages.auth_page(_base(request), views, principal, csrf_token(token)))

    async def overview(request: Request, token: str, principal: Principal) -> Response:
        views = await readable_views(principal)
        return HTMLResponse(pages.overview_page(_base(request), views, principal, csrf_token(token)))

    async def alerts(request: Request, token: str, principal: Principal) -> Response:
        views = await readable_views(principal)
        return HTMLResponse(pages.alerts_page(_base(request), views, principal, csrf_token(token)))

    async def health(request: Request, token: str, principal: Principal) -> Response:
        if not principal.can("audit"):
            raise _Denied(403, "this token may not read the audit trail")
        provider = await run_in_threadpool(provider_health, vault)
        chain, events = await run_in_threadpool(audit_state, vault)
        return HTMLResponse(pages.health_page(_base(request), provider, chain, events, principal, csrf_token(token)))

    async def keyring(request: Request, token: str, principal: Principal) -> Response:
        name = await visible_keyring(request, principal)
        view = await run_in_threadpool(keyring_view, vault, name)
        job = jobs.get(name)
        done = request.query_params.get("done", "")
        # "started" is news only while the pass runs: once it has ended the progress card says how it ended
        message = "" if done == "reencrypt" and (job is None or not job.running) else _done_message(
            done, request.query_params.get("version", ""))
        return HTMLResponse(pages.keyring_page(_base(request), view, principal, csrf_token(token), job,
                                               message=message))

    async def progress(request: Request, token: str, principal: Principal) -> Response:
        name = await visible_keyring(request, principal)
        job = jobs.get(name)
        if request.query_params.get("running") and job is not None and not job.running:
            # the pass has ended: reload the page, so the versions and the timeline show the outcome too
            # (and the "started" banner goes: the page shows it only while the pass runs)
            return Response(status_code=200, headers={"HX-Refresh": "true"})
        view = await run_in_threadpool(keyring_view, vault, name)
        return HTMLResponse(pages.progress_fragment(_base(request), view, job))

    async def timeline_json(request: Request, token: str, principal: Principal) -> Response:
        name = await visible_keyring(request, principal)
        return JSONResponse(await run_in_threadpool(timeline, vault, name))

    async def confirm(request: Request, token: str, principal: Principal) -> Response:
        name = await visible_keyring(request, principal)
        action, version = _action_args(request.query_params.get("action", ""), request.query_params.get("version"))
        if not principal.can(action, name):
            raise _Denied(403, f"this token may not {action} keyring {name}")
        view = await run_in_threadpool(keyring_view, vault, name)
        return HTMLResponse(pages.confirm_page(_base(request), view, action, version, principal, csrf_token(token)))

    async def act(request: Request, token: str, principal: Principal) -> Response:
        name = await visible_keyring(request, principal)
        action = request.path_params["action"]
        form = await _form(request)
        action, version = _action_args(action, form.get("version"))
        if not principal.can(action, name):
            raise _Denied(403, f"this token may not {action} keyring {name}")
        if not csrf_ok(token, form.get("csrf", "")):
            raise _Denied(403, "missing or wrong CSRF token")
        expected = name + (f"/v{version}" if version is not None else "")
        if form.get("confirm") != expected:
            raise _Denied(400, f"the confirmation does not name {expected}")
        target = vault if name == vault.keyring_name else vault.keyring(name)
        reason = f"console: {principal.name}"
        base = _base(request)
        try:
            if action == "rotate":
                kv = await run_in_threadpool(target.keys.rotate, reason)
                version = kv.version if kv is not None else None
            elif action == "revoke":
                assert version is not None
                await run_in_threadpool(lambda: target.keys.revoke(version, reason=reason))
            elif action == "reinstate":
                assert version is not None
                await run_in_threadpool(target.keys.reinstate, version)
            else:
                await run_in_threadpool(jobs.start, vault, name, principal.name)
        except NebulaCredentialError as exc:
            view = await run_in_threadpool(keyring_view, vault, name)
            return HTMLResponse(pages.keyring_page(base, view, principal, csrf_token(token), jobs.get(name),
                                                   error=f"{type(exc).__name__}: {exc}"), status_code=409)
        suffix = f"&version={version}" if version is not None else ""
        return RedirectResponse(f"{base}/keyrings/{name}?done={action}{suffix}", status_code=303)

    routes = [
        Route("/", page(overview)),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/login/userpass", login_userpass, methods=["POST"]),
        Route("/auth", page(auth_methods)),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/alerts", page(alerts)),
        Route("/health", page(health)),
        Route("/database", page(database_handler(vault))),
        # ``:path``: a Transit key's keyring is ``<mount>/<name>``; the page itself is matched last
        Route("/keyrings/{keyring:path}/progress", page(progress)),
        Route("/keyrings/{keyring:path}/timeline.json", page(timeline_json)),
        Route("/keyrings/{keyring:path}/confirm", page(confirm)),
        Route("/keyrings/{keyring:path}/actions/{action}", page(act), methods=["POST"]),
        Route("/keyrings/{keyring:path}", page(keyring)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders, hosts=hosts)
    app.state.hosts = hosts
    return app


def _action_args(action: str, version: str | None) -> tuple[str, int | None]:
    if action not in ACTIONS:
        raise _Denied(400, f"unknown action {action!r}; the console offers {', '.join(ACTIONS)}")
    if action not in VERSIONED:
        return action, None
    if not version or not version.isdigit():
        raise _Denied(400, f"{action} needs a key version")
    return action, int(version)


def _done_message(action: str, version: str) -> str:
    v = f"v{version}" if version.isdigit() else ""
    return {
        "rotate": f"Rotated: {v} is now active.",
        "revoke": f"Revoked {v}.",
        "reinstate": f"Reinstated {v}: it is valid again.",
        "reencrypt": "Re-encryption started.",
    }.get(action, "")
