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
import hmac
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from .._net import address_in
from .._secret import SecretBytes
from ..exceptions import NebulaCredentialError
from ..models import to_epoch, utc_now
from ..rootwrapped import SERVER_TOKEN_KEY, KeyProvider, MetaTx
from ..rowmac import RowMac
from ..servertables import TOKEN_TABLE, ServerTables, ServerTx, TokenRow, token_mac_fields
from .policies import DEFAULT_POLICY, ROOT_POLICY, check_name

logger = logging.getLogger("nebula_credential.server")
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


_ACCESSOR_ALPHABET = string.ascii_letters + string.digits
ACCESSOR_LENGTH = 24


def new_accessor() -> str:
    """24 letters and digits (~143 random bits), as Vault's accessors look: never starting with
    ``-``, which the ``vault``/``bao`` CLI would read as a flag (``bao token lookup -accessor X``)."""
    return "".join(secrets.choice(_ACCESSOR_ALPHABET) for _ in range(ACCESSOR_LENGTH))


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX) and 40 <= len(value) <= 64


TABLE = TOKEN_TABLE
#: Called with (table, primary key, reason) for every row refused.
RejectHook = Callable[[str, str, str], None]
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float  # monotonic time read
    row: TokenRow | None
    #: The earliest expiry along the token's chain of parents (None: no ancestor expires).
    chain_expires: float | None


class TokenManager:
    """Create, look up, renew and revoke tokens in the server's tables."""

    def __init__(
        self,
        tables: ServerTables,
        provider: KeyProvider,
        *,
        rowmac: RowMac | None = None,
        clock: Callable[[], datetime] = utc_now,
        default_ttl: timedelta = timedelta(hours=768),
        max_ttl: timedelta = timedelta(hours=768),
        cache_ttl: timedelta = timedelta(seconds=2),
        on_reject: RejectHook | None = None,
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
        self.rowmac = rowmac if rowmac is not None else RowMac(tables.transaction, provider, lock=tables.new_lock())
        self.on_reject = on_reject
        self._cache: dict[str, _Entry] = {}
        self._cache_lock = threading.Lock()
        #: Called with the accessors of the tokens just revoked (after the commit): the server revokes
        #: their leases here.  A hook never undoes or fails the revocation (see :meth:`_revoked`).
        self.on_revoke: list[Callable[[Sequence[str]], None]] = []

    # ---- hashing and MACs --------------------------------------------------------
    def _hash_key(self) -> bytearray:
        key = self._key
        if key is not None:  # set once, never unset: no lock on every request's hash
            return key.buffer
        with self._key_lock:
            if self._key is None:
                with self._tables.transaction() as tx:
                    wrapped = ensure_server_key(tx, self.provider)
                self._key = self.provider.unwrap(wrapped, SERVER_KEY_CONTEXT)
            return self._key.buffer

    def hash(self, token: str) -> str:
        # the one-shot HMAC: 2.4 us against 3.9 for an hmac.HMAC object and a copy of the key
        return hmac.digest(self._hash_key(), token.encode("utf-8"), "sha256").hex()

    def _now(self) -> float:
        ts = to_epoch(self.clock())
        assert ts is not None
        return ts

    def sign(self, row: TokenRow) -> TokenRow:
        """``row`` with its MAC (every write of a token row goes through here)."""
        return replace(row, mac=self.rowmac.mac(TABLE, (row.accessor,), token_mac_fields(row)))

    def authentic(self, row: TokenRow, *, report: bool = True) -> bool:
        """True when the row's MAC verifies; a failure is reported through ``on_reject``."""
        if self.rowmac.verify(TABLE, (row.accessor,), token_mac_fields(row), row.mac):
            return True
        if report and self.on_reject is not None:
            self.on_reject(TABLE, row.accessor, "missing MAC" if not row.mac else "MAC mismatch")
        return False

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
        num_uses: int = 0,
        period: timedelta | None = None,
        no_default_policy: bool = False,
        token_type: str = "service",  # noqa: S107 - a token kind
        role: str = "",
        path: str = "auth/token/create",
        check_subset: bool = True,
        token: str | None = None,
        bound_cidrs: Sequence[str] | None = None,
    ) -> tuple[str, TokenRow]:
        """A new token and its row; the token itself is returned here once and never stored.

        ``parent`` is the creating token (None: an orphan).  A child of a
        non-root token gets a subset of its parent's policies (unless a role
        allows otherwise, ``check_subset=False``); it may outlive its parent
        on paper, as in Vault, but dies with it: a token whose parent chain
        holds an expired or revoked token is refused at lookup.  ``token`` fixes the token
        itself (``serve --dev --dev-root-token-id``); it must look like one of ours.
        ``bound_cidrs`` limits where the token may be used from (None: a child keeps its
        parent's, as OpenBao copies them, so a bound token cannot mint an unbound one).
        """
        if token is not None and not looks_like_token(token):
            raise TokenError(f"a token must start with {TOKEN_PREFIX} and be 40-64 characters long")
        if token_type != "service":  # noqa: S105
            raise TokenError("only service tokens are supported here (type=batch is refused)")
        if num_uses < 0:
            raise TokenError("number of uses cannot be negative")
        names = sorted({check_name(p) for p in policies})
        if not names:
            raise TokenError("a token needs at least one policy")
        if parent is not None and check_subset and ROOT_POLICY not in parent.policies:
            missing = [p for p in names if p not in parent.policies and p != DEFAULT_POLICY]
            if missing:
                raise TokenError("child policies must be subset of parent")
        if not no_default_policy and ROOT_POLICY not in names and DEFAULT_POLICY not in names:
            names.append(DEFAULT_POLICY)
        elif no_default_policy:
            names = [p for p in names if p != DEFAULT_POLICY]
        names.sort()
        if not names:
            raise TokenError("token must have at least one policy")
        now = self._now()
        emt = explicit_max_ttl.total_seconds() if explicit_max_ttl else None
        if period is not None and period > timedelta(0):
            granted = period.total_seconds()
            max_expires = now + emt if emt else None
        else:
            granted = (ttl or self.default_ttl).total_seconds()
            max_expires = now + min(emt or self.max_ttl.total_seconds(), self.max_ttl.total_seconds())
        if granted <= 0:
            raise TokenError("ttl must be positive")
        expires = now + granted if max_expires is None else min(now + granted, max_expires)
        if bound_cidrs is None:
            bound_cidrs = parent.bound_cidrs if parent is not None else ()
        token = token or TOKEN_PREFIX + _b64(secrets.token_bytes(32))
        row = self.sign(TokenRow(
            accessor=new_accessor(),
            token_hash=self.hash(token),
            parent=parent.accessor if parent is not None else None,
            policies=tuple(names),
            display_name=display_name[:128],
            meta={str(k)[:128]: str(v)[:512] for k, v in (meta or {}).items()},
            created_at=now,
            expires_at=expires,
            max_expires_at=max_expires,
            ttl=expires - now,
            renewable=renewable,
            num_uses=num_uses,
            period=period.total_seconds() if period else None,
            explicit_max_ttl=emt,
            token_type=token_type,
            role=role,
            path=path,
            bound_cidrs=tuple(bound_cidrs),
        ))
        self._tables.run(lambda tx: tx.token_insert(row))
        return token, row

    # ---- lookup --------------------------------------------------------------
    def cached(self, token: str) -> tuple[bool, TokenRow | None]:
        """(True, live row or None) when the answer is known without the store, else (False, None).

        Lets the async server answer from memory without a thread hop.  A
        token with a use limit is never answered from here: every use is
        counted in the store.
        """
        if not looks_like_token(token):
            return True, None
        if self._key is None:
            return False, None
        hit = self._cache_hit(self.hash(token))
        if hit is None or (hit.row is not None and (hit.row.num_uses > 0 or not self._entry_live(hit))):
            return False, None
        return True, hit.row

    def _cache_hit(self, digest: str) -> _Entry | None:
        with self._cache_lock:
            hit = self._cache.get(digest)
        return hit if hit is not None and time.monotonic() - hit.at < self.cache_ttl else None

    def _entry_live(self, entry: _Entry) -> bool:
        if entry.row is None or not self.live(entry.row):
            return False
        return entry.chain_expires is None or entry.chain_expires > self._now()

    def _resolve(self, tx: ServerTx, row: TokenRow | None) -> _Entry:
        """The row if authentic and every ancestor is present, authentic and unexpired."""
        mono = time.monotonic()
        if row is None or not self.authentic(row):
            return _Entry(mono, None, None)
        now = self._now()
        deadline: float | None = None
        current = row
        for _ in range(_MAX_DEPTH):
            if current.parent is None:
                return _Entry(mono, row, deadline)
            ancestor = tx.token_by_accessor(current.parent)
            if ancestor is None or not self.authentic(ancestor) or not self.live(ancestor, now):
                return _Entry(mono, None, None)  # a parent revoked or expired: its children died with it
            if ancestor.expires_at is not None:
                deadline = ancestor.expires_at if deadline is None else min(deadline, ancestor.expires_at)
            current = ancestor
        return _Entry(mono, None, None)

    def lookup(self, token: str) -> TokenRow | None:
        """The live row of a token (None: unknown, revoked, expired, refused, or an ancestor is gone)."""
        if not looks_like_token(token):
            return None
        digest = self.hash(token)
        hit = self._cache_hit(digest)
        if hit is None or not self._entry_live(hit) or (hit.row is not None and hit.row.num_uses > 0):
            with self._tables.read() as tx:
                hit = self._resolve(tx, tx.token_by_hash(digest))
            with self._cache_lock:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = hit
        return hit.row if self._entry_live(hit) else None

    def use(self, token: str, source: str | None = None) -> TokenRow | None:
        """:meth:`lookup`, spending one use of a use-limited token (the last use revokes it).

        The counter is a compare-and-swap in the store, so N concurrent
        requests with a token of N uses succeed exactly N times together.
        ``source`` is the client's address: a token bound to networks it is not in is
        refused (None, no use spent), as Vault refuses it; None skips the check (no network).
        """
        row = self.lookup(token)
        if row is not None and source is not None and not self.usable_from(row, source):
            return None
        if row is None or row.num_uses == 0:
            return row

        def spend(tx: ServerTx) -> bool:
            for _ in range(100):
                current = tx.token_by_accessor(row.accessor)
                if current is None or current.num_uses == 0 or not self.authentic(current):
                    return False
                if current.num_uses == 1:
                    self._revoke_tree(tx, current.accessor)
                    return True
                spent = self.sign(replace(current, num_uses=current.num_uses - 1))
                if tx.token_spend(current.accessor, current.num_uses, spent.num_uses, current.mac, spent.mac):
                    return True
            return False

        spent = self._tables.run(spend)
        self._forget(row.token_hash)
        return replace(row, num_uses=row.num_uses - 1) if spent else None  # as Vault shows it: uses left

    @staticmethod
    def usable_from(row: TokenRow, source: str) -> bool:
        """Whether the token may be used from ``source`` (its ``bound_cidrs``; any when it has none)."""
        return address_in(source, row.bound_cidrs)

    def live(self, row: TokenRow, now: float | None = None) -> bool:
        return row.expires_at is None or row.expires_at > (self._now() if now is None else now)

    def by_accessor(self, accessor: str) -> TokenRow | None:
        with self._tables.read() as tx:
            entry = self._resolve(tx, tx.token_by_accessor(accessor))
        return entry.row if self._entry_live(entry) else None

    def list(self) -> list[TokenRow]:
        with self._tables.read() as tx:
            entries = [self._resolve(tx, r) for r in tx.token_list()]
        return [e.row for e in entries if e.row is not None and self._entry_live(e)]

    def rejected(self) -> Sequence[str]:
        """Accessors of stored rows whose MAC does not verify (``doctor``; nothing is reported)."""
        with self._tables.read() as tx:
            return [r.accessor for r in tx.token_list() if not self.authentic(r, report=False)]

    # ---- renew / revoke --------------------------------------------------------
    def renew(self, row: TokenRow, increment: timedelta | None = None) -> TokenRow:
        """Extend a token: a periodic one back to its period, any other by ``increment`` (default
        its original TTL), never past its max."""
        if not row.renewable:
            raise TokenError("lease is not renewable")
        now = self._now()
        expires = now + row.period if row.period else now + (increment.total_seconds() if increment else row.ttl)
        if row.max_expires_at is not None:
            expires = min(expires, row.max_expires_at)

        def run(tx: ServerTx) -> TokenRow:
            current = tx.token_by_accessor(row.accessor)
            if current is None or not self.authentic(current):
                raise TokenError("invalid token")
            renewed = self.sign(replace(current, expires_at=expires))
            tx.token_set_expiry(row.accessor, expires, renewed.mac)
            return renewed

        renewed = self._tables.run(run)
        self._forget(row.token_hash)
        return renewed

    def _revoke_tree(self, tx: ServerTx, accessor: str) -> Sequence[str]:
        doomed: list[str] = []
        todo = [accessor]
        while todo:
            current = todo.pop()
            doomed.append(current)
            todo.extend(tx.token_children(current))
        tx.token_delete(doomed)
        return doomed

    def revoke(self, accessor: str) -> int:
        """Revoke a token and every token created under it; returns how many."""
        row = self.by_accessor(accessor)
        doomed = self._tables.run(lambda tx: self._revoke_tree(tx, accessor))
        with self._cache_lock:  # children's hashes are unknown here: drop the whole local cache
            self._cache.clear()
        self._revoked(doomed)
        return len(doomed) if row is not None else 0

    def forget_cached(self) -> None:
        """Drop every cached token (another worker of this serve revoked some)."""
        with self._cache_lock:
            self._cache.clear()

    def _revoked(self, accessors: Sequence[str]) -> None:
        """Tell the hooks which tokens are gone; a failing hook is logged by type, never raised: the
        tokens are revoked either way, and what a hook could not do it leaves queued for its own retry."""
        for hook in self.on_revoke:
            try:
                hook(accessors)
            except Exception as exc:
                logger.warning("a token revocation hook failed: %s", type(exc).__name__)

    def revoke_orphan(self, accessor: str) -> int:
        """Revoke one token and make its children orphans (Vault's ``revoke-orphan``)."""

        def run(tx: ServerTx) -> int:
            for child in tx.token_children(accessor):
                found = tx.token_by_accessor(child)
                if found is not None and self.authentic(found):
                    orphan = self.sign(replace(found, parent=None))
                    tx.token_set_parent(child, None, orphan.mac)
            return tx.token_delete([accessor])

        count = self._tables.run(run)
        with self._cache_lock:
            self._cache.clear()
        if count:
            self._revoked([accessor])
        return count

    def _forget(self, digest: str) -> None:
        with self._cache_lock:
            self._cache.pop(digest, None)


def remaining(row: TokenRow, now: float) -> int:
    """Seconds left, rounded (a truncation answered one second short of what was granted)."""
    return 0 if row.expires_at is None else max(0, round(row.expires_at - now))


def token_json(row: TokenRow, now: float, token: str = "") -> dict[str, Any]:
    """Vault's ``lookup`` data shape (``id`` only for lookup-self, from the request)."""

    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat()

    data: dict[str, Any] = {
        "accessor": row.accessor,
        "creation_time": int(row.created_at),
        "creation_ttl": round(row.ttl),
        "display_name": row.display_name,
        "entity_id": "",
        "expire_time": iso(row.expires_at),
        "explicit_max_ttl": round(row.explicit_max_ttl or 0),
        "id": token,
        "issue_time": iso(row.created_at),
        "meta": row.meta or None,
        "num_uses": row.num_uses,
        "orphan": row.parent is None,
        "path": row.path,
        "policies": list(row.policies),
        "renewable": row.renewable,
        "ttl": remaining(row, now),
        "type": row.token_type,
    }
    if row.period:
        data["period"] = round(row.period)
    if row.role:
        data["role"] = row.role
    if row.bound_cidrs:
        data["bound_cidrs"] = list(row.bound_cidrs)
    return data


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
