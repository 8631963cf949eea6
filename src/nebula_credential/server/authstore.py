"""The auth methods' items (roles, users, secret-id hashes, cubbyholes), behind the narrow :class:`AuthTables`.

One repository for AppRole, userpass, JWT and wrapping: each item is a JSON
body under (mount, kind, name).  Secrets that must be matched later (AppRole
secret ids) are stored only as HMAC-SHA256 under a root-wrapped key of their
own (:data:`~..rootwrapped.AUTH_SECRET_KEY`), as tokens are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._secret import SecretBytes
from ..models import to_epoch
from ..rootwrapped import AUTH_SECRET_KEY, KeyProvider
from ..servertables import AuthTables, AuthTx


class AuthStore:
    """Read, write, list, delete and spend the auth methods' items.

    Every method may touch the store (the hashing key is read on first use), so the server calls
    them through its backend (``backend.run``), never straight from a handler on the event loop.
    """

    def __init__(self, tables: AuthTables, provider: KeyProvider, clock: Callable[[], datetime]) -> None:
        self._tables = tables
        self._provider = provider
        self._clock = clock
        self._key: SecretBytes | None = None
        self._key_lock = tables.new_lock()
        self._purged = 0.0

    def now(self) -> float:
        ts = to_epoch(self._clock())
        assert ts is not None
        return ts

    def _root(self) -> bytes:
        with self._key_lock:
            if self._key is None:
                with self._tables.transaction() as tx:
                    wrapped = AUTH_SECRET_KEY.ensure(tx, self._provider)
                self._key = self._provider.unwrap(wrapped, AUTH_SECRET_KEY.context)
            return bytes(self._key.buffer)

    def hash(self, secret: str) -> str:
        """The keyed hash a secret is stored and looked up by (never the secret itself)."""
        return hmac.new(self._root(), b"hash\0" + secret.encode("utf-8"), hashlib.sha256).hexdigest()

    def _aead(self) -> AESGCM:
        return AESGCM(hmac.new(self._root(), b"cubbyhole-seal", hashlib.sha256).digest())

    def put_sealed(self, mount: str, kind: str, name: str, value: Any, *, expires_at: float | None = None,
                   uses_left: int | None = None) -> None:
        """Keep ``value`` encrypted (AES-256-GCM, bound to its mount, kind and name): cubbyholes and
        wrapped responses hold secrets, which the table never sees in the clear."""
        nonce = os.urandom(12)
        sealed = self._aead().encrypt(nonce, json.dumps(value).encode(), f"{mount}\0{kind}\0{name}".encode())
        self.put(mount, kind, name, {"sealed": (nonce + sealed).hex()}, expires_at=expires_at, uses_left=uses_left)

    def open_sealed(self, mount: str, kind: str, name: str, body: dict[str, Any] | None) -> Any:
        if body is None:
            return None
        raw = bytes.fromhex(str(body["sealed"]))
        plain = self._aead().decrypt(raw[:12], raw[12:], f"{mount}\0{kind}\0{name}".encode())
        return json.loads(plain)

    def get(self, mount: str, kind: str, name: str) -> dict[str, Any] | None:
        """A live item's body with ``_expires_at`` and ``_uses_left`` added (None: absent or expired)."""
        now = self.now()
        with self._tables.read() as tx:
            found = tx.auth_get(mount, kind, name, now)
        if found is None:
            return None
        body: dict[str, Any] = json.loads(found[0])
        body["_expires_at"], body["_uses_left"] = found[1], found[2]
        return body

    def put(self, mount: str, kind: str, name: str, body: dict[str, Any], *, expires_at: float | None = None,
            uses_left: int | None = None) -> None:
        clean = {k: v for k, v in body.items() if not k.startswith("_")}
        self.purge_expired()
        now = self.now()
        self._tables.run(lambda tx: tx.auth_put(mount, kind, name, json.dumps(clean), now, expires_at=expires_at,
                                                uses_left=uses_left))

    def names(self, mount: str, kind: str) -> list[str]:
        now = self.now()
        with self._tables.read() as tx:
            return tx.auth_names(mount, kind, now)

    def delete(self, mount: str, kind: str, name: str) -> bool:
        return self._tables.run(lambda tx: tx.auth_delete(mount, kind, name))

    def delete_kind(self, mount: str, kind: str) -> int:
        return self._tables.run(lambda tx: tx.auth_delete_kind(mount, kind))

    def delete_mount(self, mount: str) -> int:
        """Every role, user, secret id and setting of a disabled auth mount."""
        return self._tables.run(lambda tx: tx.auth_delete_mount(mount))

    def purge_expired(self, every: float = 60.0) -> int:
        """Delete expired items and the cubbyholes and wrapped answers of tokens no longer stored, at
        most once per ``every`` seconds per process (called on every write of an item)."""
        mono = time.monotonic()
        if mono - self._purged < every:
            return 0
        self._purged = mono
        now = self.now()
        return self._tables.run(lambda tx: tx.auth_purge_expired(now))

    def spend(self, mount: str, kind: str, name: str) -> dict[str, Any] | None:
        """Spend one use of a live item (one conditional UPDATE in one transaction); its body or None."""
        now = self.now()

        def run(tx: AuthTx) -> str | None:
            return tx.auth_spend(mount, kind, name, now)

        raw = self._tables.run(run)
        return None if raw is None else dict(json.loads(raw))
