"""Server-rendered pages: small string templates, every value escaped by :func:`h`.

No inline script or style anywhere (the CSP forbids both): behaviour comes from
htmx attributes and ``static/console.js``, looks from ``static/console.css``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..models import KeyStatus
from ._access import ACTIONS, Principal
from ._state import Job, KeyringView


def h(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(dt: datetime | None) -> str:
    """Date and time (HTML): a narrow table breaks the line between the two, never inside the date."""
    return f'<span class="nowrap">{dt:%Y-%m-%d}</span> <span class="nowrap">{dt:%H:%M}</span>' if dt else "—"


def _pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def layout(title: str, body: str, *, base: str, principal: Principal | None = None, csrf: str = "",
           nav: str = "") -> str:
    links = logout = ""
    if principal is not None:
        items = [("overview", f"{base}/", "Keyrings"), ("alerts", f"{base}/alerts", "Alerts"),
                 ("database", f"{base}/database", "Database")]
        if principal.can("audit"):
            items.append(("health", f"{base}/health", "Health & audit"))
        if principal.allowed("read", "sys/auth"):
            items.append(("auth", f"{base}/auth", "Auth methods"))
        links = "".join(
            f'<a href="{h(href)}"{" aria-current=page" if key == nav else ""}>{h(label)}</a>'
            for key, href, label in items
        )
        # beside the nav, not in it: on a narrow screen the nav wraps below, Log out stays on the first line
        logout = (
            f'<form method="post" action="{h(base)}/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<span class="who">{h(principal.name)}</span><button type="submit">Log out</button></form>'
        )
    htmx_config = h(json.dumps({"includeIndicatorStyles": False, "allowEval": False, "allowScriptTags": False,
                                "selfRequestsOnly": True}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="htmx-config" content="{htmx_config}">
<title>{h(title)} · nebula-credential</title>
<link rel="icon" href="{h(base)}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{h(base)}/static/uPlot.min.css">
<link rel="stylesheet" href="{h(base)}/static/console.css">
<script src="{h(base)}/static/htmx.min.js" defer></script>
<script src="{h(base)}/static/uPlot.iife.min.js" defer></script>
<script src="{h(base)}/static/console.js" defer></script>
</head><body>
<header><a class="brand" href="{h(base)}/">nebula-credential</a><nav>{links}</nav>{logout}</header>
<main>{body}</main>
</body></html>"""


def login_page(base: str, error: str = "", extra: str = "") -> str:
    err = f'<p class="error" role="alert">{h(error)}</p>' if error else ""
    body = f"""<section class="login card"><h1>Log in</h1>
<p>Paste a server token. It is kept in an HttpOnly cookie for this tab's session only.</p>{err}
<form method="post" action="{h(base)}/login" autocomplete="off">
<label for="token">Token</label>
<input id="token" name="token" type="password" required autofocus spellcheck="false" autocomplete="off">
<button type="submit">Log in</button></form></section>{extra}"""
    return layout("Log in", body, base=base)


def _status_badge(status: str) -> str:
    return f'<span class="badge s-{h(status)}">{h(status)}</span>'


def _meter(value: float, label: str, cls: str = "") -> str:
    value = max(0.0, min(1.0, value))
    return (f'<span class="meter {h(cls)}"><progress max="1000" value="{round(value * 1000)}">{h(label)}</progress>'
            f'<span class="meter-label">{h(label)}</span></span>')


def _age_meter(v: KeyringView) -> str:
    cls = "bad" if v.age_share >= 1 else "warn" if v.age_share >= 0.85 else ""
    return _meter(v.age_share, f"{v.age_days:.1f} d of {v.max_age_days:.0f} d", cls)


def overview_page(base: str, views: list[KeyringView], principal: Principal, csrf: str) -> str:
    cards = []
    for v in views:
        counts = {s: 0 for s in (s.value for s in KeyStatus)}
        for kv in v.versions:
            counts[kv.status.value] += 1
        statuses = " ".join(f"{_status_badge(s)} {n}" for s, n in counts.items() if n)
        alerts = (f'<a class="alert-count" href="{h(base)}/alerts">{len(v.alerts)} alert'
                  f'{"s" if len(v.alerts) != 1 else ""}</a>') if v.alerts else '<span class="ok">no alerts</span>'
        cards.append(f"""<article class="card keyring" data-keyring="{h(v.name)}">
<h2><a href="{h(base)}/keyrings/{h(v.name)}">{h(v.name)}</a></h2>
<dl>
<dt>Active version</dt><dd class="active-version">{"v" + h(v.active_version) if v.active_version else "none"}</dd>
<dt>Key age vs max_key_age</dt><dd>{_age_meter(v)}</dd>
<dt>Versions</dt><dd>{statuses}</dd>
<dt>Credentials</dt><dd>{v.total:,}</dd>
<dt>Re-encryption</dt><dd>{_meter(v.progress, _pct(v.progress))}</dd>
<dt>Alerts</dt><dd>{alerts}</dd>
</dl></article>""")
    body = "<h1>Keyrings</h1>" + ('<div class="cards">' + "".join(cards) + "</div>" if cards
                                   else "<p>No keyring this token may read.</p>")
    return layout("Keyrings", body, base=base, principal=principal, csrf=csrf, nav="overview")


def _alerts_list(alerts: Iterable[dict[str, str]]) -> str:
    items = "".join(
        f'<li class="alert sev-{h(a["severity"])}"><strong>{h(a["name"])}</strong> '
        f'<span class="sev">{h(a["severity"])}</span> {h(a["message"])}</li>'
        for a in alerts
    )
    return f'<ul class="alerts">{items}</ul>' if items else '<p class="ok">No alert fires.</p>'


def _action_link(base: str, keyring: str, action: str, label: str, version: int | None = None) -> str:
    query = f"?action={h(action)}" + (f"&amp;version={h(version)}" if version is not None else "")
    return f'<a class="button action-{h(action)}" href="{h(base)}/keyrings/{h(keyring)}/confirm{query}">{h(label)}</a>'


def keyring_page(base: str, v: KeyringView, principal: Principal, csrf: str, job: Job | None,
                 *, message: str = "", error: str = "") -> str:
    kr = v.name
    banner = (f'<p class="flash" role="status">{h(message)}</p>' if message else "") + (
        f'<p class="error" role="alert">{h(error)}</p>' if error else "")
    actions = []
    if principal.can("rotate", kr):
        actions.append(_action_link(base, kr, "rotate", "Rotate"))
    if principal.can("reencrypt", kr) and v.pending:
        actions.append(_action_link(base, kr, "reencrypt", "Re-encrypt now"))
    if not any(principal.can(action, kr) for action in ACTIONS):
        # said where the buttons would be, rather than an unexplained gap
        actions.append('<p class="read-only"><span class="badge">read-only</span>This token may read this keyring '
                       "but not rotate, revoke, reinstate or re-encrypt it.</p>")
    # the buttons' column only for a token that may use one
    per_version = principal.can("revoke", kr) or principal.can("reinstate", kr)
    rows = []
    for kv in v.versions:
        buttons = []
        if kv.status in (KeyStatus.VALID, KeyStatus.GRACE) and principal.can("revoke", kr):
            buttons.append(_action_link(base, kr, "revoke", f"Revoke v{kv.version}", kv.version))
        if kv.status is KeyStatus.REVOKED and principal.can("reinstate", kr):
            buttons.append(_action_link(base, kr, "reinstate", f"Reinstate v{kv.version}", kv.version))
        rows.append(
            f'<tr data-version="{kv.version}"><td>v{kv.version}</td><td>{_status_badge(kv.status.value)}</td>'
            f"<td>{_when(kv.created_at)}</td><td>{_when(kv.status_changed_at)}</td>"
            f'<td class="num">{v.credentials.get(kv.version, 0):,}</td>'
            + (f'<td class="actions">{"".join(buttons)}</td>' if per_version else "") + "</tr>"
        )
    body = f"""<h1>Keyring <span class="name">{h(kr)}</span></h1>{banner}
<div class="toolbar">{"".join(actions)}</div>
<section class="card"><h2>Alerts</h2>{_alerts_list(v.alerts)}</section>{_transit_card(v)}
<section class="card"><h2>Versions</h2>
<p>Active: {"v" + h(v.active_version) if v.active_version else "none"} · age {_age_meter(v)}</p>
<table class="versions"><thead><tr><th>version</th><th>status</th><th>created</th><th>status since</th>
<th class="num">credentials</th>{"<th></th>" if per_version else ""}</tr></thead>
<tbody>{"".join(rows)}</tbody></table></section>
<section class="card"><h2>Timeline</h2>
<div class="timeline" data-src="{h(base)}/keyrings/{h(kr)}/timeline.json"></div>
<p class="legend">{" ".join(_status_badge(s.value) for s in KeyStatus)} <span class="rotation-mark">rotation</span></p>
</section>
{progress_fragment(base, v, job)}"""
    return layout(f"Keyring {kr}", body, base=base, principal=principal, csrf=csrf)


def _transit_card(v: KeyringView) -> str:
    """A Transit key's type and its versions' public keys (nothing for an ordinary keyring)."""
    if v.transit_type is None:
        return ""
    keys = "".join(f'<dt>v{n}</dt><dd><pre class="public-key">{h(pem.strip())}</pre></dd>'
                   for n, pem in sorted(v.public_keys.items(), reverse=True))
    return (f'<section class="card transit"><h2>Transit key</h2><p>Type: <code>{h(v.transit_type)}</code></p>'
            + (f"<h3>Public keys</h3><dl>{keys}</dl>" if keys else "") + "</section>")


def progress_fragment(base: str, v: KeyringView, job: Job | None) -> str:
    """Re-encryption progress; polls itself every second while anything is pending or running."""
    running = bool(job and job.running)
    live = bool(v.pending) or running
    # While a pass runs, the poll says so: when it has finished the server answers with a
    # page refresh, so the versions table and the timeline show the outcome too.
    url = f"{base}/keyrings/{v.name}/progress" + ("?running=1" if running else "")
    poll = f' hx-get="{h(url)}" hx-trigger="every 1s" hx-swap="outerHTML"' if live else ""
    scopes = dict(v.pending_by_scope)
    if job is not None:
        for scope in job.pending_at_start:
            scopes.setdefault(scope, 0)
    rows = []
    for scope in v.scope_order(list(scopes)):  # priority order, as the engine runs it
        pending = scopes[scope]
        start = job.pending_at_start.get(scope, 0) if job else 0
        done = job.done_by_scope.get(scope, 0) if job else 0
        share = (start - pending) / start if start else (1.0 if not pending else 0.0)
        rows.append(f'<tr data-scope="{h(scope)}"><td>{h(scope)}</td><td class="num">{pending:,}</td>'
                    f'<td class="num">{done:,}</td><td>{_meter(share, _pct(share))}</td></tr>')
    rate = f"{job.rows_per_second:,.0f} rows/s" if job and job.done else "—"
    eta = _duration(job.eta_seconds(v.pending)) if job else "—"
    if job is None:
        state = "no pass started from this console" if v.pending else "every credential is under the active version"
    elif job.running:
        state = f"running, started by {job.started_by}"
    else:
        state = f"finished: {job.error or job.summary}"
    table = (f'<table class="scopes"><thead><tr><th>scope</th><th class="num">pending</th>'
             f'<th class="num">done this pass</th><th>progress</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
             if rows else "")
    return f"""<section class="card progress" id="progress"{poll}>
<h2>Re-encryption</h2>
<p class="overall">{_meter(v.progress, _pct(v.progress))}
<span class="counts">{v.total - v.pending:,} of {v.total:,} under v{h(v.active_version)}</span></p>
<p class="rate">Rate: <strong class="rows-per-second">{h(rate)}</strong> · ETA: <strong>{h(eta)}</strong>
· <span class="state">{h(state)}</span></p>
{table}</section>"""


#: Actions whose confirmation is the red button: they stop credentials from being read.
#: Rotate, reinstate and re-encrypt are routine and keep every credential readable.
DESTRUCTIVE = frozenset({"revoke"})

_CONFIRM_TEXT = {
    "rotate": "A new version becomes active and encrypts every new write; the active version {active} becomes "
              "valid and keeps decrypting until re-encryption has moved its credentials.",
    "revoke": "Credentials still under this version can no longer be read until it is reinstated. "
              "It has {refs} credential(s).",
    "reinstate": "The version becomes valid again: it decrypts, and re-encryption moves its credentials on.",
    "reencrypt": "Moves the {pending} credential(s) still under older versions to the active version {active}, "
                 "highest-priority scopes first. Applications keep working meanwhile.",
}


def confirm_page(base: str, v: KeyringView, action: str, version: int | None, principal: Principal,
                 csrf: str) -> str:
    kr = v.name
    target = f"version v{version} of keyring {kr}" if version is not None else f"keyring {kr}"
    verb = {"rotate": "Rotate", "revoke": "Revoke", "reinstate": "Reinstate", "reencrypt": "Re-encrypt"}[action]
    text = _CONFIRM_TEXT[action].format(active=f"v{v.active_version}", refs=v.credentials.get(version or 0, 0),
                                        pending=f"{v.pending:,}")
    hidden = f'<input type="hidden" name="version" value="{h(version)}">' if version is not None else ""
    style = "danger" if action in DESTRUCTIVE else "primary"
    body = f"""<section class="card confirm"><h1>{h(verb)} {h(target)}?</h1>
<p>{h(text)}</p>
<form method="post" action="{h(base)}/keyrings/{h(kr)}/actions/{h(action)}">
<input type="hidden" name="csrf" value="{h(csrf)}">{hidden}
<input type="hidden" name="confirm" value="{h(kr)}{"/v" + h(version) if version is not None else ""}">
<button type="submit" class="{style}" id="confirm">{h(verb)} {h(target)}</button>
<a class="button secondary" href="{h(base)}/keyrings/{h(kr)}">Cancel</a></form></section>"""
    return layout(f"{verb} {target}", body, base=base, principal=principal, csrf=csrf)


def alerts_page(base: str, views: list[KeyringView], principal: Principal, csrf: str) -> str:
    sections = "".join(
        f'<section class="card"><h2><a href="{h(base)}/keyrings/{h(v.name)}">{h(v.name)}</a></h2>'
        f"{_alerts_list(v.alerts)}</section>"
        for v in views
    )
    firing = sum(len(v.alerts) for v in views)
    body = f"<h1>Alerts <span class=count>{firing} firing</span></h1>{sections}"
    return layout("Alerts", body, base=base, principal=principal, csrf=csrf, nav="alerts")


def health_page(base: str, provider: dict[str, Any], chain: dict[str, Any], events: list[dict[str, Any]],
                principal: Principal, csrf: str) -> str:
    if provider["ok"]:
        prov = f'<p class="ok">{h(provider["provider"])}: wrap/unwrap round trip in {provider["ms"]:.1f} ms</p>'
    else:
        prov = f'<p class="error">{h(provider["provider"])}: {h(provider["error"])}</p>'
    if chain["ok"]:
        audit = f'<p class="ok chain-ok">Audit chain intact: {chain["events"]:,} events verified.</p>'
    else:
        audit = (f'<p class="error chain-bad">Audit chain broken at event {h(chain["first_bad_seq"])} '
                 f'({chain["events"]:,} events read). Investigate write access; '
                 "compare with a backup or SIEM copy.</p>")
    rows = "".join(
        f'<tr><td class="num">{e["seq"]}</td><td>{h(e["time"])}</td><td>{h(e["action"])}</td><td>{h(e["keyring"])}</td>'
        f'<td>{"v" + h(e["version"]) if e["version"] is not None else ""}</td><td>{h(e["outcome"])}</td>'
        f"<td>{h(e['actor'])}</td></tr>"
        for e in events
    )
    body = f"""<h1>Health &amp; audit</h1>
<section class="card"><h2>Provider</h2>{prov}</section>
<section class="card"><h2>Audit chain</h2>{audit}
<h3>Last {len(events)} events</h3>
<table class="events"><thead><tr><th class="num">seq</th><th>time (UTC)</th><th>action</th><th>keyring</th>
<th>version</th><th>outcome</th><th>actor</th></tr></thead><tbody>{rows}</tbody></table></section>"""
    return layout("Health & audit", body, base=base, principal=principal, csrf=csrf, nav="health")


def error_page(base: str, status: int, message: str, principal: Principal | None = None, csrf: str = "") -> str:
    body = f'<section class="card"><h1>{status}</h1><p class="error">{h(message)}</p></section>'
    return layout(str(status), body, base=base, principal=principal, csrf=csrf)
