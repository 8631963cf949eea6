"""``maintain``: one idempotent scheduler pass over a keyring.

rotate if due -> one re-encryption pass -> advance the lifecycle -> clean up.
Safe from cron, from several processes at once, or from the daemon: the
rotation is guarded twice (a lease row in the store so only one instance
tries, and ``rotate(expected_active=...)`` so a pass that lost a race never
rotates a second time), and every lifecycle step is a checked transition.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .lifecycle import LifecycleAction, advance, cleanup
from .policies.retention import KeyRetentionPolicy, retention_from_config
from .policies.rotation import RotationStrategy, strategy_from_config
from .reencrypt import ReencryptResult

if TYPE_CHECKING:
    from .vault import Vault

ROTATION_LEASE_TTL = 300.0


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class MaintainReport:
    keyring: str
    rotated: tuple[int, int] | None = None
    rotation_reason: str | None = None
    rotation_skipped: str | None = None
    reencryption: ReencryptResult | None = None
    lifecycle: list[LifecycleAction] = field(default_factory=list)
    cleanup: list[LifecycleAction] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reencryption is None or self.reencryption.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "keyring": self.keyring,
            "rotated": None
            if self.rotated is None
            else {"old_version": self.rotated[0], "new_version": self.rotated[1]},
            "rotation_reason": self.rotation_reason,
            "rotation_skipped": self.rotation_skipped,
            "reencryption": None if self.reencryption is None else self.reencryption.to_json(),
            "lifecycle": [a.to_json() for a in self.lifecycle],
            "cleanup": [a.to_json() for a in self.cleanup],
        }

    def actions(self) -> list[str]:
        """One line per thing that changed, for logs."""
        out = []
        if self.rotated:
            out.append(f"rotated {self.keyring} v{self.rotated[0]} -> v{self.rotated[1]} ({self.rotation_reason})")
        if self.reencryption and (self.reencryption.reencrypted or self.reencryption.failures):
            r = self.reencryption
            out.append(f"re-encrypted {r.reencrypted} of {r.total} in {self.keyring} ({len(r.failures)} failed)")
        out += [f"{self.keyring} v{a.version}: {a.old_status} -> {a.new_status} ({a.reason})" for a in self.lifecycle]
        out += [f"{self.keyring} v{a.version}: destroyed ({a.reason})" for a in self.cleanup]
        return out


def maintain(
    vault: Vault,
    *,
    strategy: RotationStrategy | None = None,
    retention: KeyRetentionPolicy | None = None,
    holder: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    reencrypt: bool = True,
) -> MaintainReport:
    from .transit import maintenance_plan

    km = vault.keys
    cfg = vault.config
    # A Transit key rotates on its own settings and has no reference-driven lifecycle.
    transit = maintenance_plan(vault)
    strategy = strategy or (transit.strategy if transit is not None else None) or strategy_from_config(cfg)
    retention = retention or retention_from_config(cfg)
    holder = holder or default_holder()
    report = MaintainReport(keyring=km.keyring)

    deleted = transit is not None and transit.strategy is None
    active = None if deleted else km.active_version()
    now = vault.clock()
    reason = strategy.due(active, now) if active is not None else None
    if reason:
        lease = f"rotate:{km.keyring}"
        with vault.store.transaction() as tx:
            got = tx.acquire_lease(lease, holder, ROTATION_LEASE_TTL, now)
        if not got:
            report.rotation_skipped = "another instance holds the rotation lease"
        else:
            try:
                assert active is not None
                kv = km.rotate(reason=reason, expected_active=active.version)
                if kv is None:
                    report.rotation_skipped = "another instance rotated first"
                else:
                    report.rotated = (active.version, kv.version)
                    report.rotation_reason = reason
            finally:
                with vault.store.transaction() as tx:
                    tx.release_lease(lease, holder)
    if reencrypt and not deleted and not should_stop():
        report.reencryption = vault.reencrypt(should_stop=should_stop)
    if not should_stop():
        now = vault.clock()
        if transit is None:
            report.lifecycle = advance(km, now, cfg.keys.grace_period)
        report.cleanup = cleanup(km, retention, now)
    return report
