"""Who may see and do what in the console, and the cookie and CSRF mechanics.

The console holds no authority of its own: a token is checked by the
``Authorizer`` the server hands in (its token store and HCL policies), on
every request, so a revoked token or a changed policy takes effect at once.
What each page or action needs is one Vault policy path: for a KV keyring
:data:`NEEDS` (``sys/nebula/keyrings/<name>/...``), for a Transit key
:data:`TRANSIT_NEEDS` (Transit's own path where Transit has the operation,
``sys/nebula/transit/...`` otherwise).  The two are different objects with
different paths: a capability on one never acts on the other.  The tables
live in :mod:`nebula_credential.names`, where the Transit server reads the
same ``reinstate`` capability.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ..names import KV_KEYRING_NEEDS, TRANSIT_KEY_NEEDS, keyring_need

#: The cookie that carries the session secret: HttpOnly, Secure, SameSite=Strict, Path=/ui.
COOKIE = "nc_console"

#: (capability, policy path) each view or action needs on a KV keyring; ``{keyring}`` is filled in.
NEEDS: dict[str, tuple[str, str]] = KV_KEYRING_NEEDS
#: The same on a Transit key (keyring ``MOUNT/NAME``); ``{mount}`` and ``{name}`` are filled in.
TRANSIT_NEEDS: dict[str, tuple[str, str]] = TRANSIT_KEY_NEEDS
ACTIONS = ("rotate", "revoke", "reinstate", "reencrypt")
#: Actions that name a key version (the confirmation names it too).
VERSIONED = ("revoke", "reinstate")


@dataclass(frozen=True, slots=True)
class Principal:
    """A logged-in token: a display name and a policy check, never the token itself."""

    name: str
    allowed: Callable[[str, str], bool]  # (capability, policy path) -> allowed

    def can(self, what: str, keyring: str = "") -> bool:
        return self.allowed(*keyring_need(what, keyring))

    def __repr__(self) -> str:
        return f"Principal({self.name!r})"


#: Checks a token; ``None`` for an unknown, expired or revoked one.
Authorizer = Callable[[str], "Principal | None"]

#: How long a console session lasts at most (never longer than the token it was opened with).
SESSION_TTL = timedelta(hours=8)


class Sessions:
    """Where console sessions live: the cookie holds a session secret, never the token logged in with.

    The server's implementation (``server.compose.TokenSessions``) makes each
    session a short-lived child token of the presented one, so it works
    across workers, dies with its parent and is revoked at logout; it also
    audits and rate-limits failed logins.  This base keeps sessions in this
    process's memory, keyed by a hash of the secret (embedded and test use).
    """

    def __init__(self, authorize: Authorizer, *, ttl: timedelta = SESSION_TTL) -> None:
        self._authorize = authorize
        self._ttl = ttl.total_seconds()
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, float]] = {}  # sha256(session) -> (token, expiry on the monotonic clock)

    def retry_after(self, source: str) -> int | None:
        """Seconds ``source`` must wait before another login attempt (None: it may try now)."""
        return None

    def login(self, token: str, source: str) -> tuple[str, Principal] | None:
        """A new session for a valid ``token`` (its secret and principal); None when refused."""
        principal = self._authorize(token) if token else None
        if principal is None:
            return None
        session = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._open = {k: v for k, v in self._open.items() if v[1] > now}
            if len(self._open) >= _MAX_MEMORY_SESSIONS:
                self._open.pop(next(iter(self._open)))
            self._open[_digest(session)] = (token, now + self._ttl)
        return session, principal

    def check(self, session: str, source: str | None = None) -> Principal | None:
        """The principal of a live session; None once it expired, was closed or its token revoked
        (the server's also when the token is bound to networks ``source`` is not in)."""
        with self._lock:
            found = self._open.get(_digest(session))
        if found is None or found[1] <= time.monotonic():
            return None
        return self._authorize(found[0])

    def logout(self, session: str) -> None:
        """End the session: its secret no longer opens anything, here or (server) through the API."""
        with self._lock:
            self._open.pop(_digest(session), None)


_MAX_MEMORY_SESSIONS = 10_000


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode("utf-8")).hexdigest()


def csrf_token(token: str) -> str:
    """The CSRF value of a session: an HMAC keyed by its token, so it needs no server state
    (several server workers agree) and reveals nothing about the token."""
    return hmac.new(token.encode("utf-8"), b"nebula-credential console csrf v1", hashlib.sha256).hexdigest()


def csrf_ok(token: str, submitted: str) -> bool:
    return hmac.compare_digest(csrf_token(token), submitted)


def security_headers(tls: bool = False) -> list[tuple[bytes, bytes]]:
    """Headers of every console response: a strict CSP (no inline script or style, nothing
    from another origin), no framing, no referrer to other sites, no sniffing, no caching;
    and over TLS, HSTS (a browser never tries the console over plain HTTP again)."""
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    hsts = [(b"strict-transport-security", b"max-age=31536000")] if tls else []
    return [
        *hsts,
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),  # no-referrer would make Chrome send Origin: null
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]
