"""SQL shared by the SQLite and PostgreSQL backends.

Queries are written once with ``?`` placeholders; a backend that uses
another paramstyle translates them (:meth:`SqlTx._q`).  Backend-specific
behaviour (locking, ``SKIP LOCKED``, the audit head lock) lives in small
overridable methods, so the logic is not written twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from ..exceptions import CorruptRecordError, StoreError
from ..models import EncryptedCredential, KeyStatus, KeyVersion, from_epoch, to_epoch
from .base import SCHEMA_VERSION, AuditRow, BackupRecord, CredentialPage, Page, StoreTx, TokenRow

_VERSION_COLS = (
    "keyring, version, status, wrapped_key, provider, root_key_id, created_at, expires_at, "
    "status_changed_at, revoked_at, destroyed_at, encryptions, reason"
)
_CRED_COLS = "keyring, id, scope, key_version, envelope, metadata, revision, created_at, updated_at"
_TOKEN_COLS = (
    "accessor, token_hash, parent, policies, display_name, meta, created_at, expires_at, "  # noqa: S105
    "max_expires_at, ttl, renewable"
)
_BACKUP_COLS = "name, kind, taken_at, expires_at, registered_at, location, manifest"
_AUDIT_COLS = "seq, ts, actor, action, keyring, key_version, credential_id, outcome, details, mac"
_STATUS = {s.value: s for s in KeyStatus}
_ON_CONFLICT = (
    "ON CONFLICT (keyring, id) DO UPDATE SET scope = excluded.scope, "
    "key_version = excluded.key_version, envelope = excluded.envelope, "
    "metadata = excluded.metadata, revision = credentials.revision + 1, "
    "updated_at = excluded.updated_at"
)


@lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


@lru_cache(maxsize=16)
def _checked_upsert(statuses: int, lock: str) -> str:
    """The upsert of ``put_credential_checked``: written only if the version has one of the statuses."""
    marks = ", ".join("?" for _ in range(statuses))
    return (
        f"INSERT INTO credentials ({_CRED_COLS}) SELECT ?, ?, ?, ?, ?, ?, 1, ?, ? FROM key_versions "
        f"WHERE keyring = ? AND version = ? AND status IN ({marks}){lock} " + _ON_CONFLICT + " RETURNING revision"
    )


_BLOB = (bytes, bytearray, memoryview)


class _Bad(Exception):
    """One column of a row is not what the schema promises (becomes a CorruptRecordError)."""


def _kind(value: Any) -> str:
    return {str: "text", int: "an integer", float: "a number", type(None): "NULL"}.get(type(value), "bytes")


def _str(value: Any, column: str, *, null: bool = False) -> Any:
    if (value is None and null) or isinstance(value, str):
        return value
    raise _Bad(f"{column} is {_kind(value)}, not text")


def _int(value: Any, column: str, *, null: bool = False) -> Any:
    if (value is None and null) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _Bad(f"{column} is {_kind(value)}, not an integer")


def _blob(value: Any, column: str, *, null: bool = False) -> bytes | None:
    if value is None and null:
        return None
    if isinstance(value, _BLOB):
        return bytes(value)
    raise _Bad(f"{column} is {_kind(value)}, not bytes")


def _time(value: Any, column: str, *, null: bool = False) -> datetime | None:
    if value is None and null:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return from_epoch(value)
        except (OverflowError, OSError, ValueError):
            raise _Bad(f"{column} is out of range") from None
    raise _Bad(f"{column} is {_kind(value)}, not a timestamp")


def _name(value: Any) -> str:
    """A row's id for messages: the text itself, or the repr of whatever is there instead."""
    return value if isinstance(value, str) else repr(value)


def _version(row: Sequence[Any]) -> KeyVersion:
    try:
        status = KeyStatus(_str(row[2], "status"))
        created = _time(row[6], "created_at")
        assert created is not None
        return KeyVersion(
            keyring=_str(row[0], "keyring"),
            version=_int(row[1], "version"),
            status=status,
            wrapped_key=_blob(row[3], "wrapped_key", null=True),
            provider=_str(row[4], "provider"),
            root_key_id=_str(row[5], "root_key_id"),
            created_at=created,
            expires_at=_time(row[7], "expires_at", null=True),
            status_changed_at=_time(row[8], "status_changed_at", null=True),
            revoked_at=_time(row[9], "revoked_at", null=True),
            destroyed_at=_time(row[10], "destroyed_at", null=True),
            encryptions=_int(row[11], "encryptions"),
            reason=_str(row[12], "reason"),
        )
    except (_Bad, ValueError) as exc:
        what = f"unknown status {row[2]!r}" if not isinstance(exc, _Bad) else str(exc)
        name = f"{_name(row[0])}/v{_name(row[1])}"
        raise CorruptRecordError(f"key version {name} is corrupt: {what}", record=name,
                                 key_version=row[1] if isinstance(row[1], int) else None) from None


_MAX_VERSION = 2**31 - 1  # key_versions.version is a 32-bit signed INTEGER


def header_version(envelope: bytes) -> int | None:
    """The key version an envelope's header names (bytes 4..8), or None for a blob that is no envelope."""
    if len(envelope) < 8 or envelope[:2] != b"NC":
        return None
    version = int.from_bytes(envelope[4:8], "big")
    return version if version <= _MAX_VERSION else None


_NUMBER = (int, float)


def _credential(row: Sequence[Any]) -> EncryptedCredential:
    kr, cid, scope, column, envelope, meta, revision, created, updated = row
    if (  # the fast path: every column of the type the schema promises
        type(kr) is str and type(cid) is str and type(scope) is str and type(column) is int
        and type(envelope) in _BLOB and type(meta) is str and type(revision) is int
        and type(created) in _NUMBER and type(updated) in _NUMBER
    ):
        try:
            metadata = json.loads(meta) if meta else {}
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
        column = _int(row[3], "key_version")
        envelope = _blob(row[4], "envelope")
        assert envelope is not None
        named = header_version(envelope)
        key_version = column if named is None else named
        try:
            metadata = json.loads(_str(row[5], "metadata")) if row[5] else {}
        except ValueError:
            raise _Bad("corrupt metadata (not JSON)") from None
        if not isinstance(metadata, dict):
            raise _Bad("corrupt metadata (not a JSON object)")
        created, updated = _time(row[7], "created_at"), _time(row[8], "updated_at")
        assert created is not None and updated is not None
        return EncryptedCredential(
            keyring=_str(row[0], "keyring"),
            id=_str(row[1], "id"),
            scope=_str(row[2], "scope"),
            key_version=key_version,
            envelope=envelope,
            metadata=metadata,
            revision=_int(row[6], "revision"),
            created_at=created,
            updated_at=updated,
        )
    except _Bad as exc:
        raise _corrupt_credential(row[0], row[1], row[3], exc) from None


def _corrupt_credential(keyring: Any, cid: Any, key_version: Any, exc: Exception) -> CorruptRecordError:
    """The typed error for a credential row whose columns are not what the schema promises."""
    name = _name(cid)
    return CorruptRecordError(
        f"credential {name!r} in keyring {_name(keyring)!r} is a corrupt record: {exc}", record=name,
        key_version=key_version if isinstance(key_version, int) and not isinstance(key_version, bool) else None,
    )


def _audit(row: Sequence[Any]) -> AuditRow:
    try:
        ts = row[1]
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise _Bad(f"ts is {_kind(ts)}, not a number")
        mac = _blob(row[9], "mac")
        assert mac is not None
        return AuditRow(
            seq=_int(row[0], "seq"),
            ts=float(ts),
            actor=_str(row[2], "actor"),
            action=_str(row[3], "action"),
            keyring=_str(row[4], "keyring", null=True),
            key_version=_int(row[5], "key_version", null=True),
            credential_id=_str(row[6], "credential_id", null=True),
            outcome=_str(row[7], "outcome"),
            details=_str(row[8], "details"),
            mac=mac,
        )
    except _Bad as exc:
        name = f"audit seq {_name(row[0])}"
        raise CorruptRecordError(f"{name} is a corrupt record: {exc}", record=name) from None


def _decode_page(rows: Sequence[Sequence[Any]], skip_corrupt: bool) -> CredentialPage:
    page = CredentialPage()
    for r in rows:
        try:
            page.append(_credential(r))
        except CorruptRecordError as exc:
            if not skip_corrupt:
                raise
            page.corrupt.append(exc)
    page.fetched = len(rows)
    page.last_id = rows[-1][1] if rows else None
    return page


def _token(row: Sequence[Any]) -> TokenRow:
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
    )


def _backup(row: Sequence[Any]) -> BackupRecord:
    taken, expires, registered = from_epoch(row[2]), from_epoch(row[3]), from_epoch(row[4])
    assert taken is not None and expires is not None and registered is not None
    return BackupRecord(str(row[0]), str(row[1]), taken, expires, registered, str(row[5]), str(row[6]))


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """The AND of the clauses whose value is not None, and their parameters."""
    used = [(clause, value) for clause, value in conditions if value is not None]
    return " AND ".join(c for c, _ in used) or "1 = 1", [v for _, v in used]


def prefix_successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code point order); None if none is.

    ``id >= prefix AND id < successor`` is then exactly "starts with", as a
    range the primary key's index answers.  Surrogates are skipped (no id or
    database text holds one).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def like_prefix(prefix: str) -> str:
    """The LIKE pattern (escape character ``\\``) of the strings that start with ``prefix`` literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SqlTx(StoreTx):
    """StoreTx over a DB-API connection; subclasses adapt the dialect."""

    paramstyle_qmark = True

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    # ---- dialect hooks -----------------------------------------------
    def _q(self, sql: str) -> str:
        return sql if self.paramstyle_qmark else _pyformat(sql)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._q(sql), params)

    def _many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(self._q(sql), seq)

    def _lock_suffix(self, skip_locked: bool) -> str:
        return ""

    def _row_lock(self, mode: str) -> str:
        """`` FOR <mode>`` where the dialect has row locks (SQLite: one writer, none needed)."""
        return ""

    def _lock_audit_head(self) -> None:
        """Serialise appenders of the audit chain (SQLite: the write lock does)."""

    # ---- meta ----------------------------------------------------------
    def get_meta(self, name: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._exec(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def schema_version(self) -> int:
        row = self._exec("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def has_table(self, name: str) -> bool:
        return self._table_exists(name)

    def _table_exists(self, name: str) -> bool:
        row = self._exec(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def apply_migrations(self, migrations: Sequence[Sequence[str]], real: str) -> int:
        """Bring the schema up to date inside this transaction; returns the version in force.

        The caller holds whatever lock serialises migrators (SQLite: the
        write lock; PostgreSQL: an advisory lock), so two processes opening a
        new database at once apply each migration exactly once.  An
        up-to-date schema is only read, never touched with DDL, so runtime
        roles without CREATE rights can open the store.
        """
        if self._table_exists("schema_version"):
            current = self.schema_version()
        else:
            self._exec(
                "CREATE TABLE schema_version "
                f"(version INTEGER PRIMARY KEY, applied_at {real} NOT NULL)"
            )
            current = 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this library "
                f"understands ({SCHEMA_VERSION}); upgrade nebula-credential"
            )
        for number, statements in enumerate(migrations, 1):
            if number <= current:
                continue
            for stmt in statements:
                self._exec(stmt)
            self._exec(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (number, time.time()),
            )
        return max(current, len(migrations))

    # ---- key versions --------------------------------------------------
    def keyrings(self) -> list[str]:
        rows = self._exec("SELECT DISTINCT keyring FROM key_versions ORDER BY keyring").fetchall()
        return [r[0] for r in rows]

    def list_versions(self, keyring: str) -> list[KeyVersion]:
        rows = self._exec(
            f"SELECT {_VERSION_COLS} FROM key_versions WHERE keyring = ? ORDER BY version",
            (keyring,),
        ).fetchall()
        return [_version(r) for r in rows]

    def get_version(self, keyring: str, version: int) -> KeyVersion | None:
        row = self._exec(
            f"SELECT {_VERSION_COLS} FROM key_versions WHERE keyring = ? AND version = ?",
            (keyring, version),
        ).fetchone()
        return None if row is None else _version(row)

    def lock_keyring(self, keyring: str) -> None:
        """SQLite: a write transaction already holds the database write lock."""

    def lock_version(self, keyring: str, version: int) -> KeyVersion | None:
        row = self._exec(
            f"SELECT {_VERSION_COLS} FROM key_versions WHERE keyring = ? AND version = ?"
            + self._row_lock("UPDATE"),
            (keyring, version),
        ).fetchone()
        return None if row is None else _version(row)

    def writable_versions(self, keyring: str, versions: Sequence[int]) -> dict[int, KeyStatus]:
        if len(versions) == 1:  # the hot path: one put, one primary-key read
            row = self._exec(
                "SELECT status FROM key_versions WHERE keyring = ? AND version = ?" + self._row_lock("KEY SHARE"),
                (keyring, versions[0]),
            ).fetchone()
            return {} if row is None else {versions[0]: _STATUS.get(row[0], KeyStatus.DESTROYED)}
        if not versions:
            return {}
        marks = ", ".join("?" for _ in versions)
        rows = self._exec(
            f"SELECT version, status FROM key_versions WHERE keyring = ? AND version IN ({marks}) "
            "ORDER BY version" + self._row_lock("KEY SHARE"),
            (keyring, *versions),
        ).fetchall()
        # an unknown status is treated as destroyed: never writable
        return {int(v): _STATUS.get(status, KeyStatus.DESTROYED) for v, status in rows}

    def insert_version(self, kv: KeyVersion) -> None:
        self._exec(
            f"INSERT INTO key_versions ({_VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                kv.keyring,
                kv.version,
                str(kv.status),
                kv.wrapped_key,
                kv.provider,
                kv.root_key_id,
                to_epoch(kv.created_at),
                to_epoch(kv.expires_at),
                to_epoch(kv.status_changed_at),
                to_epoch(kv.revoked_at),
                to_epoch(kv.destroyed_at),
                kv.encryptions,
                kv.reason,
            ),
        )

    def set_status(
        self, keyring: str, version: int, expected: KeyStatus, new: KeyStatus, at: datetime
    ) -> bool:
        ts = to_epoch(at)
        extra = ""
        params: list[Any] = [str(new), ts]
        if new is KeyStatus.REVOKED:
            extra = ", revoked_at = ?"
            params.append(ts)
        elif new is KeyStatus.DESTROYED:
            extra = ", destroyed_at = ?, wrapped_key = NULL"
            params.append(ts)
        elif new is KeyStatus.VALID and expected is KeyStatus.REVOKED:
            extra = ", revoked_at = NULL"
        params += [keyring, version, str(expected)]
        cur = self._exec(
            f"UPDATE key_versions SET status = ?, status_changed_at = ?{extra} "
            "WHERE keyring = ? AND version = ? AND status = ?",
            params,
        )
        return bool(cur.rowcount == 1)

    def set_wrapped_key(self, keyring: str, version: int, wrapped: bytes, root_key_id: str) -> None:
        self._exec(
            "UPDATE key_versions SET wrapped_key = ?, root_key_id = ? "
            "WHERE keyring = ? AND version = ? AND wrapped_key IS NOT NULL",
            (wrapped, root_key_id, keyring, version),
        )

    def add_encryptions(self, keyring: str, version: int, count: int) -> int:
        self._exec(
            "UPDATE key_versions SET encryptions = encryptions + ? WHERE keyring = ? AND version = ?",
            (count, keyring, version),
        )
        row = self._exec(
            "SELECT encryptions FROM key_versions WHERE keyring = ? AND version = ?",
            (keyring, version),
        ).fetchone()
        return 0 if row is None else int(row[0])

    # ---- credentials ---------------------------------------------------
    _UPSERT = f"INSERT INTO credentials ({_CRED_COLS}) VALUES (?,?,?,?,?,?,1,?,?) " + _ON_CONFLICT

    def get_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        row = self._exec(
            f"SELECT {_CRED_COLS} FROM credentials WHERE keyring = ? AND id = ?",
            (keyring, credential_id),
        ).fetchone()
        return None if row is None else _credential(row)

    def put_credential(
        self,
        keyring: str,
        credential_id: str,
        scope: str,
        key_version: int,
        envelope: bytes,
        metadata: dict[str, Any],
        now: datetime,
    ) -> int:
        ts = to_epoch(now)
        row = self._exec(
            self._UPSERT + " RETURNING revision",
            (keyring, credential_id, scope, key_version, envelope, _json(metadata), ts, ts),
        ).fetchone()
        return int(row[0])

    def put_credential_checked(
        self,
        keyring: str,
        credential_id: str,
        scope: str,
        key_version: int,
        envelope: bytes,
        metadata: dict[str, Any],
        now: datetime,
        statuses: Collection[KeyStatus],
        expected_revision: int | None = None,
    ) -> int | None:
        # One statement: the row is written only if the version's row (share-locked on
        # PostgreSQL) has one of ``statuses`` -- and, for a check-and-set, only if the
        # stored revision is ``expected_revision`` (0: no row yet); RETURNING says whether it was.
        if not statuses:
            return None
        ts = to_epoch(now)
        status_params = (keyring, key_version, *(s.value for s in statuses))
        lock = self._row_lock("KEY SHARE")
        if expected_revision is None or expected_revision == 0:
            sql = _checked_upsert(len(statuses), lock)
            if expected_revision == 0:
                sql = sql.replace(_ON_CONFLICT, "ON CONFLICT (keyring, id) DO NOTHING")
            params: tuple[Any, ...] = (keyring, credential_id, scope, key_version, envelope, _json(metadata), ts,
                                       ts, *status_params)
        else:
            marks = ", ".join("?" for _ in statuses)
            sql = (
                "UPDATE credentials SET scope = ?, key_version = ?, envelope = ?, metadata = ?, "
                "revision = revision + 1, updated_at = ? WHERE keyring = ? AND id = ? AND revision = ? "
                "AND EXISTS (SELECT 1 FROM key_versions WHERE keyring = ? AND version = ? "
                f"AND status IN ({marks}){lock}) RETURNING revision"
            )
            params = (scope, key_version, envelope, _json(metadata), ts, keyring, credential_id, expected_revision,
                      *status_params)
        row = self._exec(sql, params).fetchone()
        return None if row is None else int(row[0])

    def put_credentials(
        self,
        keyring: str,
        rows: Sequence[tuple[str, str, int, bytes, dict[str, Any]]],
        now: datetime,
    ) -> None:
        ts = to_epoch(now)
        self._many(
            self._UPSERT,
            [(keyring, i, s, v, e, _json(m), ts, ts) for (i, s, v, e, m) in rows],
        )

    def delete_credential(self, keyring: str, credential_id: str) -> bool:
        cur = self._exec(
            "DELETE FROM credentials WHERE keyring = ? AND id = ?", (keyring, credential_id)
        )
        return bool(cur.rowcount == 1)

    def list_credentials(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after_id: Any = None,
        limit: int = 1000,
        skip_corrupt: bool = False,
    ) -> CredentialPage:
        rows = self._credential_page(_CRED_COLS, keyring, scope, key_version, after_id, limit)
        return _decode_page(rows, skip_corrupt)

    def _credential_page(self, cols: str, keyring: str, scope: str | None, key_version: int | None,
                         after_id: Any, limit: int) -> list[Any]:
        where, params = _where(
            ("keyring = ?", keyring), ("scope = ?", scope), ("key_version = ?", key_version), ("id > ?", after_id)
        )
        return list(self._exec(
            f"SELECT {cols} FROM credentials WHERE {where} ORDER BY id LIMIT ?",
            [*params, limit],
        ).fetchall())

    #: The envelope header's version bytes (4..8) where the column holds a real envelope, else NULL.
    _HEADER_SQL = "CASE WHEN typeof(envelope) = 'blob' AND length(envelope) >= 8 THEN substr(envelope, 5, 4) END"

    #: Rows whose key_version column disagrees with the version their envelope header names.
    _MISMATCH_SQL = (
        "typeof(envelope) = 'blob' AND length(envelope) >= 8 AND typeof(key_version) = 'integer' "
        "AND hex(substr(envelope, 5, 4)) <> printf('%08X', key_version)"
    )

    def version_mismatches(self, keyring: str, limit: int = 100) -> list[tuple[str, int, int]]:
        rows = self._exec(
            f"SELECT id, key_version, {self._HEADER_SQL} FROM credentials WHERE keyring = ? "
            f"AND {self._MISMATCH_SQL} ORDER BY id LIMIT ?",
            (keyring, limit),
        ).fetchall()
        return [(_name(i), c if isinstance(c, int) else -1, int.from_bytes(bytes(h), "big")) for i, c, h in rows]

    def versions_referenced(self, keyring: str) -> dict[int, int]:
        rows = self._exec(
            f"SELECT {self._HEADER_SQL} AS header, key_version, COUNT(*) FROM credentials "
            "WHERE keyring = ? GROUP BY header, key_version",
            (keyring,),
        ).fetchall()
        out: dict[int, int] = {}
        for header, column, n in rows:
            if isinstance(header, _BLOB) and len(header) == 4:
                version = int.from_bytes(bytes(header), "big")
            elif isinstance(column, int):
                version = column
            else:
                continue
            out[version] = out.get(version, 0) + int(n)
        return out

    def count_by_version(self, keyring: str) -> dict[int, int]:
        rows = self._exec(
            "SELECT key_version, COUNT(*) FROM credentials WHERE keyring = ? GROUP BY key_version",
            (keyring,),
        ).fetchall()
        # a key_version that is not an integer is a corrupt row: named by list, reencrypt and doctor
        return {v: int(n) for v, n in rows if isinstance(v, int) and not isinstance(v, bool)}

    def scopes_for_version(self, keyring: str, version: int) -> list[str]:
        rows = self._exec(
            "SELECT DISTINCT scope FROM credentials WHERE keyring = ? AND key_version = ? "
            "ORDER BY scope",
            (keyring, version),
        ).fetchall()
        return [r[0] for r in rows]

    def fetch_for_reencryption(
        self,
        keyring: str,
        key_version: int,
        scope: str,
        after_id: Any,
        limit: int,
        *,
        skip_locked: bool = False,
        skip_corrupt: bool = False,
    ) -> CredentialPage:
        rows = self._exec(
            f"SELECT {_CRED_COLS} FROM credentials WHERE keyring = ? AND key_version = ? "
            "AND scope = ? AND id > ? ORDER BY id LIMIT ?" + self._lock_suffix(skip_locked),
            (keyring, key_version, scope, after_id or "", limit),
        ).fetchall()
        return _decode_page(rows, skip_corrupt)

    def count_pending_by_scope(self, keyring: str, active_version: int) -> dict[str, int]:
        rows = self._exec(
            "SELECT scope, COUNT(*) FROM credentials WHERE keyring = ? AND key_version <> ? "
            "GROUP BY scope",
            (keyring, active_version),
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def cas_update_envelopes(
        self, keyring: str, updates: Sequence[tuple[str, int, int, bytes]]
    ) -> int:
        # one executemany for the batch; DB-API sums rowcount over it (sqlite3 and
        # psycopg alike), so a row whose revision moved on counts 0
        if not updates:
            return 0
        cur = self._conn.executemany(
            self._q(
                "UPDATE credentials SET envelope = ?, key_version = ?, revision = revision + 1 "
                "WHERE keyring = ? AND id = ? AND revision = ?"
            ),
            [(env, ver, keyring, cid, rev) for cid, rev, ver, env in updates],
        )
        return int(cur.rowcount)

    # ---- HTTP server: tokens and policies ---------------------------------
    def token_insert(self, row: TokenRow) -> None:
        self._exec(
            f"INSERT INTO server_tokens ({_TOKEN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (row.accessor, row.token_hash, row.parent, json.dumps(list(row.policies)), row.display_name,
             _json(row.meta), row.created_at, row.expires_at, row.max_expires_at, row.ttl, int(row.renewable)),
        )

    def token_by_hash(self, token_hash: str) -> TokenRow | None:
        row = self._exec(f"SELECT {_TOKEN_COLS} FROM server_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
        return None if row is None else _token(row)

    def token_by_accessor(self, accessor: str) -> TokenRow | None:
        row = self._exec(f"SELECT {_TOKEN_COLS} FROM server_tokens WHERE accessor = ?", (accessor,)).fetchone()
        return None if row is None else _token(row)

    def token_list(self) -> list[TokenRow]:
        rows = self._exec(f"SELECT {_TOKEN_COLS} FROM server_tokens ORDER BY created_at, accessor").fetchall()
        return [_token(r) for r in rows]

    def token_set_expiry(self, accessor: str, expires_at: float | None) -> bool:
        cur = self._exec("UPDATE server_tokens SET expires_at = ? WHERE accessor = ?", (expires_at, accessor))
        return bool(cur.rowcount == 1)

    def token_delete(self, accessors: Sequence[str]) -> int:
        return sum(
            int(self._exec("DELETE FROM server_tokens WHERE accessor = ?", (a,)).rowcount) for a in accessors
        )

    def token_children(self, accessor: str) -> list[str]:
        rows = self._exec("SELECT accessor FROM server_tokens WHERE parent = ?", (accessor,)).fetchall()
        return [r[0] for r in rows]

    def policy_put(self, name: str, body: str, now: datetime) -> None:
        self._exec(
            "INSERT INTO server_policies (name, body, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            (name, body, to_epoch(now)),
        )

    def policy_get(self, name: str) -> str | None:
        row = self._exec("SELECT body FROM server_policies WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def policy_list(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT name FROM server_policies ORDER BY name").fetchall()]

    def policy_delete(self, name: str) -> bool:
        return bool(self._exec("DELETE FROM server_policies WHERE name = ?", (name,)).rowcount == 1)

    # ---- backups -------------------------------------------------------
    def put_backup(self, record: BackupRecord, versions: dict[str, dict[int, int]]) -> None:
        self._exec("DELETE FROM backup_keys WHERE backup = ?", (record.name,))
        self._exec(
            f"INSERT INTO backups ({_BACKUP_COLS}) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, taken_at = excluded.taken_at, "
            "expires_at = excluded.expires_at, registered_at = excluded.registered_at, "
            "location = excluded.location, manifest = excluded.manifest",
            (record.name, record.kind, to_epoch(record.taken_at), to_epoch(record.expires_at),
             to_epoch(record.registered_at), record.location, record.manifest),
        )
        self._many(
            "INSERT INTO backup_keys (backup, keyring, version, credentials) VALUES (?,?,?,?)",
            [(record.name, kr, v, n) for kr, per in sorted(versions.items()) for v, n in sorted(per.items())],
        )

    def list_backups(self) -> list[BackupRecord]:
        rows = self._exec(f"SELECT {_BACKUP_COLS} FROM backups ORDER BY taken_at, name").fetchall()
        return [_backup(r) for r in rows]

    def delete_backup(self, name: str) -> bool:
        self._exec("DELETE FROM backup_keys WHERE backup = ?", (name,))
        cur = self._exec("DELETE FROM backups WHERE name = ?", (name,))
        return bool(cur.rowcount == 1)

    def backup_versions(self, name: str) -> dict[str, dict[int, int]]:
        rows = self._exec(
            "SELECT keyring, version, credentials FROM backup_keys WHERE backup = ?", (name,)
        ).fetchall()
        out: dict[str, dict[int, int]] = {}
        for keyring, version, count in rows:
            out.setdefault(str(keyring), {})[int(version)] = int(count)
        return out

    def backup_holds(self, keyring: str, version: int, now: datetime) -> list[tuple[str, datetime]]:
        rows = self._exec(
            "SELECT b.name, b.expires_at FROM backups b JOIN backup_keys k ON k.backup = b.name "
            "WHERE k.keyring = ? AND k.version = ? AND b.expires_at > ? "
            "ORDER BY b.expires_at DESC, b.name",
            (keyring, version, to_epoch(now)),
        ).fetchall()
        out = []
        for name, expires in rows:
            when = from_epoch(expires)
            assert when is not None
            out.append((str(name), when))
        return out

    # ---- leases --------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_seconds: float, now: datetime) -> bool:
        ts = to_epoch(now)
        assert ts is not None
        cur = self._exec(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
            (name, holder, ts + ttl_seconds, ts),
        )
        return bool(cur.rowcount == 1)

    def release_lease(self, name: str, holder: str) -> None:
        self._exec("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # ---- audit ---------------------------------------------------------
    def audit_tail(self) -> tuple[int, bytes]:
        self._lock_audit_head()
        row = self._exec(
            "SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (0, b"") if row is None else (int(row[0]), bytes(row[1]))

    _AUDIT_INSERT = f"INSERT INTO audit_events ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"

    def audit_append(self, *rows: AuditRow) -> None:
        params = [(row.seq, row.ts, row.actor, row.action, row.keyring, row.key_version, row.credential_id,
                   row.outcome, row.details, row.mac) for row in rows]
        if len(params) == 1:
            self._exec(self._AUDIT_INSERT, params[0])
        else:
            self._many(self._AUDIT_INSERT, params)

    def get_audit_head(self) -> str | None:
        row = self._exec("SELECT value FROM audit_head WHERE name = 'chain'").fetchone()
        return None if row is None else str(row[0])

    def set_audit_head(self, value: str) -> None:
        self._exec(
            "INSERT INTO audit_head (name, value) VALUES ('chain', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (value,),
        )

    def audit_rows(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        rows = self._exec(
            f"SELECT {_AUDIT_COLS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [_audit(r) for r in rows]

    def audit_search(
        self,
        *,
        limit: int = 100,
        action: str | None = None,
        keyring: str | None = None,
        version: int | None = None,
        since: float | None = None,
    ) -> list[AuditRow]:
        prefix = action is not None and action.endswith("*")
        where, params = _where(
            ("action LIKE ?" if prefix else "action = ?",
             action[:-1].replace("%", "") + "%" if prefix and action else action),
            # store-wide events (init, provider rotate) have no keyring
            ("(keyring = ? OR keyring IS NULL)", keyring),
            ("key_version = ?", version),
            ("ts >= ?", since),
        )
        rows = self._exec(
            f"SELECT {_AUDIT_COLS} FROM audit_events WHERE {where} ORDER BY seq DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [_audit(r) for r in reversed(rows)]

    def audit_counts(self, actions: Sequence[str], since: float | None = None) -> dict[tuple[str, str | None], int]:
        marks = ", ".join("?" for _ in actions)
        params: list[Any] = list(actions)
        cond = ""
        if since is not None:
            cond = " AND ts >= ?"
            params.append(since)
        rows = self._exec(
            f"SELECT action, keyring, COUNT(*) FROM audit_events WHERE action IN ({marks}){cond} "
            "GROUP BY action, keyring",
            params,
        ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def existing_ids(self, keyring: str, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(f"SELECT id FROM credentials WHERE keyring = ? AND id IN ({marks})",
                              [keyring, *chunk]).fetchall()
            found.update(r[0] for r in rows)
        return found

    #: How "id starts with" is asked: a range on the primary key where text compares by code
    #: point (SQLite's BINARY collation, UTF-8 bytes); a dialect whose column collation may be
    #: linguistic (PostgreSQL) asks LIKE with the pattern's wildcards escaped instead.
    _PREFIX_BY_RANGE = True

    def _prefix_clause(self, prefix: str) -> tuple[str, list[Any]]:
        if not prefix:
            return "1 = 1", []
        if not self._PREFIX_BY_RANGE:
            return "id LIKE ?", [like_prefix(prefix)]
        high = prefix_successor(prefix)
        return ("id >= ?", [prefix]) if high is None else ("id >= ? AND id < ?", [prefix, high])

    def ids_under(self, keyring: str, prefix: str, *, after_id: str | None = None, limit: int = 1000) -> Page[str]:
        clause, params = self._prefix_clause(prefix)
        after, more = _where(("id > ?", after_id))
        rows = self._exec(
            f"SELECT id FROM credentials WHERE keyring = ? AND {clause} AND {after} ORDER BY id LIMIT ?",
            [keyring, *params, *more, limit],
        ).fetchall()
        page: Page[str] = Page()
        for (cid,) in rows:
            if not isinstance(cid, str):
                raise _corrupt_credential(keyring, cid, None, _Bad(f"id is {_kind(cid)}, not text"))
            page.append(cid)
        page.fetched = len(rows)
        page.last_id = rows[-1][0] if rows else None
        return page

    def list_heads(
        self,
        keyring: str,
        *,
        scope: str | None = None,
        key_version: int | None = None,
        after_id: Any = None,
        limit: int = 1000,
        skip_corrupt: bool = False,
    ) -> Page[tuple[str, str, int, int, float]]:
        rows = self._credential_page("keyring, id, scope, key_version, envelope, revision, updated_at", keyring,
                                     scope, key_version, after_id, limit)
        page: Page[tuple[str, str, int, int, float]] = Page()
        for r in rows:
            try:
                envelope = _blob(r[4], "envelope")
                assert envelope is not None
                named = header_version(envelope)  # the header is authoritative, as in list_credentials
                updated = _time(r[6], "updated_at")
                assert updated is not None
                page.append((_str(r[1], "id"), _str(r[2], "scope"),
                             _int(r[3], "key_version") if named is None else named, _int(r[5], "revision"),
                             updated.timestamp()))
            except _Bad as exc:
                error = _corrupt_credential(r[0], r[1], r[3], exc)
                if not skip_corrupt:
                    raise error from None
                page.corrupt.append(error)
        page.fetched = len(rows)
        page.last_id = rows[-1][1] if rows else None
        return page

    # ---- key access counters (schema v5) --------------------------------
    def add_key_access(self, keyring: str, version: int, bucket: int, accesses: int, failures: int) -> None:
        self._exec(
            "INSERT INTO key_access (keyring, version, bucket, accesses, failures) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (keyring, version, bucket) DO UPDATE SET "
            "accesses = key_access.accesses + excluded.accesses, "
            "failures = key_access.failures + excluded.failures",
            (keyring, version, bucket, accesses, failures),
        )

    def key_access_totals(self, since_bucket: int | None = None) -> dict[tuple[str, int], tuple[int, int]]:
        where, params = ("WHERE bucket >= ?", [since_bucket]) if since_bucket is not None else ("", [])
        rows = self._exec(
            f"SELECT keyring, version, SUM(accesses), SUM(failures) FROM key_access {where} "
            "GROUP BY keyring, version",
            params,
        ).fetchall()
        return {(r[0], int(r[1])): (int(r[2]), int(r[3])) for r in rows}


def schema_v1(blob: str, real: str) -> list[str]:
    """Version 1 of the schema, parameterised by the dialect's type names."""
    return [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS key_versions (
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            wrapped_key {blob},
            provider TEXT NOT NULL,
            root_key_id TEXT NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            expires_at {real},
            status_changed_at {real},
            revoked_at {real},
            destroyed_at {real},
            encryptions BIGINT NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (keyring, version),
            CHECK (status IN ('active', 'valid', 'grace', 'revoked', 'destroyed'))
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS key_versions_one_active "
        "ON key_versions (keyring) WHERE status = 'active'",
        f"""CREATE TABLE IF NOT EXISTS credentials (
            keyring TEXT NOT NULL,
            id TEXT NOT NULL,
            scope TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            envelope {blob} NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{{}}',
            revision BIGINT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            PRIMARY KEY (keyring, id)
        )""",
        "CREATE INDEX IF NOT EXISTS credentials_by_version "
        "ON credentials (keyring, key_version, scope, id)",
        f"CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
        f"expires_at {real} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS audit_events (
            seq BIGINT PRIMARY KEY,
            ts {real} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            keyring TEXT,
            key_version INTEGER,
            credential_id TEXT,
            outcome TEXT NOT NULL,
            details TEXT NOT NULL,
            mac {blob} NOT NULL
        )""",
    ]


def schema_v5_key_access() -> list[str]:
    """Version 5: key access counters per keyring, version and minute, flushed in blocks."""
    return ["""CREATE TABLE IF NOT EXISTS key_access (
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            bucket BIGINT NOT NULL,
            accesses BIGINT NOT NULL DEFAULT 0,
            failures BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (keyring, version, bucket)
        )"""]


def schema_v2() -> list[str]:
    """Version 2: the MAC'd head of the audit chain, in a table of its own so that
    application roles can advance it without write access to ``meta``."""
    return ["CREATE TABLE IF NOT EXISTS audit_head (name TEXT PRIMARY KEY, value TEXT NOT NULL)"]


def schema_v3_backups(real: str) -> list[str]:
    """Backups registered in the store, and the key versions each one needs.

    Retention reads ``backup_keys`` inside the destroy transaction, so a
    version an unexpired backup needs is never destroyed.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS backups (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            taken_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            registered_at {real} NOT NULL,
            location TEXT NOT NULL DEFAULT '',
            manifest TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS backup_keys (
            backup TEXT NOT NULL,
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            credentials BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (backup, keyring, version)
        )""",
        "CREATE INDEX IF NOT EXISTS backup_keys_by_version ON backup_keys (keyring, version)",
    ]


def schema_v4_server(real: str) -> list[str]:
    """Version 4: the HTTP server's tokens (keyed hashes only) and ACL policies."""
    return [
        f"""CREATE TABLE IF NOT EXISTS server_tokens (
            accessor TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            parent TEXT,
            policies TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '{{}}',
            created_at {real} NOT NULL,
            expires_at {real},
            max_expires_at {real},
            ttl {real} NOT NULL,
            renewable INTEGER NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS server_tokens_by_parent ON server_tokens (parent)",
        f"CREATE TABLE IF NOT EXISTS server_policies (name TEXT PRIMARY KEY, body TEXT NOT NULL, "
        f"updated_at {real} NOT NULL)",
    ]
