"""What the console shows, read from the store; and the re-encryption passes it starts.

Everything here is synchronous (the app runs it in a thread pool) and reads
through the vault's named operations, so the pages show the same truth as ``status``,
the metrics and every other instance.  No credential value is ever read: the
console deals in versions, counts and audit events.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..exceptions import NebulaCredentialError
from ..metrics import keyring_vaults
from ..models import KeyStatus, KeyVersion, from_epoch, to_epoch
from ..reencrypt import scope_order
from ..vault import Vault

#: Statuses in lifecycle order (the timeline's legend and the overview's columns).
STATUSES = tuple(s.value for s in KeyStatus)


@dataclass(frozen=True, slots=True)
class KeyringView:
    name: str
    versions: list[KeyVersion]
    credentials: dict[int, int]
    active_version: int | None
    age_days: float
    max_age_days: float
    total: int
    pending: int
    progress: float
    pending_by_scope: dict[str, int]
    alerts: list[dict[str, str]]
    #: A Transit key's keyring: Vault's key type, and each readable version's public key (signing types).
    transit_type: str | None = None
    public_keys: dict[int, str] = field(default_factory=dict)
    #: ``[reencryption] priority``: the order the engine re-encrypts scopes in (then the rest alphabetically).
    priority: tuple[str, ...] = ()

    def scope_order(self, scopes: list[str]) -> list[str]:
        """Scopes as a re-encryption pass takes them, so the progress table reads top to bottom."""
        return scope_order(scopes, self.priority)

    @property
    def age_share(self) -> float:
        return self.age_days / self.max_age_days if self.max_age_days else 0.0


def keyring_names(vault: Vault) -> list[str]:
    return [v.keyring_name for v in keyring_vaults(vault)]


def keyring_view(vault: Vault, name: str) -> KeyringView:
    kr = vault if name == vault.keyring_name else vault.keyring(name)
    status = kr.status()  # versions, counts, re-encryption and the alert rules, as `status --json`
    versions, counts, by_scope = kr.key_overview()
    active = next((v for v in versions if v.status is KeyStatus.ACTIVE), None)
    now = kr.clock()
    age = (now - active.created_at).total_seconds() / 86400 if active else 0.0
    r = status["reencryption"]
    return KeyringView(
        name=name,
        versions=sorted(versions, key=lambda v: v.version, reverse=True),
        credentials=dict(counts),
        active_version=active.version if active else None,
        age_days=age,
        max_age_days=kr.config.keys.max_key_age.total_seconds() / 86400,
        total=r["total"],
        pending=r["pending"],
        progress=r["progress"],
        pending_by_scope={s: n for s, n in sorted(by_scope.items()) if n},
        alerts=status["alerts"],
        **_transit_facts(vault, name),
        priority=kr.config.reencryption.priority,
    )


def _transit_facts(vault: Vault, keyring: str) -> dict[str, Any]:
    """The key type and public keys of a Transit key's keyring ({} for an ordinary keyring)."""
    from ..transit import keyring_facts

    return keyring_facts(vault, keyring)


def timeline(vault: Vault, name: str) -> dict[str, Any]:
    """Each version's statuses over time, from the audit trail (columns as a fallback),
    and the rotation times: the data of the keyring's timeline chart."""
    kr = vault if name == vault.keyring_name else vault.keyring(name)
    versions = kr.keys.list()
    events = vault.audit_events(limit=1000, action="key.*", keyring=name)
    now = to_epoch(vault.clock()) or 0.0
    changes: dict[int, list[tuple[float, str]]] = {
        v.version: [(to_epoch(v.created_at) or 0.0, KeyStatus.ACTIVE.value)] for v in versions
    }
    rotations: list[float] = []
    for ev in events:
        details = json.loads(ev.details) if ev.details else {}
        if ev.action == "key.rotate":
            rotations.append(ev.ts)
            old = details.get("old_version")
            if isinstance(old, int) and old in changes:
                changes[old].append((ev.ts, KeyStatus.VALID.value))
        elif isinstance(details.get("new_status"), str) and ev.key_version in changes:
            changes[ev.key_version].append((ev.ts, details["new_status"]))
    out = []
    for v in sorted(versions, key=lambda v: v.version):
        steps = sorted(changes[v.version])
        if steps[-1][1] != v.status.value:  # events older than the search window: trust the row
            steps.append((to_epoch(v.status_changed_at or v.created_at) or now, v.status.value))
        segments = []
        for i, (start, status) in enumerate(steps):
            end = steps[i + 1][0] if i + 1 < len(steps) else now
            last = i + 1 == len(steps)
            if end > start or last:  # the current status is drawn even when it began just now
                segments.append([start, start if status == KeyStatus.DESTROYED.value else end, status])
        out.append({"version": v.version, "status": v.status.value, "segments": segments})
    return {"keyring": name, "now": now, "versions": out, "rotations": sorted(rotations)}


def _who(actor: str, details: str) -> str:
    """Who acted: for a server request the token, as ``display_name (accessor)``; else the process's actor.

    Every HTTP request is written by the server process, so its OS user
    (``actor``) names no one; the request's event carries the token's
    accessor and display name.  Shown, never re-written: the event stays
    as the chain verified it.
    """
    try:
        data = json.loads(details) if details else {}
    except ValueError:
        return actor
    accessor = data.get("accessor") if isinstance(data, dict) else None
    if not isinstance(accessor, str) or not accessor:
        return actor
    name = data.get("display_name")
    return f"{name} ({accessor})" if isinstance(name, str) and name else f"token ({accessor})"


def audit_state(vault: Vault, limit: int = 100) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chain check and the newest events (action, actor, keyring, version, outcome; no details)."""
    result = vault.audit.verify().to_json()
    rows = vault.audit_events(limit=limit)
    events = [
        {
            "seq": r.seq,
            "time": _iso(from_epoch(r.ts)),
            "actor": _who(r.actor, r.details),
            "action": r.action,
            "keyring": r.keyring or "",
            "version": r.key_version,
            "outcome": r.outcome,
        }
        for r in reversed(rows)
    ]
    return result, events


def provider_health(vault: Vault) -> dict[str, Any]:
    """One wrap/unwrap round trip (``provider check``), timed."""
    started = time.perf_counter()
    try:
        vault.provider.check()
    except NebulaCredentialError as exc:
        return {"ok": False, "provider": vault.provider.name, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "provider": vault.provider.name, "ms": (time.perf_counter() - started) * 1000}


def _iso(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else ""


# ---- re-encryption passes started from the console ---------------------------
@dataclass
class Job:
    """One re-encryption pass of one keyring, run in a thread; progress per scope."""

    keyring: str
    started_by: str
    pending_at_start: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    done_by_scope: dict[str, int] = field(default_factory=dict)
    finished: float | None = None
    summary: str = ""
    error: str = ""

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def rows_per_second(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, pending: int) -> float | None:
        rate = self.rows_per_second
        return pending / rate if rate > 0 and self.running else None


class Jobs:
    """At most one console-started pass per keyring at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def get(self, keyring: str) -> Job | None:
        with self._lock:
            return self._jobs.get(keyring)

    def start(self, vault: Vault, keyring: str, started_by: str) -> Job:
        kr = vault if keyring == vault.keyring_name else vault.keyring(keyring)
        with self._lock:
            current = self._jobs.get(keyring)
            if current is not None and current.running:
                return current
            pending = kr.key_overview().pending_by_scope
            job = Job(keyring, started_by, {s: n for s, n in pending.items() if n})
            self._jobs[keyring] = job
        threading.Thread(target=self._run, args=(kr, job), name=f"console-reencrypt-{keyring}", daemon=True).start()
        return job

    def _run(self, kr: Vault, job: Job) -> None:
        def progress(scope: str, rows: int) -> None:
            job.done += rows
            job.done_by_scope[scope] = job.done_by_scope.get(scope, 0) + rows

        try:
            result = kr.reencrypt(progress=progress)
            job.summary = (
                f"{result.reencrypted:,} re-encrypted, {result.conflicts:,} conflicts, "
                f"{len(result.failures):,} failed in {result.seconds:.1f} s"
            )
        except NebulaCredentialError as exc:
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.monotonic()
