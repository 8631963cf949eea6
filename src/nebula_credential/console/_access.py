"""Who may see and do what in the console, and the cookie and CSRF mechanics.

The console holds no authority of its own: a token is checked by the
``Authorizer`` the server hands in (its token store and HCL policies), on
every request, so a revoked token or a changed policy takes effect at once.
What each page or action needs is one Vault policy path, listed in
:data:`NEEDS`; Transit's own path where Transit has the operation (a Transit
key is a keyring), ``sys/nebula/...`` otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

#: The cookie that carries the token: HttpOnly, Secure, SameSite=Strict, Path=/ui.
COOKIE = "nc_console"

#: (capability, policy path) each view or action needs; ``{keyring}`` is filled in.
NEEDS: dict[str, tuple[str, str]] = {
    "view": ("read", "transit/keys/{keyring}"),
    "rotate": ("update", "transit/keys/{keyring}/rotate"),
    "revoke": ("update", "sys/nebula/keys/{keyring}/revoke"),
    "reinstate": ("update", "sys/nebula/keys/{keyring}/reinstate"),
    "reencrypt": ("update", "sys/nebula/keys/{keyring}/reencrypt"),
    "audit": ("read", "sys/nebula/audit"),
}
ACTIONS = ("rotate", "revoke", "reinstate", "reencrypt")
#: Actions that name a key version (the confirmation names it too).
VERSIONED = ("revoke", "reinstate")


@dataclass(frozen=True, slots=True)
class Principal:
    """A logged-in token: a display name and a policy check, never the token itself."""

    name: str
    allowed: Callable[[str, str], bool]  # (capability, policy path) -> allowed

    def can(self, what: str, keyring: str = "") -> bool:
        capability, path = NEEDS[what]
        return self.allowed(capability, path.format(keyring=keyring))

    def __repr__(self) -> str:
        return f"Principal({self.name!r})"


#: Checks a token; ``None`` for an unknown, expired or revoked one.
Authorizer = Callable[[str], "Principal | None"]


def csrf_token(token: str) -> str:
    """The CSRF value of a session: an HMAC keyed by its token, so it needs no server state
    (several server workers agree) and reveals nothing about the token."""
    return hmac.new(token.encode("utf-8"), b"nebula-credential console csrf v1", hashlib.sha256).hexdigest()


def csrf_ok(token: str, submitted: str) -> bool:
    return hmac.compare_digest(csrf_token(token), submitted)


def security_headers() -> list[tuple[bytes, bytes]]:
    """Headers of every console response: a strict CSP (no inline script or style, nothing
    from another origin), no framing, no referrer to other sites, no sniffing, no caching."""
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),  # no-referrer would make Chrome send Origin: null
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]
