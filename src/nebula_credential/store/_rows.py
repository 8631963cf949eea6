"""Row decoding: database rows to records, naming whatever is not what the schema promises.

The column lists here fix the order every SELECT reads and every decoder
indexes, so the two never drift apart.  A row that is not what the schema
promises becomes a :class:`CorruptRecordError` naming the record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..envelope import header_version as envelope_header_version
from ..exceptions import CorruptRecordError
from ..models import EncryptedCredential, KeyStatus, KeyVersion, from_epoch
from .records import (
    MAX_STORED_KEY_VERSION,
    AuditRow,
    BackupRecord,
    CredentialPage,
    ReencryptPage,
    ReencryptRow,
    TokenRow,
)

VERSION_COLS = (
    "keyring, version, status, wrapped_key, provider, root_key_id, created_at, expires_at, "
    "status_changed_at, revoked_at, destroyed_at, encryptions, reason"
)
CRED_COLS = "keyring, id, scope, key_version, envelope, metadata, revision, created_at, updated_at"
TOKEN_COLS = (
    "accessor, token_hash, parent, policies, display_name, meta, created_at, expires_at, "  # noqa: S105
    "max_expires_at, ttl, renewable, num_uses, period, explicit_max_ttl, token_type, role, path, mac, "
    "bound_cidrs"
)
BACKUP_COLS = "name, kind, taken_at, expires_at, registered_at, location, manifest"
AUDIT_COLS = "seq, ts, actor, action, keyring, key_version, credential_id, outcome, details, mac"

BLOB_TYPES = (bytes, bytearray, memoryview)


class BadColumn(Exception):
    """One column of a row is not what the schema promises (becomes a CorruptRecordError)."""


def kind_of(value: Any) -> str:
    return {str: "text", int: "an integer", float: "a number", type(None): "NULL"}.get(type(value), "bytes")


def as_text(value: Any, column: str, *, null: bool = False) -> Any:
    if (value is None and null) or isinstance(value, str):
        return value
    raise BadColumn(f"{column} is {kind_of(value)}, not text")


def as_int(value: Any, column: str, *, null: bool = False) -> Any:
    if (value is None and null) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise BadColumn(f"{column} is {kind_of(value)}, not an integer")


def as_blob(value: Any, column: str, *, null: bool = False) -> bytes | None:
    if value is None and null:
        return None
    if isinstance(value, BLOB_TYPES):
        return bytes(value)
    raise BadColumn(f"{column} is {kind_of(value)}, not bytes")


def as_time(value: Any, column: str, *, null: bool = False) -> datetime | None:
    if value is None and null:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return from_epoch(value)
        except (OverflowError, OSError, ValueError):
            raise BadColumn(f"{column} is out of range") from None
    raise BadColumn(f"{column} is {kind_of(value)}, not a timestamp")


def row_name(value: Any) -> str:
    """A row's id for messages: the text itself, or the repr of whatever is there instead."""
    return value if isinstance(value, str) else repr(value)


def decode_version(row: Sequence[Any]) -> KeyVersion:
    try:
        status = KeyStatus(as_text(row[2], "status"))
        created = as_time(row[6], "created_at")
        assert created is not None
        return KeyVersion(
            keyring=as_text(row[0], "keyring"),
            version=as_int(row[1], "version"),
            status=status,
            wrapped_key=as_blob(row[3], "wrapped_key", null=True),
            provider=as_text(row[4], "provider"),
            root_key_id=as_text(row[5], "root_key_id"),
            created_at=created,
            expires_at=as_time(row[7], "expires_at", null=True),
            status_changed_at=as_time(row[8], "status_changed_at", null=True),
            revoked_at=as_time(row[9], "revoked_at", null=True),
            destroyed_at=as_time(row[10], "destroyed_at", null=True),
            encryptions=as_int(row[11], "encryptions"),
            reason=as_text(row[12], "reason"),
        )
    except (BadColumn, ValueError) as exc:
        what = f"unknown status {row[2]!r}" if not isinstance(exc, BadColumn) else str(exc)
        name = f"{row_name(row[0])}/v{row_name(row[1])}"
        raise CorruptRecordError(f"key version {name} is corrupt: {what}", record=name,
                                 key_version=row[1] if isinstance(row[1], int) else None) from None


_MAX_VERSION = MAX_STORED_KEY_VERSION  # key_versions.version is a 32-bit signed INTEGER


def header_version(envelope: bytes) -> int | None:
    """The key version a stored envelope's header names, or None for a blob that is no envelope
    (or names a version no ``key_versions`` row can hold)."""
    version = envelope_header_version(envelope)
    return version if version is not None and version <= _MAX_VERSION else None


_NUMBER = (int, float)


def decode_credential(row: Sequence[Any]) -> EncryptedCredential:
    kr, cid, scope, column, envelope, meta, revision, created, updated = row
    if (  # the fast path: every column of the type the schema promises
        type(kr) is str and type(cid) is str and type(scope) is str and type(column) is int
        and type(envelope) in BLOB_TYPES and type(meta) is str and type(revision) is int
        and type(created) in _NUMBER and type(updated) in _NUMBER
    ):
        try:
            # "{}" (no metadata, most rows) without the JSON parser: a pass decodes every row it moves
            metadata = {} if meta == "{}" or not meta else json.loads(meta)
            if type(metadata) is dict:
                envelope = bytes(envelope)
                named = header_version(envelope)
                return EncryptedCredential(
                    keyring=kr, id=cid, scope=scope,
                    # the header is what decryption uses; a column that disagrees is found by doctor
                    key_version=column if named is None else named,
                    envelope=envelope, metadata=metadata, revision=revision,
                    created_at=datetime.fromtimestamp(created, UTC),
                    updated_at=datetime.fromtimestamp(updated, UTC),
                )
        except (ValueError, OverflowError, OSError):  # bad JSON, a timestamp out of range
            pass
    return _diagnose_credential(row)


def _diagnose_credential(row: Sequence[Any]) -> EncryptedCredential:
    """The slow path: name what is wrong with a row (or decode an unusual but valid one)."""
    try:
        column = as_int(row[3], "key_version")
        envelope = as_blob(row[4], "envelope")
        assert envelope is not None
        named = header_version(envelope)
        key_version = column if named is None else named
        try:
            metadata = json.loads(as_text(row[5], "metadata")) if row[5] else {}
        except ValueError:
            raise BadColumn("corrupt metadata (not JSON)") from None
        if not isinstance(metadata, dict):
            raise BadColumn("corrupt metadata (not a JSON object)")
        created, updated = as_time(row[7], "created_at"), as_time(row[8], "updated_at")
        assert created is not None and updated is not None
        return EncryptedCredential(
            keyring=as_text(row[0], "keyring"),
            id=as_text(row[1], "id"),
            scope=as_text(row[2], "scope"),
            key_version=key_version,
            envelope=envelope,
            metadata=metadata,
            revision=as_int(row[6], "revision"),
            created_at=created,
            updated_at=updated,
        )
    except BadColumn as exc:
        raise corrupt_credential(row[0], row[1], row[3], exc) from None


def corrupt_credential(keyring: Any, cid: Any, key_version: Any, exc: Exception) -> CorruptRecordError:
    """The typed error for a credential row whose columns are not what the schema promises."""
    name = row_name(cid)
    return CorruptRecordError(
        f"credential {name!r} in keyring {row_name(keyring)!r} is a corrupt record: {exc}", record=name,
        key_version=key_version if isinstance(key_version, int) and not isinstance(key_version, bool) else None,
    )


def decode_audit(row: Sequence[Any]) -> AuditRow:
    try:
        ts = row[1]
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise BadColumn(f"ts is {kind_of(ts)}, not a number")
        mac = as_blob(row[9], "mac")
        assert mac is not None
        return AuditRow(
            seq=as_int(row[0], "seq"),
            ts=float(ts),
            actor=as_text(row[2], "actor"),
            action=as_text(row[3], "action"),
            keyring=as_text(row[4], "keyring", null=True),
            key_version=as_int(row[5], "key_version", null=True),
            credential_id=as_text(row[6], "credential_id", null=True),
            outcome=as_text(row[7], "outcome"),
            details=as_text(row[8], "details"),
            mac=mac,
        )
    except BadColumn as exc:
        name = f"audit seq {row_name(row[0])}"
        raise CorruptRecordError(f"{name} is a corrupt record: {exc}", record=name) from None


def decode_page(rows: Sequence[Sequence[Any]], skip_corrupt: bool) -> CredentialPage:
    page = CredentialPage()
    for r in rows:
        try:
            page.append(decode_credential(r))
        except CorruptRecordError as exc:
            if not skip_corrupt:
                raise
            page.corrupt.append(exc)
    page.fetched = len(rows)
    page.last_id = rows[-1][1] if rows else None
    return page


#: Timestamps certainly inside ``datetime``'s range (years 1970-9999): checked without building one.
_TIME_OK_BELOW = 253402300799  # 9999-12-31T23:59:59 UTC; a value just below still rounds inside


def decode_reencrypt_page(rows: Sequence[Sequence[Any]], skip_corrupt: bool) -> ReencryptPage:
    """Rows of :data:`CRED_COLS` as :class:`ReencryptRow`, judged as :func:`decode_credential` judges them.

    A row is corrupt here exactly when it is for ``get``: the same column
    types, metadata that is a JSON object, timestamps a ``datetime`` can
    hold.  The common row is checked without building the record (no
    dataclass, no ``datetime``, no JSON parse of ``"{}"``); anything else
    goes through :func:`decode_credential` itself, which names the fault.
    """
    page = ReencryptPage()
    append = page.append
    new = tuple.__new__  # the named tuple built in C: its generated __new__ is a Python call (~0.3 us a row)
    for r in rows:
        kr, cid, scope, column, envelope, meta, revision, created, updated = r
        if (
            type(kr) is str and type(cid) is str and type(scope) is str and type(column) is int
            and type(envelope) in BLOB_TYPES and type(meta) is str and type(revision) is int
            and type(created) in _NUMBER and type(updated) in _NUMBER
            and 0 <= created < _TIME_OK_BELOW and 0 <= updated < _TIME_OK_BELOW
            and (meta == "{}" or not meta)
        ):
            append(new(ReencryptRow, (kr, cid, scope, column,
                                      envelope if type(envelope) is bytes else bytes(envelope), revision)))
            continue
        try:
            record = decode_credential(r)  # metadata to parse, an unusual timestamp, or a corrupt row
        except CorruptRecordError as exc:
            if not skip_corrupt:
                raise
            page.corrupt.append(exc)
            continue
        append(ReencryptRow(record.keyring, record.id, record.scope, column, record.envelope, record.revision))
    page.fetched = len(rows)
    page.last_id = rows[-1][1] if rows else None
    return page


def decode_token(row: Sequence[Any]) -> TokenRow:
    return TokenRow(
        accessor=row[0],
        token_hash=row[1],
        parent=row[2],
        policies=tuple(json.loads(row[3])),
        display_name=row[4],
        meta=json.loads(row[5]),
        created_at=float(row[6]),
        expires_at=None if row[7] is None else float(row[7]),
        max_expires_at=None if row[8] is None else float(row[8]),
        ttl=float(row[9]),
        renewable=bool(row[10]),
        num_uses=int(row[11]),
        period=None if row[12] is None else float(row[12]),
        explicit_max_ttl=None if row[13] is None else float(row[13]),
        token_type=str(row[14]),
        role=str(row[15]),
        path=str(row[16]),
        mac=row[17] or "",
        bound_cidrs=tuple(json.loads(row[18] or "[]")),
    )


def decode_backup(row: Sequence[Any]) -> BackupRecord:
    taken, expires, registered = from_epoch(row[2]), from_epoch(row[3]), from_epoch(row[4])
    assert taken is not None and expires is not None and registered is not None
    return BackupRecord(str(row[0]), str(row[1]), taken, expires, registered, str(row[5]), str(row[6]))

