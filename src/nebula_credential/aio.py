"""The asyncio API: ``await nc.aopen(url)`` gives an :class:`AsyncVault`.

An :class:`AsyncVault` has the operations of :class:`~.vault.Vault`, awaited,
and runs *the same* :class:`~.vault.Vault` underneath: the usage counter,
leases, compare-and-swap writes, the write-path key status check, the
audit chain and the AAD binding exist once, so an envelope written through
one API is read by the other and a rule fixed in one is fixed in both.
What differs is only how the engine's blocking work meets the event loop
(a *runner*):

* **PostgreSQL** -- :class:`_BridgeRunner`: the sync code runs in a greenlet
  (:mod:`._bridge`); every statement is awaited on psycopg 3's
  ``AsyncConnectionPool`` and every provider call (hvac, python-pkcs11,
  boto3, the Azure SDK, the key file) runs in a small bounded thread pool.
  Thousands of tasks share one loop and a handful of connections.
* **SQLite** -- :class:`_ThreadRunner`: each operation runs whole on a
  small bounded pool of threads, each with its own connection (WAL lets
  readers run beside the writer).  SQLite calls are short and local: a
  hop to a thread per statement would cost more than the statement, and
  one dedicated thread serialised readers behind writers (see
  ``docs/asyncio.md`` for the measurements).

Cancelling a task mid-operation never leaves half a write: on PostgreSQL
the cancellation is raised inside the transaction, which rolls back; on
SQLite the running operation finishes (or fails) whole before the
cancellation is delivered.  A cancelled :meth:`AsyncVault.reencrypt` stops
after the batch in hand and the next call resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import inspect
import itertools
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, Unpack, cast

from ._bridge import await_only, greenlet_spawn, run_blocking
from .config import KeyManagementConfig
from .exceptions import ConfigError
from .history import KVSettings, SecretVersions, VersionInfo
from .keys import KeyManager
from .models import Credential, EncryptedCredential, KeyVersion
from .opening import load_config, open_on
from .opening import open as open_vault
from .providers import KeyProvider
from .reencrypt import Progress, ReencryptResult
from .vault import DEFAULT_SCOPE, KVRead, Vault

if TYPE_CHECKING:
    from .lifecycle import MaintainReport

T = TypeVar("T")

#: One credential for ``put_many``: (id, value, scope, metadata).
Item = tuple[str, Any, str, dict[str, Any] | None]


class PassOptions(TypedDict, total=False):
    """The re-encryption options passed through unchanged to :meth:`Vault.reencrypt`."""

    batch_size: int | None
    priority: Iterable[str] | None
    rate_limit: float | None


#: Rows fetched per hop when streaming :meth:`AsyncVault.list`.
LIST_PAGE = 1000

#: Rows per ``put_many`` transaction: ~5 ms of encryption between two awaits (1,000 took 18 ms).
PUT_MANY_BATCH = 250

#: Threads for blocking provider calls on PostgreSQL (network KMS, HSM sessions),
#: and for whole operations on SQLite.
THREADS = 4

#: The provider methods that may block on a network, an HSM or a file.
_PROVIDER_BLOCKING = frozenset(
    {"wrap", "unwrap", "generate_dek", "open_dek", "rewrap", "destroy_dek", "rotate_root_key", "check", "close"}
)


class _Runner(Protocol):
    """How the sync engine's calls meet the event loop."""

    async def run(self, fn: Callable[[], T], on_cancel: Callable[[], None] | None = None) -> T: ...

    def shutdown(self) -> None: ...


class _BridgeRunner:
    """Greenlet bridge: store I/O awaited on the loop, provider calls in a bounded pool."""

    def __init__(self, threads: int = THREADS) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nebula-provider")
        self.loop = asyncio.get_running_loop()  # the async pool's connections belong to it

    async def run(self, fn: Callable[[], T], on_cancel: Callable[[], None] | None = None) -> T:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError(
                "this AsyncVault was opened on another event loop; its connections belong to that "
                "loop: call nc.aopen() on the loop that uses it"
            )
        try:
            return await greenlet_spawn(fn)
        except asyncio.CancelledError:
            if on_cancel is not None:
                on_cancel()
            raise

    def adapt(self, provider: KeyProvider) -> KeyProvider:
        return cast(KeyProvider, _OffloadedProvider(provider, self.executor))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False)


class _ThreadRunner:
    """A small pool of threads, each with its own SQLite connection, runs each operation whole."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nebula-sqlite")

    async def run(self, fn: Callable[[], T], on_cancel: Callable[[], None] | None = None) -> T:
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # the thread cannot be interrupted: ask it to stop, let the operation end
            # whole (committed or rolled back), then deliver the cancellation
            if on_cancel is not None:
                on_cancel()
            with suppress(BaseException):
                await future
            raise

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


class _OffloadedProvider:
    """A provider whose blocking calls run in a thread pool while the loop goes on.

    A provider with an asyncio client (Azure Key Vault) names the calls whose
    I/O it awaits itself in ``awaited_ops``; those run on the loop.
    Everything else (name, describe, root_key_id, calls, observer) is the
    wrapped provider's own; outside the bridge the calls run in place.
    """

    def __init__(self, inner: KeyProvider, executor: ThreadPoolExecutor) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_executor", executor)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in _PROVIDER_BLOCKING and name not in getattr(self._inner, "awaited_ops", ()):
            return functools.partial(self._offload, attr)
        return attr  # a provider with an asyncio client awaits its own I/O on the loop

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)  # e.g. the metrics observer

    def _offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return run_blocking(self._executor, functools.partial(fn, *args, **kwargs))

    def __repr__(self) -> str:
        return repr(self._inner)

    def __reduce__(self) -> Any:
        raise TypeError("key providers cannot be pickled")


def _resolve(result: object, loop: asyncio.AbstractEventLoop) -> None:
    """Await what an async progress callback returned, from the engine's side of the loop."""
    if inspect.isawaitable(result):
        await_only(result, loop)


def _take(rows: Iterator[T], n: int) -> builtins.list[T]:
    return builtins.list(itertools.islice(rows, n))


class AsyncKeys:
    """``vault.keys`` of an :class:`AsyncVault`: the key manager's operations, awaited."""

    def __init__(self, keys: KeyManager, runner: _Runner) -> None:
        self.sync = keys
        self._runner = runner

    @property
    def keyring(self) -> str:
        return self.sync.keyring

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._runner.run(functools.partial(fn, *args, **kwargs))

    async def initialize(self) -> KeyVersion:
        """Create version 1 if the keyring is empty (a new tenant); returns the active version."""
        return await self._call(self.sync.initialize)

    async def rotate(self, reason: str = "manual", *, expected_active: int | None = None) -> KeyVersion | None:
        return await self._call(self.sync.rotate, reason, expected_active=expected_active)

    async def revoke(self, version: int, **kwargs: Any) -> KeyVersion:
        return await self._call(self.sync.revoke, version, **kwargs)

    async def reinstate(self, version: int) -> KeyVersion:
        return await self._call(self.sync.reinstate, version)

    async def destroy(self, version: int, **kwargs: Any) -> KeyVersion:
        return await self._call(self.sync.destroy, version, **kwargs)

    async def version(self, version: int) -> KeyVersion:
        return await self._call(self.sync.version, version)

    async def active_version(self) -> KeyVersion:
        return await self._call(self.sync.active_version)

    async def refresh(self) -> None:
        await self._call(self.sync.refresh)

    async def credential_counts(self) -> dict[int, int]:
        return await self._call(self.sync.credential_counts)

    async def list(self) -> builtins.list[KeyVersion]:
        return await self._call(self.sync.list)

    def __repr__(self) -> str:
        return f"<AsyncKeys keyring={self.sync.keyring!r}>"


class AsyncVault:
    """Credentials of one keyring, for asyncio code; see :class:`~.vault.Vault` for each operation.

    Obtain one with :func:`aopen`.  ``sync`` is the :class:`~.vault.Vault`
    engine it drives (on PostgreSQL usable only through this object or from
    another thread).
    """

    def __init__(self, vault: Vault, runner: _Runner) -> None:
        self.sync = vault
        self._runner = runner
        self.keys = AsyncKeys(vault.keys, runner)

    # ---- plumbing ----------------------------------------------------------
    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a synchronous call on the engine the way this vault runs its own.

        For the parts of the sync API without an async twin (``sync.audit``,
        ``sync.store.transaction()`` for a layer built on the same store):
        on PostgreSQL its statements are awaited on the loop, on SQLite it
        runs on the store's thread.
        """
        return await self._runner.run(functools.partial(fn, *args, **kwargs))

    _call = run_sync

    @property
    def keyring_name(self) -> str:
        return self.sync.keyring_name

    @property
    def store(self) -> Any:
        return self.sync.store

    @property
    def provider(self) -> KeyProvider:
        return self.sync.provider

    @property
    def config(self) -> KeyManagementConfig:
        return self.sync.config

    @property
    def observer(self) -> Callable[[str, str, float, bool], None] | None:
        return self.sync.observer

    @observer.setter
    def observer(self, value: Callable[[str, str, float, bool], None] | None) -> None:
        self.sync.observer = value

    def keyring(self, name: str) -> AsyncVault:
        """The same store and root of trust, another keyring (one per tenant)."""
        return AsyncVault(self.sync.keyring(name), self._runner)

    # ---- credentials ---------------------------------------------------------
    async def put(self, credential_id: str, value: Any, *, scope: str = DEFAULT_SCOPE,
                  metadata: dict[str, Any] | None = None, **options: Any) -> int:
        """Store (or replace) a credential; returns its new revision (see :meth:`Vault.put`).

        Further keyword arguments of :meth:`Vault.put` pass through unchanged.
        """
        return await self._call(self.sync.put, credential_id, value, scope=scope, metadata=metadata, **options)

    async def put_many(
        self, items: Iterable[Item] | AsyncIterable[Item], *, batch_size: int = PUT_MANY_BATCH
    ) -> int:
        """Bulk import of (id, value, scope, metadata), one transaction per batch; items may arrive async.

        A batch is encrypted in one stretch on the loop (about 18 us a row), so
        the default batch is smaller than the sync API's 1,000.
        """
        if not isinstance(items, AsyncIterable):
            return await self._call(self.sync.put_many, items, batch_size=batch_size)
        count = 0
        batch: builtins.list[Item] = []
        async for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                count += await self._call(self.sync.put_many, batch, batch_size=batch_size)
                batch = []
        if batch:
            count += await self._call(self.sync.put_many, batch, batch_size=batch_size)
        return count

    async def get_record(self, credential_id: str, *, version: int | None = None) -> Credential:
        """The decrypted credential with its scope, key version and metadata (of that ``version``, if given)."""
        return await self._call(self.sync.get_record, credential_id, version=version)

    async def get(self, credential_id: str, *, version: int | None = None) -> Any:
        """The decrypted value of a credential (of that ``version`` of it, if given)."""
        return (await self.get_record(credential_id, version=version)).value

    # ---- version history: the rules are Vault's (sync) methods, run as every call here is -------
    async def put_version(self, credential_id: str, value: Any, *, scope: str = DEFAULT_SCOPE,
                          metadata: dict[str, Any] | None = None, cas: int | None = None) -> VersionInfo:
        """A new version (see :meth:`Vault.put_version`)."""
        return await self._call(self.sync.put_version, credential_id, value, scope=scope, metadata=metadata,
                                cas=cas)

    async def versions(self, credential_id: str) -> SecretVersions:
        return await self._call(self.sync.versions, credential_id)

    async def delete_versions(self, credential_id: str, versions: Iterable[Any] | None = None) -> builtins.list[int]:
        return await self._call(self.sync.delete_versions, credential_id, versions)

    async def undelete(self, credential_id: str, versions: Iterable[Any]) -> builtins.list[int]:
        return await self._call(self.sync.undelete, credential_id, versions)

    async def destroy_versions(self, credential_id: str, versions: Iterable[Any]) -> builtins.list[int]:
        return await self._call(self.sync.destroy_versions, credential_id, versions)

    async def set_settings(self, credential_id: str, settings: KVSettings, *, scope: str | None = None) -> None:
        await self._call(self.sync.set_settings, credential_id, settings, scope=scope)

    async def read_version(self, credential_id: str, version: int | None = None
                           ) -> tuple[SecretVersions, Credential | None]:
        return await self._call(self.sync.read_version, credential_id, version)

    async def read_kv(self, credential_id: str, version: int | None = None) -> KVRead:
        """One version as a KV v2 read answers it (:meth:`.vault.Vault.read_kv`); on PostgreSQL concurrent
        reads of the current version share one statement."""
        return await self._call(self.sync.read_kv, credential_id, version)

    async def kv_config(self) -> KVSettings:
        return await self._call(self.sync.kv_config)

    async def set_kv_config(self, settings: KVSettings) -> None:
        await self._call(self.sync.set_kv_config, settings)

    async def delete(self, credential_id: str, **options: Any) -> None:
        """Delete a credential (see :meth:`Vault.delete`; its keyword arguments pass through)."""
        await self._call(self.sync.delete, credential_id, **options)

    # ---- keys and maintenance ------------------------------------------------
    async def reencrypt(
        self,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        workers: int | None = None,
        **options: Unpack[PassOptions],
    ) -> ReencryptResult:
        """One re-encryption pass (see :meth:`Vault.reencrypt`; ``options``: batch_size, priority, rate_limit).

        ``progress`` may be a plain or an ``async`` callable.  One pass uses
        one worker here; run several ``reencrypt()`` tasks (PostgreSQL shares
        the rows between them with ``SKIP LOCKED``) instead of ``workers``.
        A cancelled pass keeps its committed batches; the next call resumes.
        """
        if workers is not None and workers != 1:
            raise ConfigError(
                "reencryption.workers",
                f"the asyncio API runs one worker per pass, got {workers}; start several "
                "reencrypt() tasks instead (on PostgreSQL they share the rows)",
            )
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        user_progress = progress

        def report(scope: str, rows: int) -> None:
            assert user_progress is not None
            _resolve(user_progress(scope, rows), loop)

        return await self._runner.run(
            functools.partial(
                self.sync.reencrypt,
                progress=report if progress is not None else None,
                should_stop=lambda: stop.is_set() or should_stop(),
                workers=1,
                **options,
            ),
            on_cancel=stop.set,
        )

    async def maintain(self, **kwargs: Any) -> MaintainReport:
        """One scheduler pass: rotate if due, re-encrypt, advance the lifecycle, clean up."""
        return await self._call(self.sync.maintain, **kwargs)

    async def status(self) -> dict[str, Any]:
        """The ``status --json`` shape, with the alert rules evaluated now."""
        return await self._call(self.sync.status)

    async def pending(self) -> tuple[int, int, int]:
        return await self._call(self.sync.pending)

    async def close(self) -> None:
        try:
            await self._call(self.sync.close)
        finally:
            self._runner.shutdown()

    async def __aenter__(self) -> AsyncVault:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<Async" + repr(self.sync)[1:]

    async def list(
        self, *, scope: str | None = None, key_version: int | None = None
    ) -> AsyncIterator[EncryptedCredential]:
        """Stream stored records (ciphertext and metadata only, never values), a page per hop."""
        rows = self.sync.list(scope=scope, key_version=key_version)
        while True:
            page = await self._runner.run(functools.partial(_take, rows, LIST_PAGE))
            for row in page:
                yield row
            if len(page) < LIST_PAGE:
                return


def _one_worker(config: KeyManagementConfig) -> KeyManagementConfig:
    """A pass's threads would block the loop; ``maintain`` re-encrypts with one worker."""
    if config.reencryption.workers == 1:
        return config
    return dataclasses.replace(config, reencryption=dataclasses.replace(config.reencryption, workers=1))


class OpenOptions(TypedDict, total=False):
    """:func:`~.opening.open`'s keyword arguments besides ``config``, passed through unchanged."""

    keyring: str
    provider: KeyProvider | None
    clock: Callable[[], datetime]
    create: bool


async def aopen(
    url: str | None = None,
    *,
    config: KeyManagementConfig | str | Path | None = None,
    threads: int = THREADS,
    **options: Unpack[OpenOptions],
) -> AsyncVault:
    """Open a credential store for asyncio code; the arguments are :func:`~.opening.open`'s.

    ``threads`` bounds the thread pool: on PostgreSQL it runs the blocking
    provider calls (the store's I/O is awaited on the loop); on SQLite it
    runs whole operations, one connection per thread.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    cfg = _one_worker(load_config(config))
    target = url or cfg.store.url
    runner: _BridgeRunner | _ThreadRunner
    if target.startswith(("postgresql://", "postgres://")):
        bridge = runner = _BridgeRunner(threads)

        def opener() -> Vault:
            from .store._async_postgres import BridgedPostgresStore

            store = BridgedPostgresStore(target)
            try:
                store.migrate()
            except BaseException:
                store.close()
                raise
            return open_on(store, cfg, adapt_provider=bridge.adapt, **options)
    else:
        runner = _ThreadRunner(threads)

        def opener() -> Vault:
            return open_vault(target, config=cfg, **options)

    try:
        vault = await runner.run(opener)
    except BaseException:
        runner.shutdown()
        raise
    return AsyncVault(vault, runner)
