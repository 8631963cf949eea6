"""Every blocking call the server makes, behind one small async adapter.

``serve`` gives it an :class:`~nebula_credential.aio.AsyncVault`: each call
(the vault facade's operations, the token and policy tables, the audit
chain) runs the way that vault runs its own -- on PostgreSQL its statements
are awaited on the event loop (the greenlet bridge), on SQLite it runs on
the store's bounded thread pool.  Given a plain :class:`~.vault.Vault`
(embedding, tests) the calls go to Starlette's thread pool instead.
Handlers never touch a store or a vault directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, cast

from starlette.concurrency import run_in_threadpool

from ..aio import AsyncVault
from ..audit import Event
from ..config import KeyManagementConfig
from ..models import Credential, EncryptedCredential
from ..store import TokenRow
from ..vault import Vault
from .policies import ACL, BUILTIN, ROOT_POLICY, Rule, parse
from .tokens import TokenManager

T = TypeVar("T")
_ROOT = ACL([], root=True)


def backend_for(vault: Vault | AsyncVault, config: KeyManagementConfig) -> Backend:
    """The backend of an app serving ``vault`` under ``config`` (``[server]``, ``[audit]``)."""
    engine = vault.sync if isinstance(vault, AsyncVault) else vault
    server = config.server
    tokens = TokenManager(engine.store, engine.provider, clock=engine.clock, default_ttl=server.default_ttl,
                          max_ttl=server.max_ttl, cache_ttl=server.cache_ttl)
    return Backend(vault, tokens, cache_ttl=server.cache_ttl, audit_reads=config.audit.requests)


class Backend:
    """The vault (one per keyring), the token manager and the policy cache."""

    def __init__(self, vault: Vault | AsyncVault, tokens: TokenManager, *, cache_ttl: timedelta,
                 audit_reads: bool) -> None:
        if isinstance(vault, AsyncVault):
            self._runner: Callable[..., Awaitable[Any]] = vault.run_sync
            vault = vault.sync
        else:
            self._runner = run_in_threadpool
        self.vault = vault
        self.tokens = tokens
        self.audit_reads = audit_reads
        self._vaults: dict[str, Vault] = {vault.keyring_name: vault}
        self._cache_ttl = cache_ttl.total_seconds()
        self._policies: dict[str, tuple[float, list[Rule] | None]] = {}
        self._acls: dict[tuple[str, ...], tuple[float, ACL]] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, str | None, str, dict[str, Any]], asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self._write_gate = asyncio.Lock() if vault.store.scheme == "sqlite" else None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return cast(T, await self._runner(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that writes.  On SQLite (one writer at a time) this process's writers
        queue here rather than in SQLite's busy handler, whose sleeps (up to 100 ms each)
        made the write tail long; PostgreSQL writers run concurrently."""
        if self._write_gate is None:
            return await self.run(fn, *args, **kwargs)
        async with self._write_gate:
            return await self.run(fn, *args, **kwargs)

    def keyring(self, name: str) -> Vault:
        with self._lock:
            if name not in self._vaults:
                self._vaults[name] = self.vault.keyring(name)
            return self._vaults[name]

    # ---- credentials ---------------------------------------------------------
    async def row(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """The stored record without decrypting it (metadata, revision)."""

        def read() -> EncryptedCredential | None:
            with self.vault.store.read() as tx:
                return tx.get_credential(keyring, credential_id)

        return await self.run(read)

    async def get(self, keyring: str, credential_id: str) -> Credential:
        return await self.run(self.keyring(keyring).get_record, credential_id)

    async def put(
        self, keyring: str, credential_id: str, value: Any, *, scope: str, metadata: dict[str, Any],
        expected_revision: int | None,
    ) -> int:
        return await self.write(
            self.keyring(keyring).put, credential_id, value, scope=scope, metadata=metadata,
            expected_revision=expected_revision,
        )

    async def delete(self, keyring: str, credential_id: str) -> None:
        await self.write(self.keyring(keyring).delete, credential_id)

    async def list_ids(self, keyring: str, prefix: str) -> list[str]:
        """The ids under ``prefix`` (a KV folder), a page per read: no row outside it is read."""

        def ids() -> list[str]:
            return list(self.vault.store.iter_pages(
                lambda tx, after, size: tx.ids_under(keyring, prefix, after_id=after, limit=size), page=5000))

        return await self.run(ids)

    # ---- tokens and policies --------------------------------------------------
    async def lookup(self, token: str) -> TokenRow | None:
        known, row = self.tokens.cached(token)
        return row if known else await self.run(self.tokens.lookup, token)

    async def acl(self, policies: tuple[str, ...]) -> ACL:
        """The combined ACL of a token's policies (built once per ``cache_ttl``)."""
        if ROOT_POLICY in policies:
            return _ROOT
        with self._lock:
            hit = self._acls.get(policies)
        if hit is not None and time.monotonic() - hit[0] < self._cache_ttl:
            return hit[1]
        mono = time.monotonic()
        acl = await self._build_acl(policies)
        with self._lock:
            if len(self._acls) > 1000:
                self._acls.clear()
            self._acls[policies] = (mono, acl)
        return acl

    async def _build_acl(self, policies: tuple[str, ...]) -> ACL:
        rules = []
        for name in policies:
            hit = self._cached_rules(name)
            rules.extend(hit if hit is not None else await self.run(self._rules, name))
        return ACL(rules)

    def _cached_rules(self, name: str) -> list[Rule] | None:
        with self._lock:
            hit = self._policies.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._cache_ttl:
            return hit[1] or []
        return None

    def _rules(self, name: str) -> list[Rule]:
        mono = time.monotonic()
        hit = self._cached_rules(name)
        if hit is not None:
            return hit
        with self.vault.store.read() as tx:
            text = tx.policy_get(name)
        rules = parse(text) if text is not None else None
        with self._lock:
            self._policies[name] = (mono, rules)
        return rules or []

    def forget_policy(self, name: str) -> None:
        with self._lock:
            self._policies.pop(name, None)
            self._acls.clear()

    async def policy_get(self, name: str) -> str | None:
        if name in BUILTIN:
            return ""

        def read() -> str | None:
            with self.vault.store.read() as tx:
                return tx.policy_get(name)

        return await self.run(read)

    async def policy_put(self, name: str, text: str) -> None:
        parse(text)  # refuse what we could not enforce before storing it
        await self.write(self.vault.store.run, lambda tx: tx.policy_put(name, text, self.vault.clock()))
        self.forget_policy(name)

    async def policy_delete(self, name: str) -> None:
        await self.write(self.vault.store.run, lambda tx: tx.policy_delete(name))
        self.forget_policy(name)

    async def policy_list(self) -> list[str]:
        def names() -> list[str]:
            with self.vault.store.read() as tx:
                return tx.policy_list()

        return sorted({*await self.run(names), *BUILTIN})

    # ---- audit ------------------------------------------------------------------
    async def audit(self, action: str, *, keyring: str | None, outcome: str, **details: Any) -> None:
        """Append one request event; returns once it is committed.

        Group commit: events of requests in flight while a batch is being
        written go into the next batch, one transaction each, so the chain
        (one writer at a time by design) costs one commit per batch instead
        of one per request.  No answer leaves before its event is stored.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((action, keyring, outcome, details), done))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())  # keep a reference
        await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self.write(self._write_events, [event for event, _ in batch])
                except Exception as exc:  # every waiter sees the failure; none is lost silently
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flushing = False

    def _write_events(self, events: list[tuple[str, str | None, str, dict[str, Any]]]) -> None:
        batch = []
        for action, keyring, outcome, details in events:
            rest = dict(details)
            batch.append(Event(action, keyring, rest.pop("version", None), rest.pop("credential_id", None),
                               outcome, rest))
        with self.vault.store.transaction() as tx:
            self.vault.audit.record_many(tx, batch)
