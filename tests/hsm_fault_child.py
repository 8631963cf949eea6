"""A child process for the SoftHSM token-removal faults: ``python -m tests.hsm_fault_child STEP URL SETTINGS TOKENS``.

SoftHSM is loaded once per process and, once a token vanished under it, fails
every later slot scan in that process; so each step runs in a process of its
own (with its own SOFTHSM2_CONF) and the test drives them in turn. STEP is
``setup``, ``reencrypt`` (moves the token folder away after the first batch),
``rotate`` (moves it away after the second DEK rewrap) or ``check``. Prints one
JSON line: what was injected, what was in flight, what is stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import ProviderUnavailableError
from nebula_credential.rootkeys import rotate_root_key

RINGS = ("default", "a", "b")


def expected() -> dict[tuple[str, str], dict[str, Any]]:
    return {(ring, f"r{rnd}-{i:02d}"): {"ring": ring, "round": rnd, "i": i}
            for ring in RINGS for rnd in range(3) for i in range(10)}


def remove(tokens: Path) -> None:
    """Injected: every token folder moved out of SoftHSM's token directory."""
    for folder in tokens.iterdir():
        folder.rename(tokens.parent / f"away-{folder.name}")


def stored(vault: nc.Vault) -> dict[str, Any]:
    rows = [(ring, row) for ring in RINGS for row in vault.keyring(ring).list()]
    return {"half_written": sum(1 for _, r in rows if int.from_bytes(r.envelope[4:8], "big") != r.key_version),
            "moved": sum(1 for _, r in rows if r.key_version == 3), "rows": len(rows)}


def main(argv: list[str]) -> int:
    step, url, tokens = argv[0], argv[1], Path(argv[3])
    settings = {**json.loads(argv[2]), "retry_attempts": 3, "retry_backoff": "1s", "retry_max": "1s"}
    cfg = KeyManagementConfig.from_dict({"provider": settings})
    out: dict[str, Any] = {"step": step}
    with nc.open(url, config=cfg, create=step == "setup") as vault:
        if step == "setup":
            for ring in RINGS:
                kr = vault.keyring(ring)
                if ring != "default":
                    kr.keys.initialize()
                for rnd in range(3):  # rows under v1 and v2, v3 active
                    for i in range(10):
                        kr.put(f"r{rnd}-{i:02d}", expected()[(ring, f"r{rnd}-{i:02d}")])
                    if rnd < 2:
                        kr.keys.rotate()
        elif step == "reencrypt":
            batches: list[int] = []

            def after_first_batch(scope: str, n: int) -> None:
                batches.append(n)
                if len(batches) == 1:
                    remove(tokens)

            try:
                for ring in RINGS:
                    vault.keyring(ring).reencrypt(batch_size=5, progress=after_first_batch)
            except ProviderUnavailableError as exc:
                out["error"], out["message"] = type(exc).__name__, str(exc)
            out["attempts"] = vault.provider.calls
        elif step == "rotate":
            rewrap = vault.provider._rewrap  # type: ignore[attr-defined]
            calls: list[int] = []

            def rewrap_then_remove(wrapped: bytes, ctx: Any) -> bytes:
                calls.append(1)
                if len(calls) == 3:
                    remove(tokens)  # two DEKs rewrapped, the third in flight
                return bytes(rewrap(wrapped, ctx))

            vault.provider._rewrap = rewrap_then_remove  # type: ignore[attr-defined]
            try:
                rotate_root_key(vault.store, vault.provider, vault.audit)
            except ProviderUnavailableError as exc:
                out["error"], out["message"] = type(exc).__name__, str(exc)
        elif step == "check":
            values = {f"{ring}/{cid}": vault.keyring(ring).get(cid) for ring in RINGS
                      for cid in (r.id for r in vault.keyring(ring).list())}
            out["lost"] = sum(1 for (ring, cid), v in expected().items() if values.get(f"{ring}/{cid}") != v)
            out["finished"] = sum(vault.keyring(ring).reencrypt(batch_size=5).reencrypted for ring in RINGS)
            out["rewrapped"] = rotate_root_key(vault.store, vault.provider, vault.audit).rewrapped
            out["audit_ok"] = vault.audit.verify().ok
        out.update(stored(vault))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
