"""The engine's passwords as credentials of the mount's keyring: envelopes like every other credential.

Root passwords are ``config/<connection>``, static roles' passwords
``static/<role>/<user>``; each value is ``{"password": ..., "gen": ...}`` and,
between the two phases of a rotation, ``"pending"`` and ``"pending_gen"``:
the new password is stored (encrypted) before PostgreSQL is changed, so the
store always knows every password PostgreSQL may hold.  Being credentials,
they are re-encrypted on key rotation, kept by retention, in backups, and
their writes are in the audit chain, with no second encryption path.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ..exceptions import CredentialNotFoundError
from ..history import KVSettings

if TYPE_CHECKING:
    from ..vault import Vault


class Secrets:
    """Read and write the engine's password records in one keyring."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def get(self, credential_id: str) -> dict[str, Any] | None:
        try:
            value = self.vault.get(credential_id)
        except CredentialNotFoundError:
            return None
        return dict(value) if isinstance(value, dict) else None

    def put(self, credential_id: str, value: dict[str, Any]) -> None:
        """Write the record; the credential keeps one version, so a replaced password is not kept in history."""
        if self.vault.head(credential_id) is None:
            self.vault.set_settings(credential_id, KVSettings(max_versions=1))
        self.vault.put(credential_id, value)

    def delete(self, credential_id: str) -> None:
        with suppress(CredentialNotFoundError):
            self.vault.delete(credential_id)

    def __repr__(self) -> str:
        return f"<Secrets keyring={self.vault.keyring_name!r}>"
