"""What one worker of a multi-worker ``serve`` does when another changed something it caches.

Workers share change counters (:func:`.ratelimit.note_change`, in the table
``serve`` creates), one per kind of change; a worker checks them once per
request and drops what could answer differently from the store: for an
``access`` change its tokens, ACLs and mount table; for a ``keys`` change
whatever an engine registered with :func:`on_change` (Transit's loaded keys,
whose reload unwraps each key again).  One place, so a new per-worker cache
cannot be forgotten by one of the request paths.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .ratelimit import ChangeWatch, note_change

#: Engines' key forgetters (weakly held: an engine of an old mount table goes away with it), called in
#: this worker when another worker noted a ``keys`` change.
_forgetters: list[weakref.WeakMethod[Callable[[], None]]] = []

__all__ = ["follow_changes", "note_change", "on_change"]


def on_change(forget: Callable[[], None]) -> None:
    """Call the bound method ``forget`` in this worker whenever another worker of the serve notes a
    ``keys`` change (held weakly: it stops when its object is dropped)."""
    _forgetters[:] = [ref for ref in _forgetters if ref() is not None]
    _forgetters.append(weakref.WeakMethod(forget))


def follow_changes(state: Any) -> None:
    """Drop this worker's caches of what another worker revoked or changed (policies, mounts, keys)."""
    watch: ChangeWatch | None = getattr(state, "changes", None)
    moved = watch.moved() if watch is not None else ()
    if not moved:
        return
    if "access" in moved:
        backend = getattr(state, "backend", None)
        if backend is not None:
            backend.forget_cached()
        mounts = getattr(state, "mounts", None)
        if mounts is not None:
            mounts.stale()
    if "keys" in moved:
        for ref in list(_forgetters):
            forget = ref()
            if forget is not None:
                forget()
