"""Tamper-evident audit trail: an HMAC-SHA256 chain over every key operation.

Each event's MAC covers the previous event's MAC and the event's own
canonical encoding, keyed by an audit key that is stored wrapped by the
root key like a DEK.  Write access to the database alone therefore cannot
forge, edit, drop, insert or reorder events without ``verify`` noticing.
Events are appended inside the caller's transaction, so an event exists
exactly when the change it records was committed.

A chain alone cannot show that its newest events were cut off, so each
append also stores a MAC'd *head* (last seq and MAC) in ``audit_head``,
in the same transaction: truncating the tail needs the audit key too.
What no in-database scheme can catch is a rollback of the whole database
(rows and head together) to an earlier copy; ship the log mirror
(``[audit] log = true``) to a SIEM for that.
"""

from __future__ import annotations

import dataclasses
import enum
import getpass
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._secret import SecretBytes
from .exceptions import StoreError
from .models import to_epoch, utc_now
from .providers.base import KeyProvider, WrapContext
from .store.base import AuditRow, Store, StoreTx

AUDIT_KEY_META = "audit_key"
_HEAD_DOMAIN = b"nebula-credential audit head v1\x00"
#: Detail names that would only ever carry a secret: refused outright.
FORBIDDEN_DETAILS = frozenset(
    {"value", "plaintext", "secret", "password", "pin", "token", "dek", "key", "key_material"}
)
AUDIT_KEY_CONTEXT = WrapContext("__audit__", 1, "audit")

logger = logging.getLogger("nebula_credential.audit")


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def canonical(
    seq: int,
    ts: float,
    actor: str,
    action: str,
    keyring: str | None,
    key_version: int | None,
    credential_id: str | None,
    outcome: str,
    details: str,
) -> bytes:
    return json.dumps(
        [seq, repr(ts), actor, action, keyring, key_version, credential_id, outcome, details],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _mac(key: bytes | bytearray, prev: bytes, row: AuditRow) -> bytes:
    body = canonical(
        row.seq, row.ts, row.actor, row.action, row.keyring, row.key_version,
        row.credential_id, row.outcome, row.details,
    )
    return hmac.new(bytes(key), prev + body, hashlib.sha256).digest()


def _head_tag(key: bytes | bytearray, seq: int, mac: bytes) -> str:
    msg = _HEAD_DOMAIN + seq.to_bytes(8, "big") + mac
    return hmac.new(bytes(key), msg, hashlib.sha256).hexdigest()


def _detail_default(value: Any) -> Any:
    """JSON for the few non-JSON types details carry; bytes are refused (could be key material)."""
    if isinstance(value, bytes | bytearray | memoryview | SecretBytes):
        raise TypeError("audit details must not contain bytes (key material or ciphertext)")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def encode_details(details: dict[str, Any]) -> str:
    """Canonical JSON of an event's details, refusing names that could only carry a secret."""
    for name in details:
        if name.lower() in FORBIDDEN_DETAILS:
            raise ValueError(f"audit detail {name!r} is not allowed: secrets never enter the audit trail")
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=_detail_default)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "first_bad_seq": self.first_bad_seq}


class AuditLog:
    """Appends and verifies the chain; one per open store."""

    def __init__(
        self,
        store: Store,
        provider: KeyProvider,
        *,
        actor: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        mirror_to_log: bool = False,
    ) -> None:
        self._store = store
        self._provider = provider
        self.actor = actor or default_actor()
        self._clock = clock
        self._mirror = mirror_to_log
        self._key: SecretBytes | None = None

    # ---- key -------------------------------------------------------------
    def ensure_key(self, tx: StoreTx) -> None:
        """Create the audit key on a new store (called by init)."""
        if tx.get_meta(AUDIT_KEY_META) is None:
            with SecretBytes.random(32) as key:
                wrapped = self._provider.wrap(key, AUDIT_KEY_CONTEXT)
            tx.set_meta(AUDIT_KEY_META, wrapped.hex())

    def _audit_key(self, tx: StoreTx) -> bytearray:
        if self._key is None:
            raw = tx.get_meta(AUDIT_KEY_META)
            if raw is None:
                raise StoreError("store has no audit key; was it initialised with `nebula-credential init`?")
            self._key = self._provider.unwrap(bytes.fromhex(raw), AUDIT_KEY_CONTEXT)
        return self._key.buffer

    def load_key(self) -> None:
        """Unwrap the audit key now: proves the provider's root key matches this store."""
        with self._store.read() as tx:
            self._audit_key(tx)

    def rewrap_key(self, tx: StoreTx) -> None:
        raw = tx.get_meta(AUDIT_KEY_META)
        if raw is not None:
            tx.set_meta(AUDIT_KEY_META, self._provider.rewrap(bytes.fromhex(raw), AUDIT_KEY_CONTEXT).hex())

    # ---- append ------------------------------------------------------------
    def record(
        self,
        tx: StoreTx,
        action: str,
        *,
        keyring: str | None = None,
        version: int | None = None,
        credential_id: str | None = None,
        outcome: str = "ok",
        **details: Any,
    ) -> int:
        """Append one event inside ``tx``; returns its sequence number."""
        key = self._audit_key(tx)
        seq, prev = tx.audit_tail()
        ts = to_epoch(self._clock())
        assert ts is not None
        body = encode_details(details)
        draft = AuditRow(seq + 1, ts, self.actor, action, keyring, version, credential_id, outcome, body, b"")
        row = dataclasses.replace(draft, mac=_mac(key, prev, draft))
        tx.audit_append(row)
        tx.set_audit_head(f"{row.seq}:{_head_tag(key, row.seq, row.mac)}")
        if self._mirror:
            logger.info(json.dumps(row_to_json(row), sort_keys=True))
        return row.seq

    # ---- read ----------------------------------------------------------------
    def rows(self, page: int = 1000) -> Iterator[AuditRow]:
        after = 0
        while True:
            with self._store.read() as tx:
                batch = tx.audit_rows(after, page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].seq

    def verify(self) -> VerifyResult:
        """Walk the whole chain; report the first event that does not check out."""
        with self._store.read() as tx:
            key = bytes(self._audit_key(tx))
            head = tx.get_audit_head()
        prev = b""
        expected_seq = 1
        count = 0
        head_seq, _, head_tag = (head or "0:").partition(":")
        want = int(head_seq) if head_seq.isdigit() else -1
        head_mac = b""
        for row in self.rows():
            count += 1
            if row.seq != expected_seq or not hmac.compare_digest(_mac(key, prev, row), row.mac):
                return VerifyResult(False, count, min(row.seq, expected_seq))
            if row.seq == want:
                head_mac = row.mac
            prev = row.mac
            expected_seq += 1
        if count == 0 and head is None:
            return VerifyResult(True, 0, None)
        if want < 0 or head is None or want > count:
            return VerifyResult(False, count, count + 1)  # head missing/garbled, or newest events cut off
        if want < count or not hmac.compare_digest(_head_tag(key, want, head_mac), head_tag):
            return VerifyResult(False, count, want + 1 if want < count else want)
        return VerifyResult(True, count, None)


def row_to_json(row: AuditRow) -> dict[str, Any]:
    from .models import from_epoch

    ts = from_epoch(row.ts)
    return {
        "seq": row.seq,
        "time": ts.isoformat() if ts else None,
        "actor": row.actor,
        "action": row.action,
        "keyring": row.keyring,
        "version": row.key_version,
        "credential_id": row.credential_id,
        "outcome": row.outcome,
        "details": json.loads(row.details) if row.details else {},
    }
