"""The auth methods' items (roles, users, secret-id hashes, cubbyholes), behind the narrow :class:`AuthTables`.

One repository for AppRole, userpass, JWT and wrapping: each item is a JSON
body under (mount, kind, name).  Secrets that must be matched later (AppRole
secret ids) are stored only as HMAC-SHA256 under a root-wrapped key of their
own (:data:`~..rootwrapped.AUTH_SECRET_KEY`), as tokens are.

An item decides who may log in and with which policies, so every row carries
a MAC (:mod:`~..rowmac`) over its mount, kind, name, body and expiry; a row
that fails (edited or inserted by a database writer, or written before schema
v10) does not exist for this repository and is reported through ``on_reject``.
Use counts are bounded rather than MAC'd: see :func:`~..servertables.auth_mac_fields`.
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
from ..rowmac import RowMac
from ..servertables import AUTH_TABLE, USES_MAX, AuthTables, AuthTx, auth_mac_fields, auth_uses_ok

#: Called with (table, row key, reason) for a row refused because its MAC failed.
RejectHook = Callable[[str, str, str], None]
Signed = tuple[str, "float | None", "int | None", str]


class AuthStore:
    """Read, write, list, delete and spend the auth methods' items.

    Every method may touch the store (the hashing key is read on first use), so the server calls
    them through its backend (``backend.run``), never straight from a handler on the event loop.
    """

    def __init__(self, tables: AuthTables, provider: KeyProvider, clock: Callable[[], datetime],
                 rowmac: RowMac | None = None, on_reject: RejectHook | None = None) -> None:
        self._tables = tables
        self._provider = provider
        self._clock = clock
        self.rowmac = rowmac if rowmac is not None else RowMac(tables.transaction, provider, lock=tables.new_lock())
        self.on_reject = on_reject
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
            found = tx.auth_get_signed(mount, kind, name, now)
        body = self._verified(mount, kind, name, found)
        if body is None or found is None:
            return None
        body["_expires_at"], body["_uses_left"] = found[1], found[2]
        return body

    def _verified(self, mount: str, kind: str, name: str, found: Signed | None,
                  spent: bool = False) -> dict[str, Any] | None:
        """The decoded body of a row whose MAC and use bound hold; None (reported) otherwise."""
        if found is None:
            return None
        raw, expires_at, uses_left, mac = found
        reason = ""
        body: dict[str, Any] = {}
        if not self.rowmac.verify(AUTH_TABLE, (mount, kind, name), auth_mac_fields(mount, kind, name, raw, expires_at),
                                  mac):
            reason = "MAC mismatch" if mac else "missing MAC"
        else:
            body = dict(json.loads(raw))
            if not auth_uses_ok(body, uses_left, spent):
                reason = "uses_left beyond the item's bound"
        if reason:
            if self.on_reject is not None:
                self.on_reject(AUTH_TABLE, f"{mount} {kind} {name}", reason)
            return None
        body.pop(USES_MAX, None)
        return body

    def put(self, mount: str, kind: str, name: str, body: dict[str, Any], *, expires_at: float | None = None,
            uses_left: int | None = None) -> None:
        clean = {k: v for k, v in body.items() if not k.startswith("_")}
        if uses_left is not None:
            clean[USES_MAX] = int(uses_left)
        raw = json.dumps(clean)
        mac = self.rowmac.mac(AUTH_TABLE, (mount, kind, name), auth_mac_fields(mount, kind, name, raw, expires_at))
        self.purge_expired()
        now = self.now()
        self._tables.run(lambda tx: tx.auth_put(mount, kind, name, raw, now, expires_at=expires_at,
                                                uses_left=uses_left, mac=mac))

    def names(self, mount: str, kind: str) -> list[str]:
        """The names of the live items of a kind whose MAC verifies (a refused row is not listed)."""
        now = self.now()
        with self._tables.read() as tx:
            names = tx.auth_names(mount, kind, now)
            found = [(n, tx.auth_get_signed(mount, kind, n, now)) for n in names]
        return [n for n, row in found if self._verified(mount, kind, n, row) is not None]

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
        """Spend one use of a live item (one conditional UPDATE in one transaction); its body or None.

        A row whose MAC fails is refused after the UPDATE: the use it lost was never the writer's to
        grant, and the row stays refused whatever its count."""
        now = self.now()

        def run(tx: AuthTx) -> Signed | None:
            return tx.auth_spend_signed(mount, kind, name, now)

        return self._verified(mount, kind, name, self._tables.run(run), spent=True)
