"""What one worker of a multi-worker ``serve`` does when another changed something it caches.

Workers share a change counter (:func:`.ratelimit.note_change`, in the table
``serve`` creates); a worker checks it once per request and, when it moved,
drops every cache that could answer differently from the store: tokens and
ACLs, the mount table, and whatever an engine registered with
:func:`on_change`.  One place, so a new per-worker cache cannot be forgotten
by one of the request paths.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .ratelimit import ChangeWatch, note_change

#: Engines' forgetters (weakly held: an engine of an old mount table goes away with it), called in
#: this worker when another worker noted a change.
_forgetters: list[weakref.WeakMethod[Callable[[], None]]] = []

__all__ = ["follow_changes", "note_change", "on_change"]


def on_change(forget: Callable[[], None]) -> None:
    """Call the bound method ``forget`` in this worker whenever another worker of the serve notes a
    change (held weakly: it stops when its object is dropped)."""
    _forgetters[:] = [ref for ref in _forgetters if ref() is not None]
    _forgetters.append(weakref.WeakMethod(forget))


def follow_changes(state: Any) -> None:
    """Drop this worker's caches if another worker revoked, changed a policy, a mount or a setting."""
    watch: ChangeWatch | None = getattr(state, "changes", None)
    if watch is None or not watch.moved():
        return
    backend = getattr(state, "backend", None)
    if backend is not None:
        backend.forget_cached()
    mounts = getattr(state, "mounts", None)
    if mounts is not None:
        mounts.stale()
    for ref in list(_forgetters):
        forget = ref()
        if forget is not None:
            forget()
