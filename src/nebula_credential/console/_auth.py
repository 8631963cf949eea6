"""Auth methods in the console: the mounts and their roles or users (read-only), and logging in
with a username and password.

The console holds no authority of its own and never imports the server: what
it shows and how a password is checked come from an :class:`AuthConsole` the
server hands in (``server.authconsole``).  What a page shows follows the
logged-in token's ACL, as every other page does: the mount list needs ``read``
on ``sys/auth`` (what ``GET sys/auth`` needs), a mount's names need ``list`` on
its listing path (``auth/<mount>/role/``, ``auth/<mount>/users/``), exactly
what the HTTP API asks for the same listing.

A password login is the server's own ``auth/<mount>/login/<username>``
(audited, counted, rate-limited per user and per address there); its token
then opens a session the same way a pasted token does: the cookie holds a
short-lived child token, and logout revokes the login's token with it.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._access import Principal
from ._html import h, layout

Scope = MutableMapping[str, Any]
#: A userpass name as the server accepts one (it folds case); anything else never reaches it.
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}){0,3}$")


@dataclass(frozen=True, slots=True)
class AuthMountInfo:
    """One enabled auth method, as ``sys/auth`` lists it."""

    path: str  # without "auth/" or a trailing slash
    type: str
    description: str
    accessor: str
    #: What it keeps per name ("role", "user"), and the policy path whose ``list`` shows the names.
    noun: str | None = None
    list_path: str | None = None


@dataclass(frozen=True, slots=True)
class PasswordOutcome:
    """A password login's result: a session (secret, principal), or the status the server gave."""

    session: tuple[str, Principal] | None
    status: int
    retry_after: int | None = None

    def __repr__(self) -> str:
        return f"PasswordOutcome(status={self.status})"


class AuthConsole(Protocol):
    """What the console needs from the server for its auth pages and password logins."""

    def mounts(self) -> list[AuthMountInfo]:
        """The enabled auth methods (read in a worker thread)."""
        ...

    def names(self, mount: AuthMountInfo) -> list[str]:
        """The roles or users of one mount (read in a worker thread)."""
        ...

    def password_mounts(self) -> list[str]:
        """The userpass mounts a person may log in through (none: no password form)."""
        ...

    async def password_login(self, mount: str, username: str, password: str, source: str,
                             scope: Scope) -> PasswordOutcome:
        """Check a password through the server's own login and open a session for its token."""
        ...


@dataclass(frozen=True, slots=True)
class AuthMountView:
    """One mount as a principal may see it: ``names`` is None when the token may not list them."""

    info: AuthMountInfo
    names: list[str] | None


def can_list_mounts(principal: Principal) -> bool:
    return principal.allowed("read", "sys/auth")


def mount_views(source: AuthConsole, principal: Principal) -> list[AuthMountView]:
    """The mounts, each with its names when the principal may list them (runs in a thread)."""
    out = []
    for info in source.mounts():
        listable = info.list_path is not None and principal.allowed("list", info.list_path)
        out.append(AuthMountView(info, source.names(info) if listable else None))
    return out


def auth_page(base: str, views: list[AuthMountView] | None, principal: Principal, csrf: str) -> str:
    """``/auth``: one card per auth method; None when the console serves no API (``daemon --ui``)."""
    if views is None:
        body = ('<section class="card"><h1>Auth methods</h1><p>This console is served without the HTTP API '
                "(<code>daemon --ui</code>): auth methods are managed through <code>serve</code>.</p></section>")
        return layout("Auth methods", body, base=base, principal=principal, csrf=csrf, nav="auth")
    cards = []
    for v in views:
        i = v.info
        if i.noun is None:
            listing = '<p class="muted">Tokens are listed by accessor through the API only.</p>'
        elif v.names is None:
            listing = (f'<p class="muted">This token may not list the {h(i.noun)}s of this mount '
                       f"(needs <code>list</code> on <code>{h(i.list_path)}</code>).</p>")
        elif not v.names:
            listing = f'<p class="muted">No {h(i.noun)}s yet.</p>'
        else:
            rows = "".join(f"<li><code>{h(n)}</code></li>" for n in v.names)
            plural = "s" if len(v.names) != 1 else ""
            listing = f'<p>{len(v.names)} {h(i.noun)}{plural}:</p><ul class="names">{rows}</ul>'
        cards.append(f"""<section class="card auth-mount" data-mount="{h(i.path)}">
<h2><code>auth/{h(i.path)}/</code> <span class="badge method">{h(i.type)}</span></h2>
<p>{h(i.description)}</p><p class="muted">accessor <code>{h(i.accessor)}</code></p>{listing}</section>""")
    body = (f'<h1>Auth methods</h1><p class="muted">Read-only: enable, disable and write roles with '
            f'<code>nebula-credential auth</code> or the API.</p><div class="cards">{"".join(cards)}</div>')
    return layout("Auth methods", body, base=base, principal=principal, csrf=csrf, nav="auth")


def password_form(base: str, mounts: list[str], error: str = "") -> str:
    """The login page's second card: username and password through a userpass mount."""
    if not mounts:
        return ""
    err = f'<p class="error" role="alert">{h(error)}</p>' if error else ""
    if len(mounts) == 1:
        choose = f'<input type="hidden" name="mount" value="{h(mounts[0])}">'
    else:
        options = "".join(f'<option value="{h(m)}">auth/{h(m)}/</option>' for m in mounts)
        choose = f'<label for="mount">Method</label><select id="mount" name="mount">{options}</select>'
    return f"""<section class="login card" id="userpass"><h2>Log in with a username</h2>{err}
<form method="post" action="{h(base)}/login/userpass" autocomplete="off">{choose}
<label for="username">Username</label>
<input id="username" name="username" type="text" required spellcheck="false" autocomplete="username">
<label for="password">Password</label>
<input id="password" name="password" type="password" required autocomplete="current-password">
<button type="submit">Log in</button></form></section>"""


def refusal(outcome: PasswordOutcome) -> str:
    """What the login page says for a refused password login (never which part was wrong)."""
    if outcome.status == 429:
        return f"Too many failed logins; try again in {outcome.retry_after or 1} s."
    if outcome.status == 403:
        return "This account may not log in from this address."
    if outcome.status >= 500:
        return "The server could not check the password; try again."
    return "Unknown username or wrong password."


__all__ = ["MOUNT", "USERNAME", "AuthConsole", "AuthMountInfo", "AuthMountView", "PasswordOutcome", "auth_page",
           "can_list_mounts", "mount_views", "password_form", "refusal"]
