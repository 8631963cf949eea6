"""Secret leases, as Vault's: what a dynamic secret is, when it ends, and its revocation, exactly once.

A lease is a row of ``secret_leases`` whose deciding fields (its id, engine,
engine body, token, times) are bound by a row MAC, so a database writer
cannot point a lease at another PostgreSQL user, or stretch one.  The engine
that issued it revokes it through a :class:`LeaseHandler` (by engine kind).

Revocation happens once across every process on the store: a revoker first
*claims* the lease with one conditional UPDATE (``claimed_by``,
``claim_until``), and only the winner calls the handler.  A failed
revocation releases the claim with a back-off (``next_attempt``) and an
error, and stays in the table until it succeeds: it is retried by every
later :meth:`Leases.sweep`, counted (``failing``), and alerted on; it is
never forgotten.  A holder that dies mid-revocation leaves a claim that
expires; handlers are idempotent (a user already gone is revoked).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import NebulaCredentialError
from .rowmac import RowMac, rejected_action
from .store import LeaseRow

if TYPE_CHECKING:
    from .store import StoreTx
    from .vault import Vault

__all__ = ["TABLE", "Lease", "LeaseHandler", "LeaseInputError", "LeaseNotFoundError", "Leases", "SweepReport",
           "lease_mac_fields", "new_lease_id"]

logger = logging.getLogger(__name__)

TABLE = "secret_leases"
#: How long a revoker's claim holds before another process may try the same lease.
CLAIM_TTL = 60.0
#: Back-off of a failed revocation: doubles per attempt from the first value, up to the second (seconds).
BACKOFF = (5.0, 600.0)
SWEEP_BATCH = 200
#: The audit action of a failed revocation attempt (the lease stays queued).
REVOKE_FAILED_ACTION = "lease.revoke_failed"
#: The lease body's key for the last renewal's time (set by :meth:`Leases.renew`, not by engines).
RENEWED_KEY = "last_renewal"


class LeaseNotFoundError(NebulaCredentialError):
    """No lease of that id (Vault: 400 "invalid lease")."""


class LeaseInputError(NebulaCredentialError):
    """A lease operation that cannot apply: not renewable, already expired (HTTP 400)."""


class LeaseHandler(Protocol):
    """What an engine does when one of its leases is revoked or renewed (idempotent, may raise)."""

    def revoke(self, mount: str, body: dict[str, Any]) -> None: ...

    def renew(self, mount: str, body: dict[str, Any], expire_time: float) -> None: ...


@dataclass(frozen=True)
class Lease:
    lease_id: str
    issue_time: float
    expire_time: float
    max_expire_time: float
    renewable: bool
    token_accessor: str | None
    engine: str
    revoked_at: float | None = None
    attempts: int = 0
    last_error: str = ""
    #: When it was last renewed (Vault's ``last_renewal``), None until then.
    last_renewal: float | None = None

    def ttl(self, now: float) -> int:
        return max(0, round(self.expire_time - now))

    @classmethod
    def of(cls, row: LeaseRow) -> Lease:
        renewed = _last_renewal(row.body)
        return cls(row.lease_id, row.issue_time, row.expire_time, row.max_expire_time, row.renewable,
                   row.token_accessor, row.engine, row.revoked_at, row.attempts, row.last_error, renewed)


def _last_renewal(body: str) -> float | None:
    """The renewal time kept in the lease's MAC'd body (no column of its own: the body is the lease's record)."""
    try:
        value = json.loads(body).get(RENEWED_KEY)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


@dataclass
class SweepReport:
    revoked: int = 0
    failed: int = 0
    lost_races: int = 0

    def to_json(self) -> dict[str, int]:
        return {"revoked": self.revoked, "failed": self.failed, "lost_races": self.lost_races}


def new_lease_id(prefix: str) -> str:
    """Vault's form: ``<path>/<24 random letters and digits>``."""
    alphabet = string.ascii_letters + string.digits
    return f"{prefix.rstrip('/')}/" + "".join(secrets.choice(alphabet) for _ in range(24))


def lease_mac_fields(row: LeaseRow) -> dict[str, Any]:
    return {"mount": row.mount, "engine": row.engine, "body": row.body, "token_accessor": row.token_accessor,
            "issue_time": row.issue_time, "expire_time": row.expire_time, "max_expire_time": row.max_expire_time,
            "renewable": row.renewable}


class Leases:
    """Every lease in one store, revoked through the handlers of their engines."""

    def __init__(self, vault: Vault, handlers: Mapping[str, LeaseHandler], *, rowmac: RowMac | None = None,
                 holder: str | None = None) -> None:
        self.vault = vault
        self.handlers = dict(handlers)
        store = vault.store
        self.rowmac = rowmac or RowMac(store.transaction, vault.provider, lock=store.new_lock())
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def _now(self) -> float:
        return self.vault.clock().timestamp()

    def _mac(self, row: LeaseRow) -> str:
        return self.rowmac.mac(TABLE, (row.lease_id,), lease_mac_fields(row))

    def _verified(self, row: LeaseRow) -> bool:
        if self.rowmac.verify(TABLE, (row.lease_id,), lease_mac_fields(row), row.mac):
            return True
        with self.vault.store.transaction() as tx:
            self.vault.audit.record(tx, rejected_action(TABLE), outcome="refused", table=TABLE,
                                    row=row.lease_id[:128], reason="mac")
        return False

    # ---- issue ------------------------------------------------------------------------------
    def issue(self, *, lease_id: str, mount: str, engine: str, body: dict[str, Any], ttl: float, max_ttl: float,
              renewable: bool = True, token_accessor: str | None = None,
              token_expires_at: float | None = None) -> Lease:
        """Record a lease *before* its secret exists, so no secret is ever without one.  The lease's
        life is clipped to ``max_ttl`` and to its token's remaining life, as Vault does."""
        now = self._now()
        max_expire = now + max_ttl
        if token_expires_at is not None:
            max_expire = min(max_expire, token_expires_at)
        expire = min(now + ttl, max_expire)
        row = LeaseRow(lease_id=lease_id, mount=mount, engine=engine, body=json.dumps(body, sort_keys=True),
                       token_accessor=token_accessor, issue_time=now, expire_time=expire,
                       max_expire_time=max_expire, renewable=renewable)
        row = _with_mac(row, self._mac(row))
        with self.vault.store.transaction() as tx:
            tx.lease_insert(row)
        return Lease.of(row)

    def forget(self, lease_id: str) -> None:
        """Mark a lease revoked whose secret was never made (its creation failed)."""
        with self.vault.store.transaction() as tx:
            if tx.lease_claim(lease_id, self.holder, self._now(), self._now() + CLAIM_TTL, force=True):
                tx.lease_revoked(lease_id, self.holder, self._now())

    # ---- reads ------------------------------------------------------------------------------
    def _row(self, lease_id: str, tx: StoreTx | None = None) -> LeaseRow:
        if not isinstance(lease_id, str) or not lease_id:
            raise LeaseNotFoundError("invalid lease")
        if tx is None:
            with self.vault.store.read() as rtx:
                row = rtx.lease_get(lease_id)
        else:
            row = tx.lease_get(lease_id)
        if row is None or not self._verified(row):
            raise LeaseNotFoundError("invalid lease")
        return row

    def lookup(self, lease_id: str) -> Lease:
        row = self._row(lease_id)
        if row.state == "revoked":
            raise LeaseNotFoundError("invalid lease")
        return Lease.of(row)

    def list(self, prefix: str) -> list[str]:
        """Vault's key listing under ``prefix``: lease ids' next segment, folders ending in '/'."""
        with self.vault.store.read() as tx:
            ids = tx.lease_ids(prefix)
        keys = set()
        for lid in ids:
            rest = lid[len(prefix):].lstrip("/") if prefix and not prefix.endswith("/") else lid[len(prefix):]
            keys.add(rest.split("/", 1)[0] + "/" if "/" in rest else rest)
        return sorted(k for k in keys if k)

    def counts(self) -> dict[str, int]:
        with self.vault.store.read() as tx:
            return tx.lease_counts(self._now())

    # ---- renew ------------------------------------------------------------------------------
    def renew(self, lease_id: str, increment: int | None = None, *, not_after: float | None = None) -> Lease:
        """Extend a live lease by ``increment`` seconds, or, without one, by its engine's default TTL again
        (a database role's ``default_ttl``, as Vault), never past its ``max_ttl`` nor ``not_after`` (the
        expiry of the token that created it: a lease never outlives its token)."""
        row = self._row(lease_id)
        now = self._now()
        if row.state != "active":
            raise LeaseNotFoundError("invalid lease")
        if not row.renewable:
            raise LeaseInputError("lease is not renewable")
        if row.expire_time <= now:
            raise LeaseInputError("lease expired")
        body = json.loads(row.body)
        ttl = float(increment) if increment else float(body.get("ttl") or (row.expire_time - row.issue_time))
        limit = row.max_expire_time if not_after is None else min(row.max_expire_time, max(not_after, now + 1))
        expire = min(now + ttl, limit)
        handler = self._handler(row)
        handler.renew(row.mount, body, expire)  # PostgreSQL first: a user never outlives its lease
        body[RENEWED_KEY] = now
        renewed = replace(row, expire_time=expire, body=json.dumps(body, sort_keys=True))
        renewed = _with_mac(renewed, self._mac(renewed))
        with self.vault.store.transaction() as tx:
            if not tx.lease_extend(lease_id, expire, renewed.mac, body=renewed.body):
                raise LeaseNotFoundError("invalid lease")
            self.vault.audit.record(tx, "lease.renew", outcome="ok", lease=lease_id, engine=row.engine)
        return Lease.of(renewed)

    # ---- revoke -----------------------------------------------------------------------------
    def _handler(self, row: LeaseRow) -> LeaseHandler:
        handler = self.handlers.get(row.engine)
        if handler is None:
            raise LeaseInputError(f"no handler for the {row.engine!r} engine's leases in this process")
        return handler

    def revoke(self, lease_id: str, *, sync: bool = True) -> None:
        """Revoke now (idempotent: an unknown or revoked lease is no error).  A failed revocation stays
        queued and is retried by the sweep; with ``sync`` the failure is raised too."""
        with self.vault.store.read() as tx:
            row = tx.lease_get(lease_id) if isinstance(lease_id, str) and lease_id else None
        if row is None or row.state == "revoked":
            return
        now = self._now()
        with self.vault.store.transaction() as tx:
            claimed = tx.lease_claim(lease_id, self.holder, now, now + CLAIM_TTL, force=True)
        if not claimed:
            return  # another process is revoking it right now
        # without ``sync`` a failure is only queued (the sweep retries it); with it, it is raised too
        self._revoke_claimed(lease_id, raise_errors=sync)

    def _revoke_claimed(self, lease_id: str, *, raise_errors: bool) -> bool:
        row = self._row_any(lease_id)
        if row is None:
            return False
        try:
            if not self._verified(row):
                raise LeaseInputError("lease row refused: its MAC does not verify")
            self._handler(row).revoke(row.mount, json.loads(row.body))
        except Exception as exc:
            now = self._now()
            delay = min(BACKOFF[1], BACKOFF[0] * 2 ** row.attempts)
            with self.vault.store.transaction() as tx:
                tx.lease_failed(lease_id, self.holder, str(exc), now + delay)
                self.vault.audit.record(tx, REVOKE_FAILED_ACTION, outcome="failed", lease=lease_id,
                                        engine=row.engine, attempts=row.attempts + 1)
            logger.warning("lease %s: revocation failed (attempt %d, next in %.0fs): %s", lease_id,
                           row.attempts + 1, delay, exc)
            if raise_errors:
                raise
            return False
        with self.vault.store.transaction() as tx:
            tx.lease_revoked(lease_id, self.holder, self._now())
            self.vault.audit.record(tx, "lease.revoke", outcome="ok", lease=lease_id, engine=row.engine)
        return True

    def _row_any(self, lease_id: str) -> LeaseRow | None:
        with self.vault.store.read() as tx:
            return tx.lease_get(lease_id)

    def revoke_prefix(self, prefix: str) -> int:
        with self.vault.store.read() as tx:
            ids = tx.lease_ids(prefix)
        for lid in ids:
            self.revoke(lid)
        return len(ids)

    def revoke_for_token(self, accessor: str) -> int:
        """Revoke every lease a token created (the token was revoked or expired)."""
        with self.vault.store.read() as tx:
            ids = tx.lease_ids_for_token(accessor)
        done = 0
        for lid in ids:
            try:
                self.revoke(lid)
                done += 1
            except Exception as exc:  # queued for the sweep; the token's other leases go on
                logger.warning("lease %s of a revoked token: %s", lid, exc)
        return done

    def tidy(self) -> int:
        """Remove the rows of revoked leases."""
        with self.vault.store.transaction() as tx:
            return tx.lease_tidy(self._now() + 1)

    def sweep(self, now: float | None = None, *, mount: str | None = None) -> SweepReport:
        """Revoke every expired lease (and retry failed revocations that are due), each exactly once
        across processes."""
        report = SweepReport()
        now = self._now() if now is None else now
        while True:
            with self.vault.store.read() as tx:
                due = tx.lease_due(mount, now, SWEEP_BATCH)
            claimed_any = False
            for lid in due:
                with self.vault.store.transaction() as tx:
                    claimed = tx.lease_claim(lid, self.holder, now, self._now() + CLAIM_TTL)
                if not claimed:
                    report.lost_races += 1
                    continue
                claimed_any = True
                if self._revoke_claimed(lid, raise_errors=False):
                    report.revoked += 1
                else:
                    report.failed += 1
            if len(due) < SWEEP_BATCH or not claimed_any:
                return report


def _with_mac(row: LeaseRow, mac: str) -> LeaseRow:
    return replace(row, mac=mac)

