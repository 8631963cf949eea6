"""The Transit-specific errors; everything else is the package's own exception tree."""

from __future__ import annotations

from ..exceptions import KeyNotFoundError, NebulaCredentialError, PolicyViolationError


class TransitInputError(NebulaCredentialError):
    """A Transit request is malformed or asks for something unsupported (HTTP 400)."""


class TransitKeyNotFoundError(KeyNotFoundError):
    """No Transit key of that name exists in this mount (HTTP 404 on key paths)."""


class ReinstateRefusedError(PolicyViolationError):
    """A config change would bring a revoked version back without the reinstate capability (HTTP 403)."""
