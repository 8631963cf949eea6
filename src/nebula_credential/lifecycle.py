"""Lifecycle automation: valid -> grace -> revoked, and cleanup to destroyed.

Every step goes through :meth:`KeyManager.transition`, which re-checks the
state and the reference count inside the same transaction that changes it,
so a credential written under a version between our read and our write can
never be stranded: a version is only retired while nothing references it,
and a grace version that is referenced again goes back to valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .destroy_guard import check_destroy
from .exceptions import ConcurrencyError, PolicyViolationError
from .keys import KeyManager
from .models import KeyStatus
from .policies.retention import KeyRetentionPolicy, RetentionContext


@dataclass(frozen=True, slots=True)
class LifecycleAction:
    version: int
    old_status: str
    new_status: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "from": self.old_status, "to": self.new_status, "reason": self.reason}


def advance(km: KeyManager, now: datetime, grace_period: timedelta, *, dry_run: bool = False) -> list[LifecycleAction]:
    """Move versions along valid -> grace -> revoked as references and time allow."""
    with km.store.read() as tx:
        versions = tx.list_versions(km.keyring)
        refs = tx.count_by_version(km.keyring)
    planned: list[tuple[int, KeyStatus, KeyStatus, str]] = []
    for kv in versions:
        n = refs.get(kv.version, 0)
        if kv.status is KeyStatus.VALID and n == 0:
            planned.append((kv.version, kv.status, KeyStatus.GRACE, "no stored credential references it"))
        elif kv.status is KeyStatus.GRACE and n > 0:
            planned.append((kv.version, kv.status, KeyStatus.VALID, f"referenced again by {n} credential(s)"))
        elif kv.status is KeyStatus.GRACE:
            entered = kv.status_changed_at or kv.created_at
            if now - entered >= grace_period:
                planned.append((kv.version, kv.status, KeyStatus.REVOKED, "grace period ran out"))
    done = []
    for version, old, new, reason in planned:
        if not dry_run:
            try:
                km.transition(
                    version,
                    new,
                    action="key.status",
                    expected=old,
                    unreferenced_only=new is not KeyStatus.VALID,
                    reason=reason,
                )
            except (ConcurrencyError, PolicyViolationError):
                continue  # another instance moved it, or a writer referenced it: next pass decides
        done.append(LifecycleAction(version, old.value, new.value, reason))
    return done


def cleanup(
    km: KeyManager, policy: KeyRetentionPolicy, now: datetime, *, dry_run: bool = False
) -> list[LifecycleAction]:
    """Destroy the revoked versions the destroy guard allows; name the policy that allowed each.

    The guard is :func:`~nebula_credential.destroy_guard.check_destroy`, the same one
    ``keys destroy`` uses: revoked, referenced by no row (by envelope header),
    needed by no backup, past the floor, outside ``keep_versions``, allowed by
    ``policy``.  A dry run asks it without writing.
    """
    with km.store.read() as tx:
        versions = tx.list_versions(km.keyring)
        refs = tx.versions_referenced(km.keyring)
    ctx = RetentionContext(now=now, versions=versions, references=refs)
    out = []
    for kv in versions:
        if kv.status in (KeyStatus.ACTIVE, KeyStatus.DESTROYED):
            continue
        # the policy is asked about every retired version (a custom one may want to see them all);
        # only a revoked one it allows goes on to the guard (which also applies keep_versions)
        if policy.allows(kv, ctx) is None or kv.status is not KeyStatus.REVOKED:
            continue
        try:
            with km.store.read() as tx:
                _, reason = check_destroy(tx, kv, now=now, config=km.config, retention=policy)
            if not dry_run:  # the transition asks the guard again, inside its own transaction
                km.transition(kv.version, KeyStatus.DESTROYED, action="key.cleanup",
                              expected=KeyStatus.REVOKED, retention=policy, policy=policy.name)
        except (ConcurrencyError, PolicyViolationError):
            continue  # kept: referenced, too recent, or the policy says not yet
        out.append(LifecycleAction(kv.version, KeyStatus.REVOKED.value, KeyStatus.DESTROYED.value, reason))
    return out

