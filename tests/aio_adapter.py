"""A sync-looking facade over :class:`AsyncVault`, so the sync vault tests run on the async API.

The event loop runs in a background thread (a *portal*); every awaited
operation is submitted to it and waited for.  Attributes that are plain
objects (``audit``, ``store``, ``clock``) are the engine's own: on
PostgreSQL the bridged store, used from this (non-loop) thread, sends its
statements to the loop as well.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import nebula_credential as nc

T = TypeVar("T")


class Portal:
    """An event loop in a thread, and a way to run coroutines on it from here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-portal", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture(scope="module", name="portal")
def portal_fixture() -> Iterator[Portal]:
    """One loop thread per test module."""
    p = Portal()
    yield p
    p.close()


async def _collect(rows: AsyncIterator[T]) -> list[T]:
    return [row async for row in rows]


class _Awaited:
    """Calls an object's coroutine methods synchronously through the portal."""

    def __init__(self, target: Any, portal: Portal) -> None:
        self._target = target
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(attr(*args, **kwargs))

        return call


class SyncOverAsync(_Awaited):
    """What the sync tests call ``vault``, backed by an :class:`nc.AsyncVault`."""

    def __init__(self, avault: nc.AsyncVault, portal: Portal) -> None:
        super().__init__(avault, portal)
        self.avault = avault
        self.keys = _Awaited(avault.keys, portal)

    def __getattr__(self, name: str) -> Any:
        if name in {"audit", "clock", "pending_counts", "enable_read_through", "decrypt_row"}:
            return getattr(self.avault.sync, name)
        return super().__getattr__(name)

    def list(self, **kwargs: Any) -> Iterator[nc.EncryptedCredential]:
        return iter(self._portal.call(_collect(self.avault.list(**kwargs))))

    def keyring(self, name: str) -> SyncOverAsync:
        return SyncOverAsync(self.avault.keyring(name), self._portal)


def open_sync_over_async(url: str, portal: Portal, **kwargs: Any) -> SyncOverAsync:
    return SyncOverAsync(portal.call(nc.aopen(url, **kwargs)), portal)
