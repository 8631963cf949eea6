"""``sleep`` for retry loops, without importing the asyncio bridge (and greenlet) to find out.

Only :func:`~nebula_credential._bridge.greenlet_spawn` can put code inside a
bridged greenlet, and it lives in :mod:`._bridge`: a process that has not
imported that module cannot be inside one, so a plain ``time.sleep`` is the
right sleep there.  The store and the providers retry through this function,
so the synchronous API and the command line's start-up never import
greenlet (issue 27, target 6).
"""

from __future__ import annotations

import sys
import time

_BRIDGE = "nebula_credential._bridge"


def sleep(seconds: float) -> None:
    """``time.sleep``, or the bridge's loop-yielding sleep once the bridge is loaded."""
    bridge = sys.modules.get(_BRIDGE)
    if bridge is None:
        time.sleep(seconds)
    else:
        bridge.sleep(seconds)
