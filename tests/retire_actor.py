"""The two sides of the write/retire race, each run as its own process by
tests/test_write_retire.py: ``python -m tests.retire_actor ROLE URL CONFIG STOPFILE [CYCLES]``.

Roles:
* ``app``: an application holding its active version cached for
  ``refresh_interval``, rewriting a handful of credentials as fast as it can
  until STOPFILE exists; prints one JSON line: the last value it wrote to
  each id, how many writes, and how many found their version retired
  inside the write transaction (and were redone under the active one).
* ``operator``: CYCLES times, as fast as the rules allow: rotate,
  re-encrypt, revoke the previous version as soon as nothing references it
  (re-encrypting again while the app keeps writing under it), wait out
  the destroy floor, destroy it (a refusal is counted); then creates STOPFILE and prints a JSON
  summary.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import nebula_credential as nc
from nebula_credential.destroy_guard import destroy_floor, stored_refresh_interval
from nebula_credential.exceptions import ConcurrencyError, PolicyViolationError, StoreUnavailableError
from nebula_credential.models import KeyStatus


def say(data: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def app(vault: nc.Vault, stop: Path) -> None:
    last: dict[str, int] = {}
    retired = 0
    real = getattr(vault.keys, "stale", None)  # None on a build without the write check

    def counting() -> None:  # called when a write found its version retired inside its transaction
        nonlocal retired
        assert real is not None
        retired += 1
        real()

    if real is not None:
        vault.keys.stale = counting  # type: ignore[method-assign]
    n = 0
    while not stop.exists():
        n += 1
        cid = f"c{n % 500}"  # a stale write is rarely overwritten before the operator looks
        try:
            vault.put(cid, {"n": n})
        except (StoreUnavailableError, ConcurrencyError):
            continue  # not written: the value stays the previous one
        last[cid] = n
        time.sleep(0.002)  # an application between requests: its encryption block lasts a while
    say({"role": "app", "writes": n, "retired_in_tx": retired, "last": last})


def operator(vault: nc.Vault, stop: Path, cycles: int) -> None:
    km = vault.keys
    revoke_retries = destroyed = refused = 0
    try:
        for _ in range(cycles):
            old = km.active_version().version
            km.rotate(reason="race")
            while True:
                vault.reencrypt()
                try:
                    km.transition(old, KeyStatus.REVOKED, action="key.revoke", unreferenced_only=True,
                                  reason="race")
                    break
                except PolicyViolationError:
                    revoke_retries += 1  # the app wrote under it again since: re-encrypt, try again
            while True:  # the guard's floor: the largest refresh_interval announced (the app's, once it opened)
                with vault.store.read() as tx:
                    floor = destroy_floor(vault.config, stored_refresh_interval(tx))
                revoked_at = km.version(old).revoked_at
                assert revoked_at is not None
                wait = (revoked_at + floor + timedelta(milliseconds=20) - vault.clock()).total_seconds()
                if wait <= 0:
                    break
                time.sleep(wait)
            try:
                km.destroy(old)
                destroyed += 1
            except PolicyViolationError:
                refused += 1  # rows landed under the revoked version: the bug this race looks for
    finally:
        stop.touch()
    say({"role": "operator", "destroyed": destroyed, "destroy_refused": refused, "revoke_retries": revoke_retries})


def main() -> None:
    role, url, config, stop = sys.argv[1:5]
    with nc.open(url, config=config) as vault:
        if role == "app":
            app(vault, Path(stop))
        else:
            operator(vault, Path(stop), int(sys.argv[5]))


if __name__ == "__main__":
    main()
