"""The console's auth pages and username logins, answered by the server (:class:`ServerAuthConsole`).

The listing reads the same mount table and auth items as ``sys/auth`` and the
``LIST`` endpoints (:class:`.authmounts.AuthMounts`).  A username login is
the server's own ``POST /v1/auth/<mount>/login/<username>``, called in
process through the API app with the browser's address as the client: the
argon2id check, the per-user and per-address failure budgets (429), the CIDR
check, the ``auth.login`` audit event and the login metric are the API's,
not a copy.  Its token then opens a console session like a pasted token
(:meth:`.compose.TokenSessions.open`), owned by the session so that logout
revokes it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import quote

import anyio
from starlette.concurrency import run_in_threadpool

from ..config import KeyManagementConfig
from ..console import AuthMountInfo, PasswordOutcome, Principal
from ..vault import Vault
from .authmounts import ENTRIES, AuthMounts

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
#: The most of a login answer read back (an ``auth`` block is a few hundred bytes).
MAX_ANSWER = 64 * 1024


class SessionOpener(Protocol):
    """:meth:`.compose.TokenSessions.open` (a protocol: compose imports this module)."""

    def open(self, token: str, source: str, *, owned: bool = False,
             **details: Any) -> tuple[str, Principal] | None: ...


class ServerAuthConsole:
    """:class:`~..console._auth.AuthConsole` over the server's mount table and API app."""

    def __init__(self, vault: Vault, config: KeyManagementConfig, sessions: SessionOpener,
                 api: ASGIApp | None) -> None:
        self.mounts_of = AuthMounts(vault, config.server)
        self.sessions = sessions
        self.api = api

    def mounts(self) -> list[AuthMountInfo]:
        out = []
        for e in self.mounts_of.mounts():
            noun = ENTRIES.get(e.type)
            list_path = None if noun is None else f"{e.route}/{'users' if noun[0] == 'user' else 'role'}/"
            out.append(AuthMountInfo(e.path, e.type, e.description, e.accessor,
                                     None if noun is None else noun[0], list_path))
        return out

    def names(self, mount: AuthMountInfo) -> list[str]:
        entry = next((e for e in self.mounts_of.mounts() if e.path == mount.path), None)
        return [] if entry is None else list(self.mounts_of.entries(entry) or [])

    def password_mounts(self) -> list[str]:
        if self.api is None:  # ``daemon --ui``: no API to check a password with
            return []
        return [e.path for e in self.mounts_of.mounts() if e.type == "userpass"]

    async def password_login(self, mount: str, username: str, password: str, source: str,
                             scope: Scope) -> PasswordOutcome:
        if self.api is None:
            return PasswordOutcome(None, 404)
        path = f"/v1/auth/{quote(mount, safe='/')}/login/{quote(username, safe='')}"
        status, headers, body = await _call(self.api, path, json.dumps({"password": password}).encode(),
                                            source, scope)
        if status != 200:
            retry = headers.get("retry-after", "")
            return PasswordOutcome(None, status, int(retry) if retry.isdigit() else None)
        token = json.loads(body)["auth"]["client_token"]
        session = await run_in_threadpool(lambda: self.sessions.open(token, source, owned=True, method="userpass",
                                                                     mount=f"auth/{mount}", user=username.lower()))
        return PasswordOutcome(session, 200 if session is not None else 403)


async def _call(app: ASGIApp, path: str, body: bytes, source: str,
                outer: Scope) -> tuple[int, dict[str, str], bytes]:
    """One ``POST`` to ``app`` in this process, from ``source``: (status, headers, body)."""
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": outer.get("scheme", "http"), "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "client": (source, 0), "server": outer.get("server"),
        "headers": [(b"host", b"nebula-console.internal"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }
    if "state" in outer:
        scope["state"] = dict(outer["state"])
    done = anyio.Event()
    sent = False
    status = 500
    headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays connected until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers.update({k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            if sum(map(len, chunks)) < MAX_ANSWER:
                chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body"):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status, headers, b"".join(chunks)
