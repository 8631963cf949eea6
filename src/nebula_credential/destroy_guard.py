"""The destroy guard: the one decision whether a key version's material may be erased.

``keys destroy``, ``keys cleanup`` and the daemon (:mod:`~nebula_credential.lifecycle`)
and Transit's ``trim`` (through :meth:`KeyManager.destroy`) all ask
:func:`check_destroy`; nothing erases key material by another path.  It sits in
the engine layer beside the key manager, not inside it, so that the state
machine, the hot path and this policy decision each have one home.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import format_duration
from .exceptions import PolicyViolationError
from .holds import holds as backup_hold
from .models import KeyStatus, KeyVersion
from .policies.retention import KeyRetentionPolicy, RetentionContext, kept_versions
from .refresh_floor import REFRESH_META, announce_refresh_interval, stored_refresh_interval

if TYPE_CHECKING:
    from .config import KeyManagementConfig
    from .store import StoreTx

def destroy_floor(config: KeyManagementConfig, stored: timedelta = timedelta(0)) -> timedelta:
    """How long a version stays revoked before it may be destroyed: twice ``refresh_interval``.

    Every process re-reads key statuses at least once per ``refresh_interval``,
    so after two of them none still holds the version as one to write under.
    The interval is the larger of the destroying process's own and ``stored``
    (the largest any process announced to the store, see
    :func:`announce_refresh_interval`): the floor is not the destroyer's to
    lower.  No flag lowers it.
    """
    return 2 * max(config.keys.refresh_interval, stored)


def check_destroy(
    tx: StoreTx,
    kv: KeyVersion,
    *,
    now: datetime,
    config: KeyManagementConfig,
    retention: KeyRetentionPolicy,
    force_retention: bool = False,
) -> tuple[int, str]:
    """The one destroy guard (``keys destroy``, ``keys cleanup``, the daemon, Transit trim): raise or say why.

    Runs inside the destroying transaction, after the version's row is
    locked, and returns (rows referencing it, the reason destruction is
    allowed).  Each check names the command to run first.  ``force_retention``
    (the operator's ``--force --yes-destroy-key-version V``) skips only the
    retention settings, ``[retention] keep_versions`` and the policy's own
    minimum: never the status, the reference count, the floor or a backup
    that needs the version.  Those protect ciphertext that exists; retention
    settings are the operator's own caution, which the operator may waive.
    """
    v, kr = kv.version, kv.keyring
    if kv.status is KeyStatus.DESTROYED:
        raise PolicyViolationError(f"key version {v} is already destroyed")
    if kv.status is not KeyStatus.REVOKED:
        first = (
            "rotate first (`nebula-credential keys rotate`), re-encrypt, then revoke it"
            if kv.status is KeyStatus.ACTIVE
            else f"revoke it first: `nebula-credential --keyring {kr} keys revoke {v}`"
        )
        raise PolicyViolationError(
            f"key version {v} is {kv.status.value}; only a revoked version can be destroyed: {first}"
        )
    # 1. no row may reference it, counted by envelope header (what decryption uses)
    refs = tx.versions_referenced(kr).get(v, 0)
    if refs:
        raise PolicyViolationError(
            f"key version {v} is still used by {refs} credential(s) (by envelope header); "
            f"reinstate it (`nebula-credential keys reinstate {v}`) and run `nebula-credential reencrypt` first"
        )
    # 2. backups: a version an unexpired registered backup needs is never destroyed
    hold = backup_hold(tx, kr, v, now)
    if hold is not None:
        raise PolicyViolationError(f"key version {v} is kept: {hold}")
    # 3. the floor: every process has re-read key statuses since the revocation
    floor = destroy_floor(config, stored_refresh_interval(tx))
    held = now - (kv.revoked_at or kv.status_changed_at or now)
    if held < floor:
        raise PolicyViolationError(
            f"key version {v} was revoked {format_duration(max(held, timedelta(0)))} ago; it can be "
            f"destroyed {format_duration(floor - held)} from now (floor: twice the largest refresh_interval "
            f"of any process on this store, {format_duration(floor)}, so no process still writes under it)"
        )
    force_hint = f"`nebula-credential keys destroy {v} --force --yes-destroy-key-version {v}`"
    versions = tx.list_versions(kr)
    forced: list[str] = []
    # 4. keep_versions: the newest versions stay whatever the policy says (a retention setting: --force skips it)
    keep = config.retention.keep_versions
    if v in kept_versions(versions, keep):
        if not force_retention:
            raise PolicyViolationError(
                f"key version {v} is one of the newest {keep} version(s) kept by "
                f"`[retention] keep_versions = {keep}`; rotate again, lower keep_versions in the "
                f"config file, or override it with {force_hint}"
            )
        forced.append(f"keep_versions = {keep}")
    # 5. the retention policy's minimum (--force skips it too)
    with_refs = RetentionContext(now=now, versions=versions, references={v: refs})
    allowed = retention.allows(kv, with_refs)
    if allowed is None:
        if not force_retention:
            raise PolicyViolationError(
                f"retention policy {retention.name!r} keeps key version {v} for now; wait, or "
                f"override the retention minimum with {force_hint}"
            )
        forced.append(f"retention policy {retention.name!r}")
    # the policy's reason, then what the operator waived (never empty: one or the other)
    reasons = [allowed] if allowed else []
    if forced:
        reasons.append(f"forced past {' and '.join(forced)} by the operator")
    return refs, "; ".join(reasons)


@dataclass(frozen=True, slots=True)
class KeepReason:
    """One reason the guard keeps a version's material, and when it lapses (None: not by time alone)."""

    reason: str
    until: datetime | None = None
    backup: str | None = None

    def __str__(self) -> str:
        if self.backup is not None or self.until is None:  # a backup hold's text already names its date
            return self.reason
        return f"{self.reason} until {_when(self.until)}"

    def to_json(self, version: int) -> dict[str, Any]:
        out: dict[str, Any] = {"version": version, "reason": str(self)}
        if self.until is not None:
            out["until"] = self.until.isoformat()
        if self.backup is not None:
            out["backup"] = self.backup
        return out


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def keep_reasons(
    tx: StoreTx,
    kv: KeyVersion,
    *,
    now: datetime,
    config: KeyManagementConfig,
    retention: KeyRetentionPolicy,
) -> list[KeepReason]:
    """Every reason :func:`check_destroy` would refuse ``kv`` now (empty: it may be destroyed).

    ``check_destroy`` stops at the first refusal with the command to run;
    this lists them all, with the date each lapses where one exists, for
    ``keys cleanup --dry-run``.  Both read the same facts (status, references
    by envelope header, backup holds, :func:`destroy_floor`, ``keep_versions``,
    the retention policy), in the same order.
    """
    if kv.status is KeyStatus.DESTROYED:
        return []
    out: list[KeepReason] = []
    if kv.status is KeyStatus.ACTIVE:  # the rest (references, backups) is expected of the active version
        return [KeepReason("active: new credentials are written under it")]
    if kv.status is KeyStatus.VALID:
        out.append(KeepReason("valid: only a revoked version is destroyed (it enters grace once nothing "
                              "references it)"))
    elif kv.status is KeyStatus.GRACE:
        entered = kv.status_changed_at or kv.created_at
        out.append(KeepReason("grace: revoked after the grace period (only a revoked version is destroyed)",
                              entered + config.keys.grace_period))
    versions = tx.list_versions(kv.keyring)
    refs = tx.versions_referenced(kv.keyring).get(kv.version, 0)
    if refs:
        out.append(KeepReason(f"used by {refs} credential(s) (by envelope header); run `nebula-credential "
                              "reencrypt`"))
    hold = backup_hold(tx, kv.keyring, kv.version, now)
    if hold is not None:
        out.append(KeepReason(str(hold), hold.until, hold.backup))
    if kv.status is KeyStatus.REVOKED:
        floor = destroy_floor(config, stored_refresh_interval(tx))  # the same floor check_destroy applies
        revoked = kv.revoked_at or kv.status_changed_at or now
        if now - revoked < floor:
            out.append(KeepReason(f"destroy floor {format_duration(floor)} from revocation (twice "
                                  "refresh_interval)", revoked + floor))
    keep = config.retention.keep_versions
    if kv.version in kept_versions(versions, keep):
        out.append(KeepReason(f"one of the newest {keep} version(s) (`[retention] keep_versions = {keep}`)"))
    if kv.status is KeyStatus.REVOKED:
        kept = retention.keeps(kv, RetentionContext(now=now, versions=versions, references={kv.version: refs}))
        if kept is not None:
            out.append(KeepReason(*kept))
    return out


__all__ = ["REFRESH_META", "KeepReason", "announce_refresh_interval", "check_destroy", "destroy_floor", "keep_reasons",
           "stored_refresh_interval"]
