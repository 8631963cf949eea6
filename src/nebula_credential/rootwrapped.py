"""Secrets kept in the store's meta table wrapped by the root key: the registry root rotation walks.

Besides the DEKs (rewrapped per keyring) and the audit key (the audit log's
own), a store may hold other small secrets wrapped by the root key -- the
HTTP server's token-hashing key is one.  Each is a generic row: a meta name
holding the hex of a wrapped 32-byte key under a fixed :class:`WrapContext`,
so rewrapping it needs no code of the feature that uses it.

``provider rotate`` (:mod:`.rootkeys`) runs from the CLI without importing the
server, so an entry must be registered by a module the rotation imports:
that is this module, which declares the entries of the features shipped
with the package.  A plug-in registers its own with :func:`register` before
rotating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ._secret import SecretBytes
from .providers.base import KeyProvider, WrapContext

#: Re-exported: the type of what wraps these secrets, for their users above the facade.
__all__ = ["AUTH_SECRET_KEY", "ROW_MAC_KEY", "SERVER_TOKEN_KEY", "KeyProvider", "MetaTx", "RootWrapped", "register",
           "registered", "rewrap_all"]


class MetaTx(Protocol):
    """What a root-wrapped secret needs of a store transaction."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...

    def lock_keyring(self, keyring: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RootWrapped:
    """One root-wrapped secret: where it is stored and the context it is wrapped under."""

    meta_key: str
    context: WrapContext
    #: A lock name no keyring can have (names come from the safe set), held while the key is created.
    lock: str

    def ensure(self, tx: MetaTx, provider: KeyProvider) -> bytes:
        """The wrapped secret, created on first use.

        Several processes may start on a new store at once: the first creator
        holds a lock until it commits, so the others read its secret instead
        of each writing their own (which would orphan whatever was derived
        from the overwritten one).
        """
        raw = tx.get_meta(self.meta_key)
        if raw is None:
            tx.lock_keyring(self.lock)  # PostgreSQL advisory lock; SQLite's write lock already serialises
            raw = tx.get_meta(self.meta_key)
        if raw is None:
            with SecretBytes.random(32) as key:
                wrapped = provider.wrap(key, self.context)
            tx.set_meta(self.meta_key, wrapped.hex())
            return wrapped
        return bytes.fromhex(raw)

    def rewrap(self, tx: MetaTx, provider: KeyProvider) -> bool:
        """Rewrap under the provider's current root; False when the secret was never created."""
        raw = tx.get_meta(self.meta_key)
        if raw is None:
            return False
        tx.set_meta(self.meta_key, provider.rewrap(bytes.fromhex(raw), self.context).hex())
        return True


_REGISTRY: dict[str, RootWrapped] = {}


def register(secret: RootWrapped) -> RootWrapped:
    """Add ``secret`` to what root rotation rewraps (idempotent per meta name)."""
    known = _REGISTRY.setdefault(secret.meta_key, secret)
    if known != secret:
        raise ValueError(f"root-wrapped secret {secret.meta_key!r} is already registered differently")
    return known


def registered() -> tuple[RootWrapped, ...]:
    return tuple(_REGISTRY.values())


def rewrap_all(tx: MetaTx, provider: KeyProvider) -> list[str]:
    """Rewrap every registered secret present in the store; returns the meta names rewrapped."""
    return [s.meta_key for s in registered() if s.rewrap(tx, provider)]


#: The HTTP server's token-hashing key (see ``server/tokens.py``).
SERVER_TOKEN_KEY = register(RootWrapped("server_token_key", WrapContext("__server__", 1, "server-tokens"),
                                        lock="(server key)"))

#: The key of the MACs on the rows that grant access (tokens, policies, token roles; see ``rowmac.py``).
ROW_MAC_KEY = register(RootWrapped("row_mac_key", WrapContext("__server__", 1, "row-mac"), lock="(row mac key)"))

#: The auth methods' secret-hashing key (AppRole secret ids, wrapping tokens' items; see ``server/authstore.py``).
AUTH_SECRET_KEY = register(RootWrapped("auth_secret_key", WrapContext("__server__", 1, "auth-secrets"),
                                       lock="(auth key)"))
