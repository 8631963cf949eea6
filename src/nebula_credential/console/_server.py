"""The console's logins on ``nebula-credential serve`` and ``daemon --ui``: the server's tokens
and HCL policies decide, through the same :mod:`~nebula_credential.server.acl` as the HTTP API.

The server's worker opens its serving vault on the event loop; the console
works from threads, so it gets the plain vault the worker opens for
``/metrics`` and the scheduler, and reads tokens and policies through it.
"""

from __future__ import annotations

from ..config import KeyManagementConfig
from ..server.acl import access_control_for
from ..vault import Vault
from ._access import Authorizer, Principal


def server_authorizer(vault: Vault, config: KeyManagementConfig) -> Authorizer:
    """Checks a token as the HTTP API does: a live token row, then its policies' ACL."""
    access = access_control_for(vault, config)

    def authorize(token: str) -> Principal | None:
        found = access.authorize(token)
        if found is None:
            return None
        row, acl = found
        return Principal(f"{row.display_name} ({row.accessor[:8]})", lambda cap, path: acl.allows(path, cap))

    return authorize
