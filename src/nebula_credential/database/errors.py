"""The database engine's errors, each mapped by the HTTP mount to Vault's status code."""

from __future__ import annotations

from ..exceptions import NebulaCredentialError


class DatabaseInputError(NebulaCredentialError):
    """A request is malformed or refers to something that does not fit (HTTP 400)."""


class DatabaseNotFoundError(NebulaCredentialError):
    """No connection or role of that name exists in this mount (HTTP 404 on reads)."""


class DatabaseUnavailableError(NebulaCredentialError):
    """PostgreSQL could not be reached or refused the statements; the message never holds a password."""


class DatabaseConnectError(DatabaseUnavailableError):
    """No session could be opened: nothing was sent, so nothing changed in PostgreSQL."""
