"""Server tokens with Vault's semantics, stored only as keyed hashes.

A token is ``ncs.`` followed by 32 random bytes (URL-safe base64): the
prefix makes a leaked token recognisable to secret scanners.  The store
keeps HMAC-SHA256(server key, token); the server key is 32 random bytes
wrapped by the provider like the audit key, so a database reader cannot
test guesses offline or turn a stored row back into a token.  The
*accessor* (random, unrelated to the token) names a token in lists, audit
events and revocations.

Several server processes share one store.  A process trusts a token it
looked up for at most ``cache_ttl`` (default 2 s): that is the bound on how
long a token revoked through another instance keeps working here.  Expiry
itself is checked on every use against the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from .._secret import SecretBytes
from ..exceptions import NebulaCredentialError
from ..models import to_epoch, utc_now
from ..rootwrapped import SERVER_TOKEN_KEY, KeyProvider, MetaTx
from ..servertables import ServerTables, ServerTx, TokenRow
from .policies import ROOT_POLICY, check_name

TOKEN_PREFIX = "ncs."  # noqa: S105 - a prefix, not a secret
SERVER_KEY_META = SERVER_TOKEN_KEY.meta_key
SERVER_KEY_CONTEXT = SERVER_TOKEN_KEY.context
_CACHE_MAX = 10_000


class TokenError(NebulaCredentialError):
    """A token request that is not allowed or not well-formed (HTTP 400)."""


def ensure_server_key(tx: MetaTx, provider: KeyProvider) -> bytes:
    """The wrapped server key, created on first use (see :meth:`RootWrapped.ensure`)."""
    return SERVER_TOKEN_KEY.ensure(tx, provider)


def rewrap_server_key(tx: MetaTx, provider: KeyProvider) -> None:
    """Rewrap the server key under the current root (``provider rotate`` does it through
    :mod:`~nebula_credential.rootwrapped`, without importing the server)."""
    SERVER_TOKEN_KEY.rewrap(tx, provider)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX) and 40 <= len(value) <= 64


class TokenManager:
    """Create, look up, renew and revoke tokens in the server's tables."""

    def __init__(
        self,
        tables: ServerTables,
        provider: KeyProvider,
        *,
        clock: Callable[[], datetime] = utc_now,
        default_ttl: timedelta = timedelta(hours=768),
        max_ttl: timedelta = timedelta(hours=768),
        cache_ttl: timedelta = timedelta(seconds=2),
    ) -> None:
        self._tables = tables
        self.provider = provider
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.cache_ttl = cache_ttl.total_seconds()
        self._key: SecretBytes | None = None
        # the store's lock, not threading.Lock: under the asyncio server every request is a
        # greenlet on the loop's one thread, and one holding a thread lock while it awaited
        # the database blocked the next request's greenlet, and with it the loop (four
        # concurrent first requests hung `serve` on PostgreSQL)
        self._key_lock = tables.new_lock()
        self._cache: dict[str, tuple[float, TokenRow | None]] = {}
        self._cache_lock = threading.Lock()

    # ---- hashing -------------------------------------------------------------
    def _hash_key(self) -> bytearray:
        with self._key_lock:
            if self._key is None:
                with self._tables.transaction() as tx:
                    wrapped = ensure_server_key(tx, self.provider)
                self._key = self.provider.unwrap(wrapped, SERVER_KEY_CONTEXT)
            return self._key.buffer

    def hash(self, token: str) -> str:
        return hmac.new(bytes(self._hash_key()), token.encode("utf-8"), hashlib.sha256).hexdigest()

    def _now(self) -> float:
        ts = to_epoch(self.clock())
        assert ts is not None
        return ts

    # ---- create --------------------------------------------------------------
    def create(
        self,
        policies: list[str],
        *,
        ttl: timedelta | None = None,
        explicit_max_ttl: timedelta | None = None,
        parent: TokenRow | None = None,
        display_name: str = "token",
        meta: dict[str, str] | None = None,
        renewable: bool = True,
        token: str | None = None,
    ) -> tuple[str, TokenRow]:
        """A new token and its row; the token itself is returned here once and never stored.

        A child of a non-root token gets a subset of its parent's policies and
        never outlives it (Vault's rules).  ``token`` fixes the token itself (``serve --dev
        --dev-root-token-id``); it must look like one of ours.
        """
        if token is not None and not looks_like_token(token):
            raise TokenError(f"a token must start with {TOKEN_PREFIX} and be 40-64 characters long")
        names = sorted({check_name(p) for p in policies if p != "default"})
        if not names:
            raise TokenError("a token needs at least one policy")
        if parent is not None and ROOT_POLICY not in parent.policies:
            missing = [p for p in names if p not in parent.policies]
            if missing:
                raise TokenError(f"child token policies must be a subset of the parent's; not held: {missing[0]}")
        now = self._now()
        max_ttl = min(explicit_max_ttl or self.max_ttl, self.max_ttl)
        ttl = ttl or self.default_ttl
        if ttl <= timedelta(0) or max_ttl <= timedelta(0):
            raise TokenError("ttl must be positive")
        ttl = min(ttl, max_ttl)
        max_expires = now + max_ttl.total_seconds()
        if parent is not None and parent.max_expires_at is not None:
            max_expires = min(max_expires, parent.max_expires_at)
        expires = min(now + ttl.total_seconds(), max_expires)
        token = token or TOKEN_PREFIX + _b64(secrets.token_bytes(32))
        row = TokenRow(
            accessor=_b64(secrets.token_bytes(18)),
            token_hash=self.hash(token),
            parent=parent.accessor if parent is not None else None,
            policies=tuple(names),
            display_name=display_name[:128],
            meta={str(k)[:128]: str(v)[:512] for k, v in (meta or {}).items()},
            created_at=now,
            expires_at=expires,
            max_expires_at=max_expires,
            ttl=ttl.total_seconds(),
            renewable=renewable,
        )
        self._tables.run(lambda tx: tx.token_insert(row))
        return token, row

    # ---- lookup --------------------------------------------------------------
    def cached(self, token: str) -> tuple[bool, TokenRow | None]:
        """(True, live row or None) when the answer is known without the store, else (False, None).

        Lets the async server answer from memory without a thread hop.
        """
        if not looks_like_token(token):
            return True, None
        if self._key is None:
            return False, None
        hit = self._cache_hit(self.hash(token))
        if hit is None:
            return False, None
        row = hit[1]
        return True, row if row is not None and self.live(row) else None

    def _cache_hit(self, digest: str) -> tuple[float, TokenRow | None] | None:
        with self._cache_lock:
            hit = self._cache.get(digest)
        return hit if hit is not None and time.monotonic() - hit[0] < self.cache_ttl else None

    def lookup(self, token: str) -> TokenRow | None:
        """The live row of a token (None: unknown, revoked or expired)."""
        if not looks_like_token(token):
            return None
        digest = self.hash(token)
        mono = time.monotonic()
        hit = self._cache_hit(digest)
        if hit is not None:
            row = hit[1]
        else:
            with self._tables.read() as tx:
                row = tx.token_by_hash(digest)
            with self._cache_lock:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (mono, row)
        return row if row is not None and self.live(row) else None

    def live(self, row: TokenRow) -> bool:
        return row.expires_at is None or row.expires_at > self._now()

    def by_accessor(self, accessor: str) -> TokenRow | None:
        with self._tables.read() as tx:
            row = tx.token_by_accessor(accessor)
        return row if row is not None and self.live(row) else None

    def list(self) -> list[TokenRow]:
        with self._tables.read() as tx:
            return [r for r in tx.token_list() if self.live(r)]

    # ---- renew / revoke --------------------------------------------------------
    def renew(self, row: TokenRow, increment: timedelta | None = None) -> TokenRow:
        if not row.renewable:
            raise TokenError("token is not renewable")
        now = self._now()
        expires = now + (increment.total_seconds() if increment else row.ttl)
        if row.max_expires_at is not None:
            expires = min(expires, row.max_expires_at)
        self._tables.run(lambda tx: tx.token_set_expiry(row.accessor, expires))
        self._forget(row.token_hash)
        return replace(row, expires_at=expires)

    def revoke(self, accessor: str) -> int:
        """Revoke a token and every token created under it; returns how many."""

        def run(tx: ServerTx) -> list[str]:
            doomed: list[str] = []
            todo = [accessor]
            while todo:
                current = todo.pop()
                doomed.append(current)
                todo.extend(tx.token_children(current))
            tx.token_delete(doomed)
            return doomed

        row = self.by_accessor(accessor)
        doomed = self._tables.run(run)
        if row is not None:
            self._forget(row.token_hash)
        with self._cache_lock:  # children's hashes are unknown here: drop the whole local cache
            self._cache.clear()
        return len(doomed) if row is not None else 0

    def _forget(self, digest: str) -> None:
        with self._cache_lock:
            self._cache.pop(digest, None)


def token_json(row: TokenRow, now: float, token: str = "") -> dict[str, Any]:
    """Vault's ``lookup`` data shape (``id`` only for lookup-self, from the request)."""

    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat()

    return {
        "accessor": row.accessor,
        "creation_time": int(row.created_at),
        "creation_ttl": int(row.ttl),
        "display_name": row.display_name,
        "entity_id": "",
        "expire_time": iso(row.expires_at),
        "explicit_max_ttl": 0 if row.max_expires_at is None else int(row.max_expires_at - row.created_at),
        "id": token,
        "issue_time": iso(row.created_at),
        "meta": row.meta or None,
        "num_uses": 0,
        "orphan": row.parent is None,
        "path": "auth/token/create",
        "policies": list(row.policies),
        "renewable": row.renewable,
        "ttl": 0 if row.expires_at is None else max(0, int(row.expires_at - now)),
        "type": "service",
    }


def row_summary(row: TokenRow) -> dict[str, Any]:
    """What ``token list`` shows: never the token, never its hash."""
    return {
        "accessor": row.accessor,
        "policies": list(row.policies),
        "display_name": row.display_name,
        "parent": row.parent,
        "created_at": datetime.fromtimestamp(row.created_at).astimezone().isoformat(),
        "expires_at": None if row.expires_at is None
        else datetime.fromtimestamp(row.expires_at).astimezone().isoformat(),
    }
