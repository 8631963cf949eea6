"""The seed's alert rules, evaluated by ``status`` with an injectable clock.

The same rules ship as Prometheus alerting rules in ``deploy/prometheus-rules.yml``
(over the metrics of :mod:`nebula_credential.metrics`); thresholds come from
``[alerts]`` in the config.  Every rule is strict ("more than"): it fires as soon
as the value passes its threshold and clears at or below it; ``KeyUsageBound``
fires *at* ``[rotation] max_encryptions``, where encryption stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .access import access_totals
from .config import AlertsConfig
from .metrics import ACCESS_ERROR_ACTIONS, KeyMetrics, epoch

#: Window over which ``status`` measures the key-access error ratio from the audit trail.
ERROR_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    severity: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "severity": self.severity, "message": self.message}


def evaluate(m: KeyMetrics, cfg: AlertsConfig, *, errors: int = 0, requests: int = 0) -> list[Alert]:
    """Alerts firing for one keyring's snapshot (errors/requests over the error window)."""
    out: list[Alert] = []
    kr = m.keyring
    if m.active_version is not None and m.current_key_age_days > cfg.key_age_days:
        out.append(
            Alert(
                "KeyTooOld",
                "warning",
                f"keyring {kr}: active version {m.active_version} is {m.current_key_age_days:.1f} days old "
                f"(> {cfg.key_age_days:g}); run `keys rotate`",
            )
        )
    if m.active_version is not None and m.current_key_age_days > cfg.no_rotation_days:
        out.append(
            Alert(
                "NoRecentRotation",
                "critical",
                f"keyring {kr}: no rotation in {m.current_key_age_days:.1f} days (> {cfg.no_rotation_days:g})",
            )
        )
    if m.current_key_age_days > cfg.reencryption_after_days and m.reencryption_progress < cfg.reencryption_min_progress:
        out.append(
            Alert(
                "ReencryptionStalled",
                "warning",
                f"keyring {kr}: re-encryption at {m.reencryption_progress:.0%} "
                f"{m.current_key_age_days:.1f} days after rotation (< {cfg.reencryption_min_progress:.0%} "
                f"after {cfg.reencryption_after_days:g} days); run `reencrypt`",
            )
        )
    if m.active_versions > cfg.max_live_versions:
        out.append(
            Alert(
                "TooManyLiveVersions",
                "warning",
                f"keyring {kr}: {m.active_versions} versions can still decrypt (> {cfg.max_live_versions}); "
                "let the lifecycle retire them (`maintain`)",
            )
        )
    if m.active_version is not None and 0 < m.max_encryptions <= m.active_encryptions:
        # the one rule that is not "more than": at the bound encryption stops (auto_rotation = false)
        out.append(
            Alert(
                "KeyUsageBound",
                "critical",
                f"keyring {kr}: active version {m.active_version} reached max_encryptions "
                f"({m.active_encryptions} >= {m.max_encryptions}); new writes fail until "
                f"`nebula-credential --keyring {kr} keys rotate`",
            )
        )
    if requests > 0 and errors / requests > cfg.access_error_ratio:
        out.append(
            Alert(
                "KeyAccessErrors",
                "critical",
                f"keyring {kr}: {errors} of {requests} credential accesses failed "
                f"({errors / requests:.2%} > {cfg.access_error_ratio:.2%}) in the last "
                f"{int(ERROR_WINDOW.total_seconds() // 3600)}h",
            )
        )
    return out


def access_counts(vault: Any, now: datetime) -> tuple[int, int]:
    """(errors, requests) for a keyring over the window.

    From the store's key access counters (every process's reads, flushed in
    blocks; this process's are flushed first), so the rule works with the
    default configuration.  A store without counted reads falls back to the
    audit trail (reads are there with ``[audit] credentials = true``).
    """
    access = getattr(vault, "access", None)
    if access is not None:
        access.flush()
        requests, failures = access_totals(vault.store, vault.keyring_name, now - ERROR_WINDOW)
        if requests:
            return failures, requests
    with vault.store.read() as tx:
        counts = tx.audit_counts((*ACCESS_ERROR_ACTIONS, "credential.read"), since=epoch(now - ERROR_WINDOW))
    kr = vault.keyring_name
    errors = sum(n for (a, k), n in counts.items() if a in ACCESS_ERROR_ACTIONS and k == kr)
    reads = counts.get(("credential.read", kr), 0)
    return errors, (reads + errors) if reads else 0
