"""Child process of the database engine's crash tests: start an operation and SIGKILL itself at a phase.

argv: STORE_URL OPERATION(rotate|root|creds) PHASE NAME.  Exits 3 if the phase never came.
"""

from __future__ import annotations

import os
import signal
import sys

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine


def main() -> int:
    url, operation, phase, name = sys.argv[1:5]
    vault = nc.open(url)
    engine = DatabaseEngine(vault, "database")

    def die(reached: str) -> None:
        if reached == phase:
            os.kill(os.getpid(), signal.SIGKILL)

    engine.static.on_phase = die
    engine.connections.on_phase = die
    engine.dynamic.on_phase = die
    if operation == "rotate":
        engine.rotate_role(name)
    elif operation == "root":
        engine.rotate_root(name)
    else:
        engine.creds(name)
    return 3


if __name__ == "__main__":
    sys.exit(main())
