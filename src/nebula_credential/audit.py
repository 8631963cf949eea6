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

A database writer can still wipe the chain, or roll it and the head back
to values read earlier.  So :meth:`AuditLog.verify` also requires the
chain to start at ``store.init`` (seq 1) and to *explain the key table*:
replaying the key events must give every version's creation, status and
status timestamps exactly as ``key_versions`` holds them
(:func:`explain_key_table`), and the backup registry: every registered
backup and the versions it holds must be explained by its
``backup.hold``/``backup.create``/``backup.register`` event, and every
removal by ``backup.forget`` (:class:`BackupReplay`), because deleting a
``backups`` row silently lifts the hold that keeps a key version from
destruction.  What is left -- a rollback of the whole
database, key table included -- is caught outside it: the head sequence
number exported as a metric (an alert fires when it goes down) and a copy
kept with ``audit export``, checked with ``audit verify --against``.
"""

from __future__ import annotations

import dataclasses
import enum
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from ._secret import SecretBytes
from .exceptions import ConfigError, StoreError
from .models import to_epoch, utc_now
from .names import printable
from .providers.base import KeyProvider, WrapContext
from .store import AuditRow, Store, StoreTx

AUDIT_KEY_META = "audit_key"
_HEAD_DOMAIN = b"nebula-credential audit head v1\x00"
#: Detail names that would only ever carry a secret: refused outright.
FORBIDDEN_DETAILS = frozenset(
    {"value", "plaintext", "secret", "password", "pin", "token", "dek", "key", "key_material"}
)
AUDIT_KEY_CONTEXT = WrapContext("__audit__", 1, "audit")
#: The highest key version a store column holds (PostgreSQL INTEGER); rotation never gets near it.
MAX_KEY_VERSION = 2**31 - 1

logger = logging.getLogger("nebula_credential.audit")


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{_hostname()}"


def _hostname() -> str:
    """The host name, as ``socket.gethostname()`` gives it, without importing socket.

    On POSIX both read the kernel's node name (``uname``); importing
    ``socket`` for it cost a command's start-up about 4 ms (issue 27).
    """
    uname = getattr(os, "uname", None)
    if uname is not None:
        return str(uname().nodename)
    import socket

    return socket.gethostname()


#: A string as ``json.dumps(..., ensure_ascii=True)`` writes it (the C function its encoder calls).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
#: ``json.dumps(x, separators=(",", ":"), ensure_ascii=True)``, the encoder made once (json.dumps makes one a call)
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


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
    """The bytes an event's MAC covers: the JSON array of its fields, exactly as ``json.dumps`` writes it.

    The MAC of every stored event depends on these bytes, so they never
    change.  For the usual field types the array is written directly, the
    way ``json.dumps`` writes each of them (``int.__repr__`` for an int, its
    ASCII escaping for a string, ``null``): about a quarter of the stdlib
    call's cost, which a server pays once per request (issue 27).  Any other
    type goes through the JSON encoder as before.
    """
    if (type(seq) is int and type(actor) is str and type(action) is str and type(outcome) is str
            and type(details) is str and (keyring is None or type(keyring) is str)
            and (key_version is None or type(key_version) is int)
            and (credential_id is None or type(credential_id) is str)):
        return (f"[{int.__repr__(seq)},{_json_str(repr(ts))},{_json_str(actor)},{_json_str(action)},"
                f"{'null' if keyring is None else _json_str(keyring)},"
                f"{'null' if key_version is None else int.__repr__(key_version)},"
                f"{'null' if credential_id is None else _json_str(credential_id)},"
                f"{_json_str(outcome)},{_json_str(details)}]").encode()
    return _CANONICAL_JSON.encode(
        [seq, repr(ts), actor, action, keyring, key_version, credential_id, outcome, details]).encode()


def _mac(key: bytes | bytearray, prev: bytes, row: AuditRow) -> bytes:
    body = canonical(
        row.seq, row.ts, row.actor, row.action, row.keyring, row.key_version,
        row.credential_id, row.outcome, row.details,
    )
    return hmac.digest(bytes(key), prev + body, "sha256")


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


#: ``json.dumps(details, sort_keys=True, separators=(",", ":"), default=_detail_default)``, made once
_DETAILS_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_detail_default)


def encode_details(details: dict[str, Any]) -> str:
    """Canonical JSON of an event's details, refusing names that could only carry a secret.

    The text is what ``json.dumps(details, sort_keys=True, separators=(",", ":"),
    default=_detail_default)`` gives, byte for byte (the MAC covers it).  A
    flat dict of strings, ints, booleans and None -- a request event's -- is
    written directly, as that call writes each of them; anything else
    (nested values, floats, datetimes, non-string names, a mapping that is
    not a dict) goes through the JSON encoder.
    """
    for name in details:
        if name.lower() in FORBIDDEN_DETAILS:
            raise ValueError(f"audit detail {name!r} is not allowed: secrets never enter the audit trail")
    if type(details) is dict:
        parts = []
        for name in sorted(details):  # json's sort_keys sorts (name, value) pairs: the same order, names being unique
            value = details[name]
            kind = type(value)
            if type(name) is not str:
                break
            if kind is str:
                parts.append(f"{_json_str(name)}:{_json_str(value)}")
            elif kind is int:
                parts.append(f"{_json_str(name)}:{int.__repr__(value)}")
            elif value is None:
                parts.append(f"{_json_str(name)}:null")
            elif value is True:
                parts.append(f"{_json_str(name)}:true")
            elif value is False:
                parts.append(f"{_json_str(name)}:false")
            else:
                break
        else:
            return "{" + ",".join(parts) + "}"
    return _DETAILS_JSON.encode(details)


class Event(NamedTuple):
    """One audit event to append (see :meth:`AuditLog.record` for the fields)."""

    action: str
    keyring: str | None = None
    version: int | None = None
    credential_id: str | None = None
    outcome: str = "ok"
    details: dict[str, Any] = {}  # shared default: never mutated (record_many copies before adding)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_seq: int | None
    #: What the chain does not explain (key-table changes, a missing start), one line each.
    unexplained: tuple[str, ...] = ()
    #: Events compared with an exported copy (``verify --against``); None when there was none.
    compared: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "events": self.events, "first_bad_seq": self.first_bad_seq}
        if self.unexplained:  # the contract's three fields stay exactly as they were when all is well
            out["unexplained"] = list(self.unexplained)
        if self.compared is not None and (not self.ok or self.compared != self.events):
            out["compared"] = self.compared  # a whole, intact comparison keeps the three fields
        return out


#: Events that create a key version (see ``KeyManager.rotate``).  Every status change is
#: written by ``KeyManager.transition``, whatever its action name, with ``old_status`` and
#: ``new_status`` in its details.  Both carry ``at``: the exact timestamp written to
#: key_versions (events from before it was recorded lack it).
CREATE_EVENTS = frozenset({"key.create", "key.rotate"})
#: Stored timestamps and the ``at`` of events are the same epoch float; this absorbs the
#: microsecond rounding of a datetime round trip.
_TIME_SLACK = 1e-3


@dataclass(slots=True)
class _Replayed:
    """One version as the chain tells it: a time is None when absent, NaN when unknown
    (recorded by an event from before events carried ``at``)."""

    status: str
    created: float | None
    changed: float | None
    revoked: float | None = None
    destroyed: float | None = None


class KeyReplay:
    """Key versions as the audit chain tells their story, event by event."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], _Replayed] = {}
        self.problems: list[str] = []

    def feed(self, row: AuditRow) -> None:
        if row.action not in CREATE_EVENTS and not row.action.startswith("key."):
            return
        try:
            details = json.loads(row.details) if row.details else {}
        except ValueError:
            return
        if not isinstance(details, dict) or (
            row.action not in CREATE_EVENTS and not {"old_status", "new_status"} <= details.keys()
        ):
            return  # not a creation nor a status change (e.g. key.grace_use)
        at = details.get("at")
        at = float(at) if isinstance(at, int | float) else math.nan
        kr = row.keyring or ""
        if row.action in CREATE_EVENTS:
            new = details.get("new_version", row.key_version)
            old = details.get("old_version")
            if isinstance(old, int):
                prev = self.versions.get((kr, old))
                if prev is None or prev.status != "active":
                    self.problems.append(
                        f"event {row.seq} ({row.action}) retires {kr} v{old}, which the chain has as "
                        f"{prev.status if prev else 'never created'}"
                    )
                if prev is not None:
                    prev.status, prev.changed = "valid", at
            if isinstance(new, int):
                if (kr, new) in self.versions:
                    self.problems.append(f"event {row.seq} ({row.action}) creates {kr} v{new} a second time")
                self.versions[(kr, new)] = _Replayed("active", at, at)
            return
        version = row.key_version
        cur = self.versions.get((kr, version)) if version is not None else None
        old_status, new_status = details.get("old_status"), details.get("new_status")
        if cur is None or not isinstance(new_status, str):
            self.problems.append(f"event {row.seq} ({row.action}) changes {kr} v{version}, never created in the chain")
            return
        if cur.status != old_status:
            self.problems.append(
                f"event {row.seq} ({row.action}) moves {kr} v{version} from {old_status}, "
                f"but the chain has it {cur.status}"
            )
        cur.status, cur.changed = new_status, at
        if new_status == "revoked":
            cur.revoked = at
        elif new_status == "destroyed":
            cur.destroyed = at
        elif new_status == "valid" and old_status == "revoked":
            cur.revoked = None

    def explain(self, tx: StoreTx) -> list[str]:
        """Every difference between the replayed versions and ``key_versions``, one line each."""
        out = list(self.problems)
        table = {(kr, kv.version): kv for kr in tx.keyrings() for kv in tx.list_versions(kr)}
        for (kr, v), kv in sorted(table.items()):
            name = f"keyring {kr} v{v}"
            told = self.versions.get((kr, v))
            if told is None:
                out.append(f"{name}: created {_iso(kv.created_at)} with no key.create/key.rotate event")
                continue
            if kv.status.value != told.status:
                since = _iso(kv.status_changed_at) if kv.status_changed_at else "an unknown time"
                out.append(f"{name}: key_versions says {kv.status.value} since {since}; "
                           f"the chain says {told.status}")
                continue
            for what, stored, replayed in (
                ("created_at", kv.created_at, told.created),
                ("status_changed_at", kv.status_changed_at, told.changed),
                ("revoked_at", kv.revoked_at, told.revoked),
                ("destroyed_at", kv.destroyed_at, told.destroyed),
            ):
                if replayed is not None and math.isnan(replayed):
                    continue  # the event predates ``at``: its time is unknown, not wrong
                at = to_epoch(stored)
                if (at is None) != (replayed is None) or (
                    at is not None and replayed is not None and abs(at - replayed) > _TIME_SLACK
                ):
                    out.append(f"{name}: {what} is {_iso(stored) if stored else 'empty'}, "
                               "which no event in the chain explains")
            if kv.wrapped_key is None and kv.status.value != "destroyed":
                out.append(f"{name}: key material erased, but the chain never destroyed it")
        for (kr, v) in sorted(set(self.versions) - set(table)):
            out.append(f"keyring {kr} v{v}: in the chain but missing from key_versions")
        return out


def unregistered_line(name: str) -> str:
    """How :meth:`BackupReplay.explain` names a registry row no event explains."""
    return f"backup {printable(name)}: in the backup registry with no backup.create or backup.register event"


#: Events that put a backup (and the versions it holds) into the registry; ``backup.forget`` removes it.
BACKUP_HOLD_EVENTS = frozenset({"backup.hold", "backup.create", "backup.register"})


class BackupReplay:
    """The backup registry (``backups``, ``backup_keys``) as the audit chain tells it."""

    def __init__(self) -> None:
        #: backup name -> versions it holds as "keyring/vN" (None: the event did not list them)
        self.held: dict[str, tuple[str, ...] | None] = {}

    def feed(self, row: AuditRow) -> None:
        if row.action not in BACKUP_HOLD_EVENTS and row.action != "backup.forget":
            return
        try:
            details = json.loads(row.details) if row.details else {}
        except ValueError:
            return
        name = details.get("backup") if isinstance(details, dict) else None
        if not isinstance(name, str):
            return
        if row.action == "backup.forget":
            self.held.pop(name, None)
            return
        versions = details.get("versions")
        self.held[name] = (tuple(sorted(str(v) for v in versions)) if isinstance(versions, list) else None)

    def explain(self, tx: StoreTx) -> list[str]:
        """Every registered backup the chain does not explain, and every explained one that is gone."""
        out: list[str] = []
        table = {b.name for b in tx.list_backups()}
        for name in sorted(set(self.held) - table):
            out.append(f"backup {printable(name)}: registered in the chain but missing from the backup "
                       "registry, with no backup.forget event: its hold on key versions was lifted")
        for name in sorted(table - set(self.held)):
            out.append(unregistered_line(name))
        for name in sorted(table & set(self.held)):
            told = self.held[name]
            if told is None:
                continue  # an event from before versions were recorded
            stored = tuple(sorted(f"{kr}/v{v}" for kr, per in tx.backup_versions(name).items() for v in per))
            if stored != told:
                out.append(f"backup {printable(name)}: holds {', '.join(stored) or 'no version'} in backup_keys; "
                           f"the chain recorded {', '.join(told) or 'no version'}")
        return out


def _iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt is not None else "-"


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
        return self.record_many(tx, [Event(action, keyring, version, credential_id, outcome, details)])

    def record_many(self, tx: StoreTx, events: Sequence[Event]) -> int:
        """Append ``events`` in order inside ``tx``; returns the last sequence number.

        The chain head is locked and read once and the rows go in one
        statement (a pipeline on PostgreSQL), so a server committing the
        events of many requests together pays a few round trips, not four
        per event.
        """
        key = self._audit_key(tx)
        key_bytes = bytes(key)
        seq, prev = tx.audit_tail()
        ts = to_epoch(self._clock())
        assert ts is not None
        actor = self.actor
        rows: list[AuditRow] = []
        for event in events:
            version, details = event.version, event.details
            if version is not None and not 0 <= version <= MAX_KEY_VERSION:
                # a garbage envelope header (tamper, corruption) names any uint32: keep it in the
                # details, where it cannot overflow the INTEGER column and fail the audit itself
                details = {**details, "header_version": version}
                version = None
            seq += 1
            text = encode_details(details)
            # the MAC of the row as _mac computes it, without building the row twice (a server's batches)
            body = canonical(seq, ts, actor, event.action, event.keyring, version, event.credential_id,
                             event.outcome, text)
            prev = hmac.digest(key_bytes, prev + body, "sha256")
            rows.append(AuditRow(seq, ts, actor, event.action, event.keyring, version, event.credential_id,
                                 event.outcome, text, prev))
        if not rows:
            return seq
        tx.audit_append(*rows)
        tx.set_audit_head(f"{seq}:{_head_tag(key, seq, prev)}")
        if self._mirror:
            for row in rows:
                logger.info(json.dumps(row_to_json(row), sort_keys=True))
        return seq

    # ---- read ----------------------------------------------------------------
    def rows(self, page: int = 1000, *, after: int = 0) -> Iterator[AuditRow]:
        """Every event after sequence number ``after``, oldest first, one page in memory at a time."""
        while True:
            with self._store.read() as tx:
                batch = tx.audit_rows(after, page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].seq

    def verify(self) -> VerifyResult:
        """Walk the whole chain; report the first event that does not check out.

        Then the chain must start at ``store.init`` and explain the key table
        (:class:`KeyReplay`): a wiped, truncated or rolled-back chain fails,
        with ``first_bad_seq`` the first missing event and ``unexplained``
        saying what it would have had to record.
        """
        with self._store.read() as tx:
            key = bytes(self._audit_key(tx))
            head = tx.get_audit_head()
        prev = b""
        expected_seq = 1
        count = 0
        head_seq, _, head_tag = (head or "0:").partition(":")
        want = int(head_seq) if head_seq.isdigit() else -1
        head_mac = b""
        replay = KeyReplay()
        backups = BackupReplay()
        start: list[str] = []
        for row in self.rows():
            count += 1
            if row.seq != expected_seq or not hmac.compare_digest(_mac(key, prev, row), row.mac):
                return VerifyResult(False, count, min(row.seq, expected_seq))
            if row.seq == 1 and row.action != "store.init":
                start.append(f"the chain starts with {row.action!r}, not store.init")
            replay.feed(row)
            backups.feed(row)
            if row.seq == want:
                head_mac = row.mac
            prev = row.mac
            expected_seq += 1
        if count == 0:
            return VerifyResult(False, 0, 1, ("the chain is empty: it must start at store.init (seq 1)",
                                              *self._explain(replay, backups)))
        if want < 0 or head is None or want > count:
            return VerifyResult(False, count, count + 1)  # head missing/garbled, or newest events cut off
        if want < count or not hmac.compare_digest(_head_tag(key, want, head_mac), head_tag):
            return VerifyResult(False, count, want + 1 if want < count else want)
        unexplained = (*start, *self._explain(replay, backups))
        if unexplained:
            return VerifyResult(False, count, 1 if start else count + 1, unexplained)
        return VerifyResult(True, count, None)

    def _explain(self, replay: KeyReplay, backups: BackupReplay) -> list[str]:
        with self._store.read() as tx:
            return replay.explain(tx) + backups.explain(tx)

    def explain_backups(self) -> list[str]:
        """What the chain does not explain of the backup registry alone (``doctor``'s registry check)."""
        backups = BackupReplay()
        for row in self.rows():
            backups.feed(row)
        with self._store.read() as tx:
            return backups.explain(tx)

    def head_seq(self) -> int:
        """The sequence number the chain's head claims (0 for none): what the metric exports."""
        with self._store.read() as tx:
            head = tx.get_audit_head()
        seq = (head or "0:").partition(":")[0]
        return int(seq) if seq.isdigit() else 0

    def verify_against(self, exported: Iterable[dict[str, Any]], *, partial: bool = False) -> VerifyResult:
        """Check the store's chain against a copy kept outside it (``audit export``).

        Every exported event must still be in the store with the same MAC:
        a chain rolled back behind the copy, or rewritten, fails, naming the
        first event that differs.  The store's own chain is verified first.
        The copy must cover the whole chain, every event from 1 to the
        store's last -- an empty or one-line file proves nothing -- unless
        ``partial`` (then only the events it has are compared).  The result
        says how many events were compared.
        """
        own = self.verify()
        if not own.ok:
            return own
        problems: list[str] = []
        first_bad: int | None = None
        seen: set[int] = set()
        with self._store.read() as tx:
            stored_head = own.events
            for n, event in enumerate(exported, 1):
                seq, mac = event.get("seq"), event.get("mac")
                # bool is an int subclass: ``"seq": true`` must not read as event 1
                if type(seq) is not int or seq < 1 or not isinstance(mac, str):
                    raise ConfigError(f"exported event {n}", "expected an integer seq and a hex mac "
                                      "(a line of `nebula-credential audit export`)")
                if seq > stored_head:
                    problems.append(f"the store's chain ends at event {stored_head}, but the exported copy "
                                    f"has event {seq}: the chain was rolled back")
                    first_bad = stored_head + 1
                    break
                rows = tx.audit_rows(seq - 1, 1)
                if not rows or rows[0].seq != seq or rows[0].mac.hex() != mac:
                    problems.append(f"event {seq} in the store differs from the exported copy: the chain was rewritten")
                    first_bad = seq
                    break
                seen.add(seq)
        if not problems and not partial and len(seen) < stored_head:
            missing = next(s for s in range(1, stored_head + 1) if s not in seen)
            problems.append(f"the exported copy has {len(seen)} of the store's {stored_head} events (first missing: "
                            f"{missing}); export the rest (`audit export --since SEQ`), or pass --partial to "
                            "compare only the events it has")
            first_bad = missing
        if problems:
            return VerifyResult(False, own.events, first_bad, tuple(problems), compared=len(seen))
        return dataclasses.replace(own, compared=len(seen))

def row_to_export(row: AuditRow) -> dict[str, Any]:
    """One ``audit export`` line: the readable event plus its exact time and MAC."""
    return row_to_json(row) | {"ts": row.ts, "mac": row.mac.hex()}


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


def head_opens_under(tx: StoreTx, key: bytes | bytearray) -> bool:
    """Whether the chain's MAC'd head checks out under ``key``: proof that ``key`` is this store's audit key.

    Escrow recovery uses it to tell an escrow file of *this* store from
    another store's with an edited id, before anything is rewritten.
    """
    head = tx.get_audit_head()
    seq_text, _, tag = (head or "").partition(":")
    if not seq_text.isdigit() or not tag:
        return False
    rows = tx.audit_rows(int(seq_text) - 1, 1)
    if not rows or rows[0].seq != int(seq_text):
        return False
    return hmac.compare_digest(_head_tag(key, rows[0].seq, rows[0].mac), tag)
