"""``maintain``: one idempotent scheduler pass over a keyring.

rotate if due -> one re-encryption pass -> advance the lifecycle -> clean up.
Safe from cron, from several processes at once, or from the daemon: the
rotation is guarded twice (a lease row in the store so only one instance
tries, and ``rotate(expected_active=...)`` so a pass that lost a race never
rotates a second time), and every lifecycle step is a checked transition.

``status`` (the ``status --json`` shape with the alert rules) is composed
here too.  Both are operations over the facade; ``Vault.maintain`` and
``Vault.status`` are entry points this module registers when the package
is imported, so the facade never imports its consumers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from .alerts import access_counts, evaluate
from .lifecycle import MaintainReport, advance, cleanup
from .metrics import snapshot
from .policies.retention import KeyRetentionPolicy, retention_from_config
from .policies.rotation import RotationStrategy, strategy_from_config
from .vault import Vault, register_operations

__all__ = ["ROTATION_LEASE_TTL", "MaintainReport", "default_holder", "maintain", "status"]

ROTATION_LEASE_TTL = 300.0


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    if reason and active is not None and transit is None and not cfg.keys.auto_rotation:
        # auto_rotation = false: the usage bound is the only strategy left, and reaching it stops
        # writes (as ``put`` does) instead of rotating; the KeyUsageBound alert tells the operator.
        report.usage_bound = str(km.bound_reached(active.version, cfg.rotation.max_encryptions))
        reason = None
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
    if reencrypt and not deleted and report.usage_bound is None and not should_stop():
        report.reencryption = vault.reencrypt(should_stop=should_stop)
    if not should_stop():
        now = vault.clock()
        if transit is None:
            report.lifecycle = advance(km, now, cfg.keys.grace_period)
        report.cleanup = cleanup(km, retention, now)
    if not should_stop():
        from .database.scheduler import run as run_database

        report.database = run_database(vault)
    return report


def status(vault: Vault) -> dict[str, Any]:
    """The ``status --json`` shape, with the alert rules evaluated now."""
    now = vault.clock()
    errors, requests = access_counts(vault, now)
    alerts = evaluate(snapshot(vault, now), vault.config.alerts, errors=errors, requests=requests)
    with vault.store.read() as tx:
        versions = tx.list_versions(vault.keys.keyring)
        counts = tx.count_by_version(vault.keys.keyring)
    active = next((v.version for v in versions if v.status.value == "active"), None)
    total = sum(counts.values())
    pending = total - counts.get(active, 0) if active is not None else total
    return {
        "keyring": vault.keys.keyring,
        "active_version": active,
        "versions": [v.to_json(counts.get(v.version, 0)) for v in versions],
        "reencryption": {
            "pending": pending,
            "total": total,
            "progress": 1.0 if total == 0 else round((total - pending) / total, 6),
        },
        "alerts": [a.to_json() for a in alerts],
    }


register_operations(maintain=maintain, status=status)
