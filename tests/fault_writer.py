"""An application process for the fault tests: ``python -m tests.fault_writer URL STOPFILE TAG``.

Writes new credentials until STOPFILE exists and prints ``ack ID`` after each
acknowledged write (``unknown ID`` when the commit outcome is unknown, ``err``
for a refused one), so the test knows exactly what was acknowledged before a
server was killed under it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nebula_credential as nc
from nebula_credential.exceptions import CommitOutcomeUnknownError, NebulaCredentialError


def main(argv: list[str]) -> int:
    url, stop, tag = argv[0], Path(argv[1]), argv[2]
    with nc.open(url) as vault:
        n = 0
        while not stop.exists():
            cid = f"{tag}-{n:06d}"
            n += 1
            try:
                vault.put(cid, {"tag": tag, "n": n - 1})
            except CommitOutcomeUnknownError:
                print(f"unknown {cid}", flush=True)
                continue
            except NebulaCredentialError:
                print("err", flush=True)
                continue
            print(f"ack {cid}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
