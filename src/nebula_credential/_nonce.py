"""Random 96-bit AES-GCM nonces, drawn from the OS CSPRNG in batches.

``os.urandom(12)`` is one system call per encryption, a sixth of the whole
envelope call; one ``os.urandom`` of :data:`BATCH` nonces spreads that call
over a few hundred encryptions.  The nonces stay what they were: 96 bits
straight from the OS CSPRNG, each handed out once.

Why no nonce is handed out twice (the property AES-GCM needs; a nonce is
public, so holding unused ones in memory costs nothing but uniqueness):

* **Within one process.**  Every nonce is its own ``bytes`` object in one
  list, and :data:`take` is that list's ``pop``: one atomic operation (under
  the GIL, and under a per-object lock on free-threaded builds), so two
  threads never receive the same object, and a popped nonce is gone from the
  pool.  Two threads that both find the pool empty both call :func:`refill`,
  each with its own ``os.urandom`` batch: more nonces, never shared ones.  No
  lock is held anywhere, so a fork can never inherit one held by a thread
  that does not exist in the child.
* **Across fork.**  A child starts with a copy of its parent's pool: were it
  to use it, parent and child would draw the same nonces.
  ``os.register_at_fork(after_in_child=...)`` empties the child's pool before
  any Python code runs there, so the child's first encryption draws a fresh
  batch.  This covers ``os.fork`` and everything built on it
  (``multiprocessing``'s fork start method, servers that fork workers); a C
  extension that calls ``fork()`` itself must call ``PyOS_AfterFork_Child``,
  as CPython requires of it anyway.
* **Between processes and over time.**  Independent 96-bit random values: the
  same birthday bound as one ``os.urandom(12)`` per call, which is what the
  per-version usage bound (2^32 encryptions, NIST SP 800-38D 8.3) rests on.
"""

from __future__ import annotations

import os
import struct

NONCE_SIZE = 12
#: Nonces drawn per system call: 4 KiB of randomness, a page.
BATCH = 4096 // NONCE_SIZE

_split = struct.Struct(f"{NONCE_SIZE}s" * BATCH).unpack
_pool: list[bytes] = []

#: One unused nonce, or IndexError when the pool is empty (then call :func:`refill`).
#: The hot path calls this bound method directly: one atomic list pop.
take = _pool.pop


def refill() -> bytes:
    """Draw a fresh batch, keep all but one in the pool and return that one."""
    batch: tuple[bytes, ...] = _split(os.urandom(NONCE_SIZE * BATCH))
    _pool.extend(batch[1:])
    return batch[0]


def nonce() -> bytes:
    """A 12-byte nonce no other caller in this process (or a forked child) receives."""
    try:
        return take()
    except IndexError:
        return refill()


def _forget_parent_nonces() -> None:
    _pool.clear()  # in place: ``take`` stays bound to this list


os.register_at_fork(after_in_child=_forget_parent_nonces)
