"""Re-encryption: move every stored credential to the active key version.

One record is re-encrypted as plainly as ``MultiFernet.rotate``
(:func:`reencrypt_row`): decrypt with the version its envelope names,
encrypt with the active one.  Around that sit:

* streaming: rows are read one batch at a time by keyset paging
  (``id > last``), never the whole table;
* compare-and-swap on the row revision: an application write that lands
  between our read and our write wins, and the row is left for the next
  pass (where it usually no longer needs us: the writer used the active key);
* priority: scopes in the configured order, then the rest alphabetically;
* crash safety: each batch commits on its own and a finished row is simply
  no longer stale, so a pass started after any interruption resumes where
  the last one stopped without redoing anything;
* failures: a row that cannot be decrypted (corrupt, revoked or missing
  key) is reported by id and reason, audited, counted and never rewritten;
* workers: on a store with ``SKIP LOCKED`` (PostgreSQL) each worker fetches,
  re-encrypts and updates its batch in one transaction holding the row
  locks, so workers in one process or on several hosts never take the same
  row.  SQLite has one writer at a time and our AES-GCM calls hold the GIL,
  so extra workers there would only contend: they are refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._sleep import sleep
from .config import DEFAULT_PRIORITY
from .envelope import credential_context, credential_contexts, peek_version, version_prefix
from .exceptions import (
    ConfigError,
    DecryptionError,
    EnvelopeFormatError,
    KeyNotFoundError,
    KeyRevokedError,
    NebulaCredentialError,
    ProviderPermissionError,
)
from .models import EncryptedCredential, KeyStatus

if TYPE_CHECKING:
    from .keys import KeyManager
    from .store import ReencryptPage, ReencryptRow, StoreTx

#: What is wrong with one row (or its key) and is reported and skipped.  Anything
#: else -- store or provider unavailable, the usage bound -- stops the pass with
#: its error: the committed batches stay and the next pass resumes.
ROW_ERRORS = (
    DecryptionError,
    EnvelopeFormatError,
    KeyNotFoundError,
    KeyRevokedError,
    ProviderPermissionError,
)

#: Update tuple for ``StoreTx.cas_update_envelopes``: (id, expected revision, version, envelope).
Update = tuple[str, int, int, bytes]


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
    pending_by_scope: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    workers: int = 1
    #: Past versions (``credential_versions``) moved to the active key version.
    versions_reencrypted: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def rows_per_second(self) -> float:
        return self.reencrypted / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "active_version": self.active_version,
            "total": self.total,
            "reencrypted": self.reencrypted,
            "conflicts": self.conflicts,
            "failed": len(self.failures),
            "failures": [
                {"id": f.id, "key_version": f.key_version, "reason": f.reason}
                for f in self.failures
            ],
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "by_scope": self.by_scope,
            "stopped": self.stopped,
            "workers": self.workers,
            "versions_reencrypted": self.versions_reencrypted,
        }


_Outcome = tuple["ReencryptPage", list[Update], list["Failure"], int]

Progress = Callable[[str, int], None]
"""(scope, rows handled in this batch) -> None; called once per batch, never concurrently."""


def scope_order(scopes: Iterable[str], priority: Iterable[str]) -> list[str]:
    """Priority scopes first, in the given order, then the rest alphabetically."""
    present = set(scopes)
    first = list(dict.fromkeys(s for s in priority if s in present))
    return first + sorted(present - set(first))


def pending_counts(km: KeyManager) -> tuple[int, int, int]:
    """(active version, credentials not under it, all credentials)."""
    active = km.active_version().version
    counts = km.credential_counts()
    total = sum(counts.values())
    return active, total - counts.get(active, 0), total


def reencrypt_row(km: KeyManager, row: EncryptedCredential | ReencryptRow) -> bytes:
    """The whole idea in two lines: open with the old version, seal with the active one."""
    aad = credential_context(row.keyring, row.id, row.scope)
    return km.encrypt(km.decrypt(row.envelope, aad), aad)


def check_workers(km: KeyManager, workers: int) -> None:
    """Refuse parallel workers on a store that cannot hand out disjoint row locks."""
    if workers < 1:
        raise ConfigError("reencryption.workers", f"must be at least 1, got {workers}")
    if workers > 1 and not km.store.supports_skip_locked:
        raise ConfigError(
            "reencryption.workers",
            f"{workers} workers need a store with SELECT ... SKIP LOCKED (PostgreSQL); "
            f"{km.store.scheme or type(km.store).__name__} allows one writer at a time, "
            "so run with --workers 1 (a single worker already reaches most of its write speed)",
        )


class _Pacer:
    """A shared rows-per-second budget: workers sleep until their batch fits it."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, rows: int, should_stop: Callable[[], bool]) -> None:
        if not self._interval or rows <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + rows * self._interval
            wait = self._next - now
        # sleep in short slices so a stop request is honoured promptly
        deadline = time.monotonic() + wait
        while not should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sleep(min(left, 0.2))


class _Pass:
    """The shared state of one pass: result, cursor, pacing; safe across worker threads."""

    def __init__(
        self,
        km: KeyManager,
        result: ReencryptResult,
        *,
        batch_size: int,
        progress: Progress | None,
        should_stop: Callable[[], bool],
        rate_limit: float,
    ) -> None:
        self.km = km
        self.result = result
        self.batch_size = batch_size
        self.progress = progress
        self.user_stop = should_stop
        self.pacer = _Pacer(rate_limit)
        self.lock = threading.Lock()
        self.locked_mode = km.store.supports_skip_locked
        self.error: BaseException | None = None
        self.after: str | None = None  # shared keyset cursor of the current (scope, version)

    def should_stop(self) -> bool:
        return self.error is not None or self.user_stop()

    # ---- one batch -----------------------------------------------------------
    def crypt(self, rows: Sequence[ReencryptRow]) -> tuple[list[Update], list[Failure]]:
        """:func:`reencrypt_row` for each row, written out: this loop is the pass's CPU."""
        decrypt, encrypt = self.km.decrypt, self.km.encrypt
        updates: list[Update] = []
        failures: list[Failure] = []
        append = updates.append
        # a batch is one keyring and scope: their context fields are encoded once (re-done if a row differs)
        keyring = scope = ""
        context = credential_contexts(keyring, scope)
        # the version of each new envelope, read per envelope (a usage-bound rotation may change it
        # mid-batch): one prefix compare while it stays the same, the full header check when it changes
        prefix, version = b"\x00", 0  # no envelope starts with a NUL byte: the first row reads its header
        for row in rows:
            kr, cid, sc, _, envelope, revision = row
            if sc != scope or kr != keyring:
                keyring, scope = kr, sc
                context = credential_contexts(kr, sc)
            try:
                aad = context(cid)
                blob = encrypt(decrypt(envelope, aad), aad)
            except ROW_ERRORS as exc:
                failures.append(Failure(cid, row.key_version, _reason(exc)))
                continue
            if not blob.startswith(prefix):
                version = peek_version(blob)
                prefix = version_prefix(version)
            append((cid, revision, version, blob))
        return updates, failures

    def write(self, tx: StoreTx, updates: list[Update], failures: list[Failure]) -> int:
        """The CAS update and the failure events, in the caller's transaction.

        Updates under a version revoked or destroyed since they were encrypted
        are dropped (counted as conflicts): their rows stay as they were and
        the next pass moves them under the active version read afresh.
        """
        if updates and not self.km.writable(tx, {u[2] for u in updates}):
            updates = []
        changed = tx.cas_update_envelopes(self.km.keyring, updates) if updates else 0
        audit = self.km.audit
        if audit is not None:
            for f in failures:
                audit.record(tx, "reencrypt.failed", keyring=self.km.keyring, version=f.key_version,
                             credential_id=f.id, outcome="error", reason=f.reason)
        return changed

    def claim(self, tx: StoreTx, version: int, scope: str, start: list[Any]) -> ReencryptPage:
        """The next batch after the shared cursor; with row locks where the store has them.

        Fetches are serialised so every worker reads from the newest cursor:
        a row behind it was taken by someone (done, failed, or locked by a
        worker still busy with it).  ``start`` pins the first attempt's
        cursor, so a transaction re-run after a lost connection takes the
        same rows again instead of skipping them.
        """
        with self.lock:
            if not start:
                start.append(self.after)
            rows = tx.fetch_for_reencryption(self.km.keyring, version, scope, start[0], self.batch_size,
                                             skip_locked=self.locked_mode, skip_corrupt=True)
            if rows.fetched and (self.after is None or _later(rows.last_id, self.after)):
                self.after = rows.last_id
        return rows

    def step(self, version: int, scope: str) -> bool:
        """One batch; False when the (scope, version) has nothing left."""
        store = self.km.store
        start: list[Any] = []
        outcome: _Outcome
        if self.locked_mode:
            # fetch, crypto and CAS in one transaction holding the row locks
            def locked(tx: StoreTx) -> _Outcome:
                rows = self.claim(tx, version, scope, start)
                updates, failures = self.crypt(rows)
                failures += _corrupt_failures(rows)
                return rows, updates, failures, self.write(tx, updates, failures)

            outcome = store.run(locked, idempotent=True)  # a CAS may apply twice harmlessly
        else:
            rows = store.run(lambda tx: self.claim(tx, version, scope, start), write=False)
            if not rows.fetched:
                return False
            updates, failures = self.crypt(rows)
            failures += _corrupt_failures(rows)
            changed = store.run(lambda tx: self.write(tx, updates, failures),
                                idempotent=not failures)
            outcome = rows, updates, failures, changed
        rows, updates, failures, changed = outcome
        if not rows.fetched:
            return False
        self.account(scope, rows.fetched, len(updates), changed, failures)
        self.pacer.take(rows.fetched, self.should_stop)
        return rows.fetched >= self.batch_size or self.locked_mode

    def account(self, scope: str, rows: int, attempted: int, changed: int,
                failures: list[Failure]) -> None:
        with self.lock:
            r = self.result
            r.reencrypted += changed
            r.conflicts += attempted - changed
            r.failures.extend(failures)
            r.by_scope[scope] = r.by_scope.get(scope, 0) + changed
            if self.progress is not None:
                self.progress(scope, rows)

    # ---- one (scope, version) ------------------------------------------------
    def drain(self, version: int, scope: str) -> None:
        try:
            while not self.should_stop() and self.step(version, scope):
                pass
        except BaseException as exc:
            with self.lock:
                if self.error is None:
                    self.error = exc
            raise

    def run_slice(self, version: int, scope: str, workers: int) -> None:
        self.after = None
        if workers == 1:
            self.drain(version, scope)
            return
        threads = [
            threading.Thread(target=self._quiet_drain, args=(version, scope),
                             name=f"reencrypt-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _quiet_drain(self, version: int, scope: str) -> None:
        with suppress(BaseException):  # kept in self.error, re-raised by run_slice
            self.drain(version, scope)

    # ---- rows under a revoked or destroyed version ------------------------
    def report_undecryptable(self, version: int, scope: str, status: str) -> None:
        """Report each row once per pass, never decrypt or rewrite it.

        The rows are listed in the result; the audit trail gets one
        ``reencrypt.blocked`` event per version and scope per pass, not one per
        row, so a daemon passing every minute does not flood it with a state
        the operator chose (and ``doctor`` keeps pointing at).
        """
        reason = f"key version {version} is {status}; reinstate it (if revoked) to re-encrypt"
        after: Any = None
        count = 0
        while not self.should_stop():
            with self.km.store.read() as tx:
                rows = tx.fetch_for_reencryption(self.km.keyring, version, scope, after,
                                                 self.batch_size, skip_corrupt=True)
            if not rows.fetched:
                break
            count += rows.fetched
            self.account(scope, rows.fetched, 0, 0,
                         [Failure(r.id, version, reason) for r in rows] + _corrupt_failures(rows))
            if rows.fetched < self.batch_size:
                break
            after = rows.last_id
        audit = self.km.audit
        if count and audit is not None:
            self.km.store.run(lambda tx: audit.record(
                tx, "reencrypt.blocked", keyring=self.km.keyring, version=version, outcome="error",
                scope=scope, credentials=count, status=status))


def run_pass(
    km: KeyManager,
    *,
    batch_size: int = 500,
    priority: Iterable[str] = DEFAULT_PRIORITY,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    rate_limit: float = 0.0,
    workers: int = 1,
) -> ReencryptResult:
    """One pass over every credential not under the active version.

    Safe to run while applications read and write, safe to kill at any
    moment, and safe to run from several processes at once (on SQLite
    they take turns; on PostgreSQL they share the work).  Store outages
    beyond the store's retries raise; everything committed so far stays.
    """
    if batch_size < 1:
        raise ConfigError("reencryption.batch_size", f"must be at least 1, got {batch_size}")
    check_workers(km, workers)
    # each worker holds a batch transaction open, and may need a short autonomous
    # one beside it (the encryption counter); leave room for both plus the caller
    km.store.ensure_connections(2 * workers + 2)
    start = time.perf_counter()
    km.refresh()  # the store's active version, not one cached before another instance rotated
    active = km.current_key()
    result = ReencryptResult(active_version=active.version, workers=workers)
    with km.store.read() as tx:
        versions = {kv.version: kv for kv in tx.list_versions(km.keyring)}
        per_scope = tx.count_pending_by_scope(km.keyring, active.version)
        # older versions, and versions that do not exist (reported as failures);
        # rows under an existing newer one (a rotation after our refresh) are fine
        stale_versions = sorted(
            v for v in tx.count_by_version(km.keyring)
            if v < active.version or (v > active.version and v not in versions)
        )
    result.total = sum(per_scope.values())
    result.pending_by_scope = dict(per_scope)
    order = scope_order(per_scope, priority)
    _audit(km, "reencrypt.start", active.version, pending=result.total, scopes=order,
           batch_size=batch_size, workers=workers, rate_limit=rate_limit)
    job = _Pass(km, result, batch_size=batch_size, progress=progress,
                should_stop=should_stop, rate_limit=rate_limit)
    try:
        for scope in order:
            for version in stale_versions:
                if job.should_stop():
                    break
                kv = versions.get(version)
                if kv is not None and kv.status in (KeyStatus.REVOKED, KeyStatus.DESTROYED):
                    job.report_undecryptable(version, scope, kv.status.value)
                else:
                    job.run_slice(version, scope, workers)
        if not job.should_stop():
            move_versions(km, result, batch_size=batch_size, should_stop=job.should_stop)
        if not job.should_stop():
            result.failures += _mislabelled(km)
    finally:
        result.stopped = job.should_stop()
        result.seconds = time.perf_counter() - start
        if job.error is None:
            _audit(km, "reencrypt.finish", active.version,
                   outcome="ok" if result.ok and not result.stopped else "warning",
                   pending=result.total, reencrypted=result.reencrypted,
                   versions_reencrypted=result.versions_reencrypted,
                   conflicts=result.conflicts, failed=len(result.failures),
                   stopped=result.stopped, seconds=round(result.seconds, 3))
    return result


def move_versions(km: KeyManager, result: ReencryptResult, *, batch_size: int,
                  should_stop: Callable[[], bool] = lambda: False) -> None:
    """Move every live stored version (version history) to the active key version.

    After the current rows, in id order, a batch per transaction.  Each
    update is a compare-and-swap on the envelope read, so a version
    destroyed, pruned or moved by another pass meanwhile is left alone; a
    version that cannot be opened is reported as ``id#vN``, never
    rewritten.  Versions under a revoked or destroyed key are reported the
    same way (their key is not used to decrypt).
    """
    kr = km.keyring
    active = result.active_version
    after: tuple[str, int] | None = None
    refused = 0
    while not should_stop():
        with km.store.read() as tx:
            rows = tx.versions_for_reencryption(kr, active, after, batch_size)
        if not rows:
            return
        after = (rows[-1].id, rows[-1].version)
        updates: list[tuple[str, int, bytes, int, bytes]] = []
        for row in rows:
            assert row.envelope is not None
            aad = credential_context(kr, row.id, row.scope)
            try:
                sealed = km.encrypt(km.decrypt(row.envelope, aad), aad)
            except ROW_ERRORS as exc:
                result.failures.append(Failure(f"{row.id}#v{row.version}", row.key_version, _reason(exc)))
                continue
            updates.append((row.id, row.version, row.envelope, peek_version(sealed), sealed))
        if not updates:
            continue
        with km.store.transaction() as tx:
            if not km.writable(tx, {u[3] for u in updates}):
                refused += 1
                if refused >= 5:
                    raise km.write_refused({u[3] for u in updates})
                after = (rows[0].id, rows[0].version - 1)
                continue  # the active version was retired under us: read and seal again
            changed = tx.cas_update_version_envelopes(kr, updates)
        result.versions_reencrypted += changed
        result.conflicts += len(updates) - changed


def _audit(
    km: KeyManager, action: str, version: int, *, outcome: str = "ok", **details: Any
) -> None:
    audit = km.audit
    if audit is None:
        return
    km.store.run(lambda tx: audit.record(tx, action, keyring=km.keyring, version=version,
                                         outcome=outcome, **details))


def _reason(exc: NebulaCredentialError) -> str:
    return f"{type(exc).__name__}: {exc}"


def _corrupt_failures(page: ReencryptPage) -> list[Failure]:
    """Rows the store could not decode: reported by id, never rewritten (a person must look)."""
    return [Failure(e.record, e.key_version or 0, _reason(e)) for e in page.corrupt]


def _mislabelled(km: KeyManager, limit: int = 1000) -> list[Failure]:
    """Rows whose key_version column lies about their envelope header: corrupt records, reported.

    A pass never selects one whose column already names the active version,
    so it would stay under the old version unseen; it is named here (and by
    ``doctor``), and the destroy guard counts it by its header.
    """
    with km.store.read() as tx:
        lying = tx.version_mismatches(km.keyring, limit)
    return [
        Failure(cid, header, f"CorruptRecordError: its key_version column says {column} but its envelope "
                f"header names version {header}; `nebula-credential get` it and `put` it again")
        for cid, column, header in lying
    ]


def _later(a: Any, b: Any) -> bool:
    """Keyset order of two ids as SQL sorts them; a corrupt (non-text) id sorts after text."""
    if type(a) is type(b):
        return bool(a > b)
    return not isinstance(a, str)
