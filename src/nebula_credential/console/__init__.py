"""The operator console: server-rendered pages at ``/ui`` over the store.

Keyrings with their versions and key age, a timeline per keyring,
re-encryption progress live, alerts, provider health and the audit chain;
rotate, revoke, reinstate and re-encrypt behind a confirmation.  htmx and uPlot
are vendored from the npm registry into ``static/`` (``make vendor-ui``); no
CDN, no external font, works offline.  Needs the ``server`` extra (Starlette).
"""

from __future__ import annotations

from ._access import NEEDS, SESSION_TTL, TRANSIT_NEEDS, Authorizer, Principal, Sessions
from ._auth import AuthConsole, AuthMountInfo, PasswordOutcome
from .app import create_console, host_allowed

__all__ = ["NEEDS", "SESSION_TTL", "TRANSIT_NEEDS", "AuthConsole", "AuthMountInfo", "Authorizer", "PasswordOutcome",
           "Principal", "Sessions", "create_console", "host_allowed"]
