"""Run the synchronous rules on an asyncio event loop without blocking it.

The asyncio API does not re-implement the vault: it runs the very same
synchronous code (:class:`~nebula_credential.vault.Vault`,
:class:`~nebula_credential.keys.KeyManager`, the store's SQL, the audit
chain) inside a greenlet, and only the lowest level -- the database driver
call, a provider round trip, a sleep -- is handed back to the loop as an
awaitable.  This is the technique of SQLAlchemy's asyncio extension
(``greenlet_spawn`` / ``await_only``), written small for our needs:

* :func:`greenlet_spawn` (async) starts a function in a child greenlet and
  awaits, on its behalf, every awaitable the function passes to
  :func:`await_only`, switching back with the result (or throwing the
  exception, including :class:`asyncio.CancelledError`, into the sync code,
  so ``with store.transaction()`` rolls back as it would on any error).
* :func:`await_only` (sync) suspends the calling greenlet until the loop has
  awaited the awaitable.  Called from another thread it submits the
  awaitable to the loop the resource belongs to and waits for it there.

Because every bridged greenlet runs on the loop's thread, ``threading``
primitives cannot tell them apart: :class:`GreenletRLock` and
:class:`GreenletLocal` are the greenlet-aware counterparts the bridged store
hands out.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from greenlet import getcurrent, greenlet

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future as ThreadFuture

# asyncio is imported inside the functions that run on a loop: the synchronous API
# (and the command line's start-up) imports this module through the store and the
# providers, and never needs asyncio.

T = TypeVar("T")


class _Bridged(greenlet):  # type: ignore[misc]  # greenlet ships no precise stubs for subclasses
    """A greenlet whose parent awaits for it; ``await_only`` recognises it by type."""


def in_bridge() -> bool:
    """True inside :func:`greenlet_spawn` (the sync code may suspend on the loop)."""
    return isinstance(getcurrent(), _Bridged)


class SegmentStats:
    """The longest stretch of sync code run on the loop between two awaits (a stall we cause).

    Set :data:`segments` to an instance to measure (tests, benchmarks); None
    costs one global lookup per switch.
    """

    def __init__(self) -> None:
        self.count = 0
        self.max_wall = 0.0
        self.max_cpu = 0.0
        self.where = ""  # the code the longest (CPU) stretch ended in

    def add(self, wall: float, cpu: float, child: greenlet) -> None:
        self.count += 1
        self.max_wall = max(self.max_wall, wall)
        if cpu > self.max_cpu:
            self.max_cpu = cpu
            frame = child.gr_frame
            self.where = "; ".join(
                f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                for f in _outer_frames(frame, 8)
            )


def _outer_frames(frame: Any, n: int) -> list[Any]:
    frames: list[Any] = []
    while frame is not None and len(frames) < n:
        frames.append(frame)
        frame = frame.f_back
    return frames


segments: SegmentStats | None = None


def _switch(child: _Bridged, method: Callable[..., Any], *args: Any) -> Any:
    """Resume a child greenlet until it awaits or ends, timing the stretch when measuring."""
    stats = segments
    if stats is None:
        return method(*args)
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        return method(*args)
    finally:
        stats.add(time.perf_counter() - wall, time.thread_time() - cpu, child)


async def greenlet_spawn(fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a child greenlet, awaiting whatever it hands to :func:`await_only`."""
    child = _Bridged(fn, getcurrent())
    request = _switch(child, child.switch)
    while not child.dead:
        try:
            value = await request
        except BaseException as exc:
            request = _switch(child, child.throw, exc)
        else:
            request = _switch(child, child.switch, value)
    return cast(T, request)


def await_only(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Wait for ``awaitable`` from synchronous code.

    Inside :func:`greenlet_spawn` the greenlet is suspended and the loop
    awaits it.  From another thread (a test, a sync caller) with ``loop``
    given and running, the awaitable runs on that loop while this thread
    waits.  Anywhere else -- notably sync code called directly on the loop's
    thread -- it is refused, since waiting there would deadlock the loop.
    """
    current = getcurrent()
    if isinstance(current, _Bridged):
        return cast(T, current.parent.switch(awaitable))
    import asyncio

    if loop is not None and loop.is_running() and not _on_loop_thread(loop):
        coro = awaitable if asyncio.iscoroutine(awaitable) else _wrap(awaitable)
        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()
    if asyncio.iscoroutine(awaitable):
        awaitable.close()  # never awaited: silence the warning
    raise RuntimeError(
        "a store opened by nebula_credential.aopen() was used synchronously on the event loop's "
        "thread; use the AsyncVault methods (await them) instead"
    )


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    import asyncio

    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable


def sleep(seconds: float) -> None:
    """``time.sleep`` that yields the event loop instead when bridged."""
    if in_bridge():
        import asyncio

        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def run_blocking(executor: Any, fn: Callable[[], T]) -> T:
    """Run a blocking call in ``executor`` (a thread pool) and wait for it.

    Bridged, the loop keeps running while the thread works; elsewhere the
    call simply runs here.
    """
    if not in_bridge():
        return fn()
    import asyncio

    return await_only(asyncio.get_running_loop().run_in_executor(executor, fn))


class GreenletRLock:
    """A reentrant lock whose owner is a greenlet; waiters await on the loop.

    ``threading.RLock`` would let every bridged greenlet in (they share the
    loop's thread), so the key manager's critical sections -- one unwrap
    per version, one reservation of the usage counter at a time -- would no
    longer exclude each other.  Outside the bridge (a thread calling in
    synchronously, which is rare and never on the loop) the lock is taken
    when free and otherwise polled every millisecond.
    """

    def __init__(self) -> None:
        self._owner: greenlet | None = None
        self._count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._mutex = threading.Lock()  # guards the fields against callers on other threads

    def acquire(self) -> bool:
        me = getcurrent()
        while True:
            with self._mutex:
                if self._owner is None or self._owner is me:
                    self._owner = me
                    self._count += 1
                    return True
                if not in_bridge():
                    waiter: asyncio.Future[None] | None = None
                else:
                    import asyncio

                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
            if waiter is None:
                time.sleep(0.001)  # a synchronous caller on another thread: poll (rare, never on the loop)
                continue
            try:
                await_only(waiter)
            except BaseException:
                with self._mutex:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif self._owner is None:
                        self._wake()  # we were woken but leave: pass the turn on
                raise

    def release(self) -> None:
        with self._mutex:
            if self._owner is not getcurrent():
                raise RuntimeError("cannot release a lock held by another greenlet")
            self._count -= 1
            if self._count == 0:
                self._owner = None
                self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
                return

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class GreenletLocal:
    """Attributes private to the current greenlet (``threading.local`` for greenlets).

    The PostgreSQL store remembers "the transaction this caller is in" to
    join nested use; with greenlets on one thread a ``threading.local``
    would make one task join another task's transaction.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_data", weakref.WeakKeyDictionary())

    def _mine(self) -> dict[str, Any]:
        data: weakref.WeakKeyDictionary[greenlet, dict[str, Any]] = object.__getattribute__(self, "_data")
        me = getcurrent()
        mine = data.get(me)
        if mine is None:
            mine = data[me] = {}
        return mine

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mine()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._mine()[name] = value

