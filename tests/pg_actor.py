"""One instance of a multi-host deployment, run as its own process by the
multi-instance tests: ``python -m tests.pg_actor ROLE URL STOPFILE``.

Roles:
* ``writer``: an application rewriting a few credentials until STOPFILE exists;
  prints ``put ID N`` after each committed write.
* ``daemon``: rotates if v1 is still active (as a scheduler that found a
  rotation due would), then runs re-encryption passes until STOPFILE exists
  and nothing is pending; prints one JSON summary line.
* ``worker``: one re-encryption pass, printing ``batch N`` after each
  committed batch.  ``NEBULA_TEST_SLOW_DECRYPT=SECONDS`` injects a delay into
  each row's decryption, so a batch transaction (fetch ... FOR UPDATE SKIP
  LOCKED, crypto, CAS) stays open long enough for the test to kill the
  process in the middle of it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import StoreUnavailableError

CONFIG = KeyManagementConfig.from_dict({"keys": {"refresh_interval": "1s"}})


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def writer(vault: nc.Vault, stop: Path) -> None:
    n = 0
    while not stop.exists():
        n += 1
        cid = f"cred-{n % 20:04}"
        vault.put(cid, {"id": cid, "write": n}, scope="production")
        say(f"put {cid} {n}")
        time.sleep(0.005)
    say(json.dumps({"event": "done", "writes": n}))


def daemon(vault: nc.Vault, stop: Path) -> None:
    rotated = vault.keys.rotate(reason="scheduled", expected_active=1) is not None
    say(json.dumps({"event": "rotation-attempted", "rotated": rotated}))
    reencrypted = conflicts = passes = 0
    while True:
        stopping = stop.exists()
        try:
            result = vault.reencrypt(batch_size=25)
        except StoreUnavailableError:
            continue
        passes += 1
        reencrypted += result.reencrypted
        conflicts += result.conflicts
        if stopping and result.ok and vault.pending()[1] == 0:
            break
        time.sleep(0.05)
    say(json.dumps({"event": "done", "rotated": rotated, "reencrypted": reencrypted,
                    "conflicts": conflicts, "passes": passes}))


def worker(vault: nc.Vault, stop: Path) -> None:
    batches = 0

    def progress(scope: str, n: int) -> None:
        nonlocal batches
        batches += 1
        say(f"batch {batches}")

    delay = float(os.environ.get("NEBULA_TEST_SLOW_DECRYPT", "0"))
    if delay:
        decrypt = vault.keys.decrypt

        def slow_decrypt(blob: bytes, aad: bytes = b"") -> bytes:
            time.sleep(delay)
            return decrypt(blob, aad)

        vault.keys.decrypt = slow_decrypt  # type: ignore[method-assign]
    result = vault.reencrypt(batch_size=10, progress=progress)
    say(json.dumps({"event": "done", "reencrypted": result.reencrypted, "ok": result.ok}))


def main(argv: list[str]) -> int:
    role, url, stop = argv[0], argv[1], Path(argv[2])
    with nc.open(url, config=CONFIG) as vault:
        {"writer": writer, "daemon": daemon, "worker": worker}[role](vault, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
