"""A disaster-recovery drill on a throwaway store: ``make drill`` / ``python -m nebula_credential.drill``.

What an operator would do after losing the store, rehearsed end to end
with the real code paths and a simulated clock (so months pass in
seconds):

1. a store with credentials in several scopes, a local root key;
2. ``backup create`` (registered, 30 days);
3. two rotations, each followed by re-encryption, the grace period, the
   retention minimum and ``keys cleanup``: the version the backup needs is
   *kept*, the one it does not need is destroyed;
4. the store is lost; ``backup verify`` then ``backup restore`` of the old
   backup into a new store;
5. every credential in the restored store is read back and compared.

The report says what happened at each step and how long it took; the exit
status is 0 only when every credential came back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .backups import create_sqlite_backup
from .config import KeyManagementConfig
from .exceptions import NebulaCredentialError
from .lifecycle import advance, cleanup
from .opening import open as open_vault
from .policies.retention import retention_from_config
from .restore import restore_backup, verify_backup
from .vault import Vault

SCOPES = ("production", "user", "development")


class SimulatedClock:
    """Wall-clock-free time for the drill: each step moves it on explicitly."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass(slots=True)
class DrillReport:
    credentials: int
    steps: list[tuple[str, float]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    restored_readable: int = 0
    mismatched: int = 0
    ok: bool = False

    def step(self, text: str, started: float) -> None:
        self.steps.append((text, time.perf_counter() - started))

    def lines(self) -> list[str]:
        out = [f"DR drill: {self.credentials} credential(s) in {len(SCOPES)} scopes"]
        out += [f"  {n:>2}. {text} ({seconds * 1000:.0f} ms)" for n, (text, seconds) in enumerate(self.steps, 1)]
        out.append(f"  restored store: {self.restored_readable}/{self.credentials} credential(s) read back, "
                   f"{self.mismatched} mismatched")
        out.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "credentials": self.credentials, "kept": self.kept, "destroyed": self.destroyed,
                "restored_readable": self.restored_readable, "mismatched": self.mismatched,
                "steps": [{"step": t, "seconds": round(s, 4)} for t, s in self.steps]}


def run_drill(workdir: Path, credentials: int = 200) -> DrillReport:
    """The whole drill inside ``workdir`` (which it fills and leaves for inspection)."""
    clock = SimulatedClock()
    config = KeyManagementConfig.from_dict({
        "provider": {"type": "local", "key_file": str(workdir / "master.key")},
        "keys": {"grace_period": "1h", "refresh_interval": "1s"},
        # keep_versions = 1: only the backup hold keeps an old version here, which is what the drill shows
        "retention": {"policy": "minimum-retention", "min_retention": "1d", "keep_versions": 1},
        "backup": {"keep": "30d"},
    })
    report = DrillReport(credentials)
    live_url = f"sqlite:///{workdir / 'live.db'}"
    values = {f"cred-{i:05d}": {"token": f"drill-{i}", "n": i} for i in range(credentials)}

    t = time.perf_counter()
    vault = open_vault(live_url, config=config, create=True, clock=clock)
    try:
        vault.put_many((cid, value, SCOPES[i % len(SCOPES)], None) for i, (cid, value) in enumerate(values.items()))
        report.step(f"created a store, wrote {credentials} credential(s) under v1", t)

        t = time.perf_counter()
        backup = workdir / "backup-day0.db"
        m = create_sqlite_backup(vault, backup, keep=config.backup.keep)
        report.step(f"backup create {backup.name}: needs {', '.join(f'v{v}' for v in m.keys.get('default', {}))}, "
                    f"held until {m.expires_at:%Y-%m-%d}", t)

        policy = retention_from_config(config)
        for _ in range(2):
            t = time.perf_counter()
            clock.now += timedelta(days=1)
            old = vault.keys.active_version().version
            new = vault.keys.rotate(reason="drill")
            assert new is not None
            moved = vault.reencrypt().reencrypted
            clock.now += timedelta(hours=2)
            advance(vault.keys, clock.now, config.keys.grace_period)  # valid -> grace
            clock.now += timedelta(hours=2)
            advance(vault.keys, clock.now, config.keys.grace_period)  # grace -> revoked
            clock.now += timedelta(days=2)
            destroyed = [a.version for a in cleanup(vault.keys, policy, clock.now)]
            report.destroyed += destroyed
            kept = [f"v{kv.version}" for kv in vault.keys.list()
                    if kv.status.value == "revoked" and kv.version not in destroyed]
            report.kept += [k for k in kept if k not in report.kept]
            report.step(f"rotate v{old} -> v{new.version}, re-encrypted {moved}, cleanup destroyed "
                        f"{', '.join(f'v{v}' for v in destroyed) or 'nothing'}; kept for the backup: "
                        f"{', '.join(kept) or 'nothing'}", t)
        live_store = vault.store
        t = time.perf_counter()
        checked = verify_backup(backup, config=config, live=live_store)
        report.step(f"backup verify: {'ok' if checked.ok else 'FAILED: ' + '; '.join(checked.problems)}", t)
        if not checked.ok:
            return report
    finally:
        vault.close()

    t = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{workdir / 'live.db'}{suffix}").unlink(missing_ok=True)  # the disaster
    restored_url = f"sqlite:///{workdir / 'restored.db'}"
    restore_backup(backup, restored_url, config=config)
    report.step("live store deleted; backup restore into restored.db", t)

    t = time.perf_counter()
    with open_vault(restored_url, config=config, clock=clock) as restored:
        for cid, value in values.items():
            try:
                got = restored.get(cid)
            except NebulaCredentialError:  # counted as a failure in the report
                report.mismatched += 1
                continue
            report.restored_readable += 1
            if got != value:
                report.mismatched += 1
        audit_ok = restored.audit.verify().ok
    report.step(f"read back every credential; audit chain {'intact' if audit_ok else 'BROKEN'}", t)
    report.ok = audit_ok and report.restored_readable == credentials and report.mismatched == 0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nebula_credential.drill", description=__doc__.splitlines()[0])
    parser.add_argument("--credentials", type=int, default=200, help="How many credentials (default 200).")
    parser.add_argument("--keep-dir", action="store_true", help="Leave the throwaway folder for inspection.")
    args = parser.parse_args(argv)
    os.environ.pop("NEBULA_CREDENTIAL_MASTER_KEY_FILE", None)  # the drill uses its own throwaway root key
    workdir = Path(tempfile.mkdtemp(prefix="nebula-drill-"))
    try:
        report = run_drill(workdir, max(1, args.credentials))
        for line in report.lines():
            print(line)
        if args.keep_dir:
            print(f"files left in {workdir}")
        return 0 if report.ok else 1
    finally:
        if not args.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())


def copy_envelope(vault: Vault, source_id: str, target_id: str) -> None:
    """Copy one credential's stored envelope onto another row, as a database writer could.

    For demonstrations only (``demo``): the read of ``target_id`` must then fail,
    because the envelope is bound to the record it was written for.
    """
    keyring = vault.keyring_name
    with vault.store.transaction() as tx:
        src = tx.get_credential(keyring, source_id)
        dst = tx.get_credential(keyring, target_id)
        if src is None or dst is None:
            raise NebulaCredentialError(f"copy_envelope: {source_id!r} and {target_id!r} must both exist")
        tx.cas_update_envelopes(keyring, [(dst.id, dst.revision, src.key_version, src.envelope)])
