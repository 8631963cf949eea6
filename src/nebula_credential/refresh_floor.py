"""The destroy floor's input: the largest ``refresh_interval`` any process opening the store announced.

Every process announces its interval when it opens the store
(:func:`announce_refresh_interval`); the destroy guard
(:mod:`~nebula_credential.destroy_guard`, which re-exports these names) reads
it back.  Kept apart from the guard so that opening a store -- every command
-- does not import the retention policies and backup holds only a destroy
needs (issue 27, command-line start-up).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import KeyManagementConfig
    from .store import Store, StoreTx

#: The store's meta entry holding the largest ``refresh_interval`` (seconds) any process announced.
REFRESH_META = "destroy_guard.max_refresh_interval"


def stored_refresh_interval(tx: StoreTx) -> timedelta:
    """The largest ``refresh_interval`` any process opening this store has announced (0 if none)."""
    try:
        seconds = float(tx.get_meta(REFRESH_META) or 0)
    except ValueError:  # a damaged entry must not lower the floor: treat it as unknown
        seconds = 0.0
    return timedelta(seconds=max(0.0, seconds))


def announce_refresh_interval(store: Store, config: KeyManagementConfig) -> None:
    """Record this process's ``refresh_interval`` in the store if it is the largest seen so far.

    Called by every process that opens the store.  The value is only ever
    raised, so a process configured with a short interval (even ``0s``)
    cannot shorten the floor that protects the versions other processes may
    still be writing under.  One read when nothing changes; one write the
    first time a longer interval is seen.
    """
    own = config.keys.refresh_interval
    with store.read() as tx:
        if stored_refresh_interval(tx) >= own:
            return
    with store.transaction() as tx:
        tx.lock_keyring(REFRESH_META)  # PostgreSQL: two announcers in turn, so the larger value wins
        if stored_refresh_interval(tx) < own:
            tx.set_meta(REFRESH_META, repr(own.total_seconds()))
