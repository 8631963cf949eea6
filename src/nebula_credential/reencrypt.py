"""Re-encryption: move every stored credential to the active key version.

One record is re-encrypted as plainly as ``MultiFernet.rotate``: decrypt
with the version its envelope names, encrypt with the active one.  Around
that sit the batching (never the whole table in memory), compare-and-swap
on the row revision (a concurrent application write always wins), scope
priority, and failure reporting (a row that cannot be decrypted is
reported and skipped, never rewritten).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .envelope import credential_context
from .exceptions import NebulaCredentialError
from .models import EncryptedCredential, KeyStatus

if TYPE_CHECKING:
    from .keys import KeyManager
    from .store.base import StoreTx


@dataclass(slots=True)
class Failure:
    id: str
    key_version: int
    reason: str


@dataclass(slots=True)
class ReencryptResult:
    """What one pass did; ``ok`` is False when any row could not be moved."""

    active_version: int
    total: int = 0
    reencrypted: int = 0
    conflicts: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    by_scope: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "active_version": self.active_version,
            "total": self.total,
            "reencrypted": self.reencrypted,
            "conflicts": self.conflicts,
            "failed": len(self.failures),
            "failures": [{"id": f.id, "key_version": f.key_version, "reason": f.reason} for f in self.failures],
            "seconds": round(self.seconds, 3),
            "by_scope": self.by_scope,
        }


Progress = Callable[[str, int], None]
"""(scope, rows handled in this batch) -> None"""


def scope_order(scopes: Iterable[str], priority: Iterable[str]) -> list[str]:
    """Priority scopes first, in the given order, then the rest alphabetically."""
    present = set(scopes)
    first = [s for s in priority if s in present]
    return first + sorted(present - set(first))


def pending_counts(km: KeyManager) -> tuple[int, int, int]:
    """(active version, credentials not under it, all credentials)."""
    active = km.active_version().version
    counts = km.credential_counts()
    total = sum(counts.values())
    return active, total - counts.get(active, 0), total


def reencrypt_row(km: KeyManager, row: EncryptedCredential) -> bytes:
    """The whole idea in two lines: open with the old version, seal with the active one."""
    aad = credential_context(row.keyring, row.id, row.scope)
    return km.encrypt(km.decrypt(row.envelope, aad), aad)


def run_pass(
    km: KeyManager,
    *,
    batch_size: int = 500,
    priority: Iterable[str] = ("production", "user", "development"),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    rate_limit: float = 0.0,
) -> ReencryptResult:
    """One pass over every credential not under the active version."""
    start = time.perf_counter()
    active = km.current_key()
    result = ReencryptResult(active_version=active.version)
    with km.store.read() as tx:
        counts = tx.count_by_version(km.keyring)
        versions = {kv.version: kv for kv in tx.list_versions(km.keyring)}
    stale_versions = sorted(v for v in counts if v != active.version)
    result.total = sum(counts[v] for v in stale_versions)
    scopes: set[str] = set()
    with km.store.read() as tx:
        for v in stale_versions:
            scopes.update(tx.scopes_for_version(km.keyring, v))
    prio = list(priority)
    for scope in scope_order(scopes, prio):
        for version in stale_versions:
            kv = versions.get(version)
            if kv is not None and kv.status in (KeyStatus.REVOKED, KeyStatus.DESTROYED):
                # not decryptable: report each row once, never rewrite
                _report_undecryptable(km, version, scope, kv.status.value, result, batch_size)
                continue
            after: str | None = None
            while not should_stop():
                batch_start = time.perf_counter()
                rows = km.store.run(
                    partial(_fetch, keyring=km.keyring, version=version, scope=scope,
                            after=after, limit=batch_size),
                    write=False,
                )
                if not rows:
                    break
                after = rows[-1].id
                updates = []
                for row in rows:
                    try:
                        blob = reencrypt_row(km, row)
                        updates.append((row.id, row.revision, int.from_bytes(blob[4:8]), blob))
                    except NebulaCredentialError as exc:
                        result.failures.append(Failure(row.id, row.key_version, _reason(exc)))
                # compare-and-swap: safe to run again whole after a lost connection
                changed = km.store.run(
                    partial(_cas, keyring=km.keyring, updates=updates), idempotent=True
                )
                result.reencrypted += changed
                result.conflicts += len(updates) - changed
                result.by_scope[scope] = result.by_scope.get(scope, 0) + changed
                if progress is not None:
                    progress(scope, len(rows))
                if rate_limit > 0:
                    wanted = len(rows) / rate_limit
                    spent = time.perf_counter() - batch_start
                    if wanted > spent:
                        time.sleep(wanted - spent)
                if len(rows) < batch_size:
                    break
    result.seconds = time.perf_counter() - start
    return result


def _fetch(
    tx: StoreTx, *, keyring: str, version: int, scope: str, after: str | None, limit: int
) -> list[EncryptedCredential]:
    return tx.fetch_for_reencryption(keyring, version, scope, after, limit)


def _cas(tx: StoreTx, *, keyring: str, updates: list[tuple[str, int, int, bytes]]) -> int:
    return tx.cas_update_envelopes(keyring, updates)


def _report_undecryptable(
    km: KeyManager, version: int, scope: str, status: str, result: ReencryptResult, page: int
) -> None:
    after: str | None = None
    while True:
        with km.store.read() as tx:
            rows = tx.fetch_for_reencryption(km.keyring, version, scope, after, page)
        for row in rows:
            result.failures.append(Failure(row.id, version, f"key version {version} is {status}"))
        if len(rows) < page:
            return
        after = rows[-1].id


def _reason(exc: NebulaCredentialError) -> str:
    return f"{type(exc).__name__}: {exc}"
