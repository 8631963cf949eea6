"""The console's database page: every static role with its last and next rotation, read-only.

One table per ``database`` mount (read from the shared mount table), one row
per static role the logged-in token may read (``read`` on
``<mount>/static-roles/<name>``, the policy path of the role's definition),
and for an alternating role each credential's timeline -- current, grace,
retired -- as the keyring page shows key versions.  Nothing here reads or
shows a password: the engine's overview and timeline hold none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..database import DatabaseEngine
from ..database.scheduler import mounts_of
from ..vault import Vault
from ._access import Principal, csrf_token
from ._html import h, layout

Handler = Callable[[Request, str, Principal], Awaitable[Response]]
#: Timeline states in the order a credential goes through them.
STATES = ("current", "grace", "retired")


def database_mounts(vault: Vault) -> list[str]:
    """The paths of the store's enabled ``database`` mounts that hold anything: in the shared mount table
    and registered by the engine (a MAC'd row, so a row written into the database by hand shows nothing)."""
    with vault.mount_tables().read() as tx:
        rows = tx.mount_list()
    enabled = {r.path for r in rows if r.kind == "secret" and r.type == "database"}
    return sorted(m for m, _ in mounts_of(vault) if m in enabled)


def database_state(vault: Vault, principal: Principal) -> list[dict[str, Any]]:
    """Per mount: the static roles this principal may read, each with its timeline when alternating."""
    out = []
    for mount in database_mounts(vault):
        engine = DatabaseEngine(vault, mount=mount)
        roles = []
        for role in engine.overview():
            name = str(role.get("name", ""))
            if not principal.allowed("read", f"{mount}/static-roles/{name}"):
                continue
            timeline = engine.static_timeline(name) if role.get("strategy") == "alternating" else []
            roles.append({**role, "timeline": timeline})
        out.append({"mount": mount, "roles": roles})
    return out


def _when(value: Any) -> str:
    """An RFC 3339 string, an epoch number or a datetime, shown as UTC minutes; a dash for none."""
    if value in (None, "", 0):
        return "—"
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = str(value)
    return text[:16].replace("T", " ") + " UTC" if len(text) >= 16 and text[10:11] == "T" else text


def _users(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value or "")


def _timeline(items: list[dict[str, Any]]) -> str:
    if not items:
        return ""
    rows = "".join(
        f'<tr class="t-{h(i.get("state"))}"><td>{h(i.get("username"))}</td>'
        f'<td><span class="badge s-{h(i.get("state"))}">{h(i.get("state"))}</span></td>'
        f'<td>{h(_when(i.get("since")))}</td><td>{h(_when(i.get("until")))}</td></tr>'
        for i in items
    )
    return ('<table class="timeline-table"><thead><tr><th>User</th><th>State</th><th>Since</th><th>Until</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def database_page(base: str, mounts: list[dict[str, Any]], principal: Principal, csrf: str) -> str:
    sections = []
    for m in mounts:
        rows = []
        for r in m["roles"]:
            rows.append(
                f'<tr data-role="{h(r.get("name"))}"><td>{h(r.get("name"))}</td><td>{h(r.get("db_name"))}</td>'
                f'<td>{h(_users(r.get("usernames")))}</td><td>{h(r.get("strategy"))}</td>'
                f'<td class="last">{h(_when(r.get("last_rotation")))}</td>'
                f'<td class="next">{h(_when(r.get("next_rotation")))}</td><td>{h(r.get("state"))}</td></tr>'
                + (f'<tr class="timeline-row"><td colspan="7">{_timeline(r["timeline"])}</td></tr>'
                   if r.get("timeline") else ""))
        table = ('<table class="roles"><thead><tr><th>Static role</th><th>Connection</th><th>Users</th>'
                 '<th>Strategy</th><th>Last rotation</th><th>Next rotation</th><th>State</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>') if rows else "<p>No static role this token may read.</p>"
        sections.append(f'<section class="card database" data-mount="{h(m["mount"])}"><h2>{h(m["mount"])}/</h2>'
                        f"{table}</section>")
    body = "<h1>Database roles</h1>" + ("".join(sections) if sections else "<p>No database mount.</p>")
    return layout("Database roles", body, base=base, principal=principal, csrf=csrf, nav="database")


def database_handler(vault: Vault) -> Handler:
    """The ``/database`` page handler (wrapped by the console's session check)."""

    async def handler(request: Request, token: str, principal: Principal) -> Response:
        mounts = await run_in_threadpool(database_state, vault, principal)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return HTMLResponse(database_page(base, mounts, principal, csrf_token(token)))

    return handler


__all__ = ["database_handler", "database_mounts", "database_page", "database_state"]
