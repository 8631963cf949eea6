"""Lifecycle automation: valid -> grace -> revoked, and cleanup to destroyed.

Every step goes through :meth:`KeyManager.transition`, which re-checks the
state and the reference count inside the same transaction that changes it,
so a credential written under a version between our read and our write can
never be stranded: a version is only retired while nothing references it,
and a grace version that is referenced again goes back to valid.

:class:`MaintainReport` is what one scheduler pass did (the pass itself is
composed in :mod:`.maintenance`); it is here, beside the actions it lists, so
the facade can name the type that ``Vault.maintain`` returns without
importing the operations layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .destroy_guard import KeepReason, check_destroy, keep_reasons
from .exceptions import ConcurrencyError, PolicyViolationError
from .keys import KeyManager
from .models import KeyStatus, KeyVersion
from .policies.retention import KeyRetentionPolicy, RetentionContext
from .reencrypt import ReencryptResult


@dataclass(frozen=True, slots=True)
class LifecycleAction:
    version: int
    old_status: str
    new_status: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "from": self.old_status, "to": self.new_status, "reason": self.reason}


@dataclass(slots=True)
class MaintainReport:
    keyring: str
    rotated: tuple[int, int] | None = None
    rotation_reason: str | None = None
    rotation_skipped: str | None = None
    #: With ``auto_rotation = false``: the active version reached max_encryptions (the typed error's text).
    usage_bound: str | None = None
    reencryption: ReencryptResult | None = None
    lifecycle: list[LifecycleAction] = field(default_factory=list)
    cleanup: list[LifecycleAction] = field(default_factory=list)
    #: The database engine's pass over the mounts of this keyring (rotations, lease sweep), if any.
    database: dict[str, Any] | None = None

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
            "usage_bound": self.usage_bound,
            "reencryption": None if self.reencryption is None else self.reencryption.to_json(),
            "lifecycle": [a.to_json() for a in self.lifecycle],
            "cleanup": [a.to_json() for a in self.cleanup],
            **({"database": self.database} if self.database is not None else {}),
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
        for mount, entry in (self.database or {}).items():
            out += [f"database {mount}: static role {r['role']} {r['outcome']}" + (f" ({r['error']})" if r["error"]
                    else "") for r in entry.get("rotations", [])]
            swept = entry.get("leases") or {}
            if swept.get("revoked") or swept.get("failed"):
                out.append(f"database {mount}: {swept['revoked']} lease(s) revoked, {swept['failed']} failed")
        return out


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



def kept(km: KeyManager, policy: KeyRetentionPolicy, now: datetime) -> list[tuple[KeyVersion, KeepReason]]:
    """Each version with material left and every reason the destroy guard keeps it, oldest first.

    What ``keys cleanup --dry-run`` prints beside what it would destroy, so
    "nothing to clean up" always says what is waiting, for what, and until when.
    """
    out = []
    with km.store.read() as tx:
        for kv in sorted(tx.list_versions(km.keyring), key=lambda v: v.version):
            out += [(kv, r) for r in keep_reasons(tx, kv, now=now, config=km.config, retention=policy)]
    return out
