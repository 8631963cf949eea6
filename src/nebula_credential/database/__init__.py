"""The database secrets engine (PostgreSQL), in the shape of Vault's ``database/`` engine.

One job per module: ``engine`` (:class:`DatabaseEngine`, the facade of a
mount), ``connections`` (connections and the root credential's rotation),
``static`` (static roles: plain and alternating two-phase rotation),
``dynamic`` (dynamic roles: users created on demand under a lease),
``schedule`` (when a static role is due), ``plugin`` (PostgreSQL sessions
over psycopg 3), ``templates`` (statement templates rendered without pasting
values), ``passwords`` (generated passwords and user names), ``items``
(MAC'd rows), ``secrets_store`` (passwords as envelopes of the mount's
keyring), ``fields`` (request fields), ``scheduler`` (``maintain``'s hook)
and ``errors``.
"""

from __future__ import annotations

from .engine import DEFAULT_MOUNT, DatabaseEngine, DatabaseLeaseHandler, default_keyring, lease_handlers
from .errors import DatabaseConnectError, DatabaseInputError, DatabaseNotFoundError, DatabaseUnavailableError
from .plugin import PLUGIN_NAME
from .static import RotationResult

__all__ = [
    "DEFAULT_MOUNT",
    "PLUGIN_NAME",
    "DatabaseConnectError",
    "DatabaseEngine",
    "DatabaseInputError",
    "DatabaseLeaseHandler",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "RotationResult",
    "default_keyring",
    "lease_handlers",
]
