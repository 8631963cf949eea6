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
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from starlette.concurrency import run_in_threadpool

from ..aio import AsyncVault
from ..audit import Event
from ..config import KeyManagementConfig
from ..history import VersionInfo
from ..leases import Leases
from ..models import Credential, EncryptedCredential
from ..servertables import TokenRow
from ..vault import Vault, VersionPut
from .acl import AccessControl, StoreLeases, access_control_for
from .policies import ACL
from .ratelimit import note_change
from .tokenroles import TokenRoles
from .tokens import TokenManager

T = TypeVar("T")
_AuditArgs = tuple[str, str | None, str, dict[str, Any]]
#: The most KV writes (and, apart, request audit events) one group commit takes: bounds its transaction's length.
GROUP_LIMIT = 64
logger = logging.getLogger("nebula_credential.server")


def backend_for(vault: Vault | AsyncVault, config: KeyManagementConfig) -> Backend:
    """The backend of an app serving ``vault`` under ``config`` (``[server]``, ``[audit]``)."""
    engine = vault.sync if isinstance(vault, AsyncVault) else vault
    return Backend(vault, access_control_for(engine, config), audit_reads=config.audit.requests)


class Backend:
    """The vault (one per keyring), the tokens and the policies with their caches."""

    def __init__(self, vault: Vault | AsyncVault, access: AccessControl, *, audit_reads: bool) -> None:
        if isinstance(vault, AsyncVault):
            self._runner: Callable[..., Awaitable[Any]] = vault.run_sync
            vault = vault.sync
        else:
            self._runner = run_in_threadpool
        self.vault = vault
        self.access = access
        self.tokens: TokenManager = access.tokens
        assert access.roles is not None
        self.roles: TokenRoles = access.roles
        assert access.leases is not None
        self._leases: StoreLeases = access.leases
        self.audit_reads = audit_reads
        self._vaults: dict[str, Vault] = {vault.keyring_name: vault}
        self._lock = threading.Lock()
        self._pending: list[tuple[_AuditArgs, asyncio.Future[None]]] = []
        self._puts: list[tuple[VersionPut, asyncio.Future[VersionInfo]]] = []
        #: PostgreSQL: each path's writes waiting for its group in flight, and the task writing them
        self._path_puts: dict[tuple[str, str], list[tuple[VersionPut, asyncio.Future[VersionInfo]]]] = {}
        self._path_flushers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self._write_gate = asyncio.Lock() if vault.single_writer else None
        # A read on SQLite with a local key costs less than the hop to a thread (the hop was ~20 % of a KV
        # read's CPU): run it on the loop.  A remote provider (a KMS call on a DEK cache miss) and per-read
        # credential audit events (a write each) keep the thread; see :meth:`read`.
        self.inline_reads = (vault.reads_without_waiting and vault.provider.name == "local"
                             and not vault.config.audit.credentials)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a call that mostly only reads the store: on the loop when :attr:`inline_reads`, else as :meth:`run`.

        A call that turns out to need a write (the access counter's flush
        every thousand reads, the audit event of a failed decrypt, a Transit
        key's first use or its next block of counted encryptions) is stopped
        before its ``BEGIN`` and run again whole on a worker thread.  What it
        did in memory before stays conservative: an encryption taken from a
        counted block and then not used is never handed out again.
        """
        if self.inline_reads:
            done, result = self.vault.read_here(fn, *args, **kwargs)
            if done:
                return cast(T, result)
        return await self.run(fn, *args, **kwargs)

    def leases(self) -> Leases:
        """The store's leases (``sys/leases/*``, ``database/creds``), the token manager's hook's own."""
        return self._leases.get()

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

    async def write_short(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`write` for a short write (a KV version, a batch of audit events): on the loop when
        :attr:`inline_reads` and no other writer of the file holds or waits for the writer queue, so its
        ``BEGIN IMMEDIATE`` starts at once (the loop never waits for a lock); else as :meth:`write`."""
        if self.inline_reads and self._write_gate is not None and not self._write_gate.locked():
            with self.vault.writer_free() as free:
                if free:
                    return fn(*args, **kwargs)
        return await self.write(fn, *args, **kwargs)

    def keyring(self, name: str) -> Vault:
        found = self._vaults.get(name)  # every request asks; only a keyring's first use takes the lock
        if found is not None:
            return found
        with self._lock:
            if name not in self._vaults:
                self._vaults[name] = self.vault.keyring(name)
            return self._vaults[name]

    # ---- credentials ---------------------------------------------------------
    async def row(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        """The stored record without decrypting it (metadata, revision)."""

        return await self.read(self.keyring(keyring).head, credential_id)

    async def get(self, keyring: str, credential_id: str) -> Credential:
        return await self.read(self.keyring(keyring).get_record, credential_id)

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
        return await self.run(self.keyring(keyring).ids_under, prefix)

    # ---- tokens and policies --------------------------------------------------
    async def lookup(self, token: str, source: str | None = None) -> TokenRow | None:
        """The live row of the request's token, spending one use of a use-limited token; None for a
        token bound to networks ``source`` is not in (see :meth:`.tokens.TokenManager.use`)."""
        known, row = self.tokens.cached(token)
        if known:
            return row if row is None or source is None or self.tokens.usable_from(row, source) else None
        row = await self.run(self.tokens.use, token, source)
        await self.report_rejections()
        return row

    async def peek(self, token: str) -> TokenRow | None:
        """The live row of a token without spending a use (auditing an answer no endpoint gave)."""
        known, row = self.tokens.cached(token)
        if known:
            return row
        row = await self.run(self.tokens.lookup, token)
        await self.report_rejections()
        return row

    async def report_rejections(self) -> None:
        """Audit the rows refused for a failed MAC since the last call (see :mod:`.acl`)."""
        if self.access.rejections:
            await self.write(self.access.report_rejections)

    async def acl(self, policies: tuple[str, ...]) -> ACL:
        """The combined ACL of a token's policies (see :mod:`.acl`; cached, so mostly no thread hop)."""
        hit = self.access.cached_acl(policies)
        if hit is not None:
            return hit
        acl = await self.run(self.access.acl, policies)
        await self.report_rejections()
        return acl

    def forget_policy(self, name: str) -> None:
        self.access.forget_policy(name)
        note_change()  # the serve's other workers drop theirs before their next request

    def forget_cached(self) -> None:
        """Drop every cached token and ACL: another worker of this serve revoked or changed one."""
        self.tokens.forget_cached()
        self.access.forget_policies()

    async def policy_get(self, name: str) -> str | None:
        """A policy's text (the built-in ``default``'s too; ``root`` has none)."""
        text = await self.run(self.access.policies.get, name)
        await self.report_rejections()
        return text

    async def policy_put(self, name: str, text: str) -> None:
        await self.write(self.access.policies.put, name, text)  # parses first: refuses what it could not enforce
        self.forget_policy(name)

    async def policy_delete(self, name: str) -> None:
        await self.write(self.access.policies.delete, name)
        self.forget_policy(name)

    async def policy_list(self) -> list[str]:
        return await self.run(self.access.policies.names)

    # ---- KV writes --------------------------------------------------------------
    async def put_version(self, vault: Vault, credential_id: str, value: Any, *, scope: str,
                          cas: int | None) -> VersionInfo:
        """A new KV version (:meth:`.vault.Vault.put_version`), answered once it is committed.

        Group commit (:meth:`.vault.Vault.put_versions`: one transaction,
        each write in its own savepoint, in arrival order, each answered as
        it would have been alone).  On SQLite (one writer at a time) the
        writes in flight while a group is being written go together into the
        next one, with the pending request audit events: the file's writer
        lock, the ``BEGIN`` and the commit are paid once per group.  On
        PostgreSQL writers of different paths run concurrently, and those of
        one path, which would wait for each other's row lock and commit one
        at a time, queue here and go together into that path's next group.
        """
        put = VersionPut(vault, credential_id, value, scope, cas)
        done: asyncio.Future[VersionInfo] = asyncio.get_running_loop().create_future()
        if self._write_gate is not None:
            self._puts.append((put, done))
            self._start_flusher()
            return await done
        key = (vault.keyring_name, credential_id)
        queue = self._path_puts.get(key)
        if queue is None:
            queue = self._path_puts[key] = []
            self._path_flushers[key] = asyncio.get_running_loop().create_task(self._flush_path(key, queue))
        queue.append((put, done))
        return await done

    async def _flush_path(self, key: tuple[str, str], queue: list[tuple[VersionPut, asyncio.Future[VersionInfo]]]
                          ) -> None:
        """Write one path's queued writes, a group at a time, until none is left (PostgreSQL)."""
        try:
            while queue:
                puts = queue[:GROUP_LIMIT]
                del queue[:GROUP_LIMIT]
                try:
                    if len(puts) == 1:
                        put = puts[0][0]
                        answers: list[VersionInfo | Exception] = [await self.run(
                            put.vault.put_version, put.credential_id, put.value, scope=put.scope, cas=put.cas)]
                    else:
                        answers = (await self.run(self.vault.put_versions, [p for p, _ in puts])).puts
                except Exception as exc:
                    answers = [exc] * len(puts)
                for (_, waiter), answer in zip(puts, answers, strict=True):
                    _settle(waiter, answer)
        finally:
            self._path_puts.pop(key, None)
            self._path_flushers.pop(key, None)

    # ---- audit ------------------------------------------------------------------
    async def audit(self, action: str, *, keyring: str | None, outcome: str, **details: Any) -> None:
        """Append one request event; returns once it is committed.

        Group commit: events of requests in flight while a batch is being
        written go into the next batch, one transaction each (with the KV
        writes queued meanwhile, see :meth:`put_version`), so the chain (one
        writer at a time by design) costs one commit per batch instead of
        one per request.  No answer leaves before its event is stored.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((action, keyring, outcome, details), done))
        self._start_flusher()
        await done

    def _start_flusher(self) -> None:
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush())  # keep a reference

    async def _flush(self) -> None:
        try:
            while self._pending or self._puts:
                events, self._pending = self._pending[:GROUP_LIMIT * 4], self._pending[GROUP_LIMIT * 4:]
                puts, self._puts = self._puts[:GROUP_LIMIT], self._puts[GROUP_LIMIT:]
                try:
                    if puts:
                        group = await self.write_short(self.vault.put_versions, [put for put, _ in puts],
                                                       _events(event for event, _ in events))
                        for (_, put_waiter), answer in zip(puts, group.puts, strict=True):
                            _settle(put_waiter, answer)
                        events_error = group.events_error
                    else:
                        await self.write_short(self._write_events, [event for event, _ in events])
                        events_error = None
                except Exception as exc:  # every waiter sees the failure; none is lost silently
                    for _, put_waiter in puts:
                        _settle(put_waiter, exc)
                    events_error = exc
                for _, waiter in events:
                    _settle(waiter, events_error)
        finally:
            self._flushing = False

    def _write_events(self, events: list[_AuditArgs]) -> None:
        self.vault.record_events(_events(events))


def _events(events: Iterable[_AuditArgs]) -> list[Event]:
    """The batch's events; ``version`` and ``credential_id`` in a request's details become the event's own
    fields (a copy is made only then: a request event's details, which have neither, are used as they are)."""
    batch = []
    for action, keyring, outcome, details in events:
        version = credential_id = None
        if "version" in details or "credential_id" in details:
            details = dict(details)
            version, credential_id = details.pop("version", None), details.pop("credential_id", None)
        batch.append(Event(action, keyring, version, credential_id, outcome, details))
    return batch


def _settle(waiter: asyncio.Future[Any], answer: Any) -> None:
    """Give a waiter its answer (an exception is raised in it), unless it was cancelled meanwhile."""
    if waiter.done():
        return
    if isinstance(answer, Exception):
        waiter.set_exception(answer)
    else:
        waiter.set_result(answer)
