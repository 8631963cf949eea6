"""SQL of the encrypted credentials (``credentials``).

Where a query reads the key version out of an envelope header, the
expression is built from :mod:`..envelope`'s layout constants: that module
is the only one that knows where the version sits.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..envelope import KEY_VERSION_END, KEY_VERSION_OFFSET, key_version_field
from ..models import EncryptedCredential, KeyStatus, to_epoch
from ._rows import (
    BLOB_TYPES,
    CRED_COLS,
    BadColumn,
    as_blob,
    as_int,
    as_text,
    as_time,
    corrupt_credential,
    decode_credential,
    decode_page,
    decode_reencrypt_page,
    header_version,
    kind_of,
    row_name,
)
from ._sql_base import SqlBase, to_json, where_clause
from .records import CredentialPage, Page, ReencryptPage
from .tx import CredentialsTx

#: SQL substring arguments of the header's key version: 1-based start, length.
VERSION_START_SQL = KEY_VERSION_OFFSET + 1
VERSION_LEN = KEY_VERSION_END - KEY_VERSION_OFFSET

_ON_CONFLICT = (
    "ON CONFLICT (keyring, id) DO UPDATE SET scope = excluded.scope, "
    "key_version = excluded.key_version, envelope = excluded.envelope, "
    "metadata = excluded.metadata, revision = credentials.revision + 1, "
    "updated_at = excluded.updated_at"
)


def _field_version(field: Any) -> int:
    """The version a header field cut out by ``_HEADER_SQL`` names (the query only returns whole fields)."""
    version = key_version_field(bytes(field))
    assert version is not None
    return version


@lru_cache(maxsize=16)
def _checked_upsert(statuses: int, lock: str) -> str:
    """The upsert of ``put_credential_checked``: written only if the version has one of the statuses."""
    marks = ", ".join("?" for _ in range(statuses))
    return (
        f"INSERT INTO credentials ({CRED_COLS}) SELECT ?, ?, ?, ?, ?, ?, 1, ?, ? FROM key_versions "
        f"WHERE keyring = ? AND version = ? AND status IN ({marks}){lock} " + _ON_CONFLICT + " RETURNING revision"
    )


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



class CredentialsSql(SqlBase, CredentialsTx):
    """Credential rows: the checked upsert of the hot path, paging, re-encryption batches."""

    _UPSERT = f"INSERT INTO credentials ({CRED_COLS}) VALUES (?,?,?,?,?,?,1,?,?) " + _ON_CONFLICT
    #: A checked write's RETURNING may also read the latest version number (SQLite, one writer at a time);
    #: PostgreSQL reads it in a statement of its own, after the row lock (see ``put_credential_checked_then_latest``).
    latest_in_returning = False

    def get_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        row = self._exec(
            f"SELECT {CRED_COLS} FROM credentials WHERE keyring = ? AND id = ?",
            (keyring, credential_id),
        ).fetchone()
        return None if row is None else decode_credential(row)

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
            (keyring, credential_id, scope, key_version, envelope, to_json(metadata), ts, ts),
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
        put = self._checked_put(keyring, credential_id, scope, key_version, envelope, metadata, now, statuses,
                                expected_revision)
        if put is None:
            return None
        row = self._exec(*put).fetchone()
        return None if row is None else int(row[0])

    def put_credential_checked_then_latest(
        self, keyring: str, credential_id: str, scope: str, key_version: int, envelope: bytes,
        metadata: dict[str, Any], now: datetime, statuses: Collection[KeyStatus],
        expected_revision: int | None = None, *, unchanged: bool = False,
    ) -> tuple[int | None, int]:
        latest = ("SELECT MAX(version) FROM credential_versions WHERE keyring = ? AND id = ?",
                  (keyring, credential_id))
        if self.latest_in_returning and unchanged and expected_revision is None and statuses:
            # SQLite: the upsert assigns scope and key_version, so SQLite rewrites their index entry even
            # when they keep their value (one more page in every commit); the row keeping both (the
            # usual write), an UPDATE of the other columns only, with the same status check in it
            marks = ", ".join("?" for _ in statuses)
            row = self._exec(
                "UPDATE credentials SET envelope = ?, metadata = ?, revision = revision + 1, updated_at = ? "
                "WHERE keyring = ? AND id = ? AND scope = ? AND key_version = ? AND EXISTS (SELECT 1 FROM "
                f"key_versions WHERE keyring = ? AND version = ? AND status IN ({marks})) RETURNING revision, "
                + latest[0].join("()"),
                (envelope, to_json(metadata), to_epoch(now), keyring, credential_id, scope, key_version, keyring,
                 key_version, *(s.value for s in statuses), *latest[1])).fetchone()
            if row is not None:
                return int(row[0]), int(row[1] or 0)
            # not written (a retired key version, or the columns were not as read): the general statement
        put = self._checked_put(keyring, credential_id, scope, key_version, envelope, metadata, now, statuses,
                                expected_revision)
        if put is None:
            return None, int(self._exec(*latest).fetchone()[0] or 0)
        if self.latest_in_returning:
            # SQLite: the write's RETURNING reads the number after the write, as the next statement would;
            # one statement fewer (nothing can come between: this connection holds the file's write lock)
            row = self._exec(put[0] + ", " + latest[0].join("()"), (*put[1], *latest[1])).fetchone()
            if row is not None:
                return int(row[0]), int(row[1] or 0)
            return None, int(self._exec(*latest).fetchone()[0] or 0)
        written, newest = self._exec_all([put, latest])  # one round trip on PostgreSQL, in this order
        row = written.fetchone()
        return None if row is None else int(row[0]), int(newest.fetchone()[0] or 0)

    def _checked_put(
        self, keyring: str, credential_id: str, scope: str, key_version: int, envelope: bytes,
        metadata: dict[str, Any], now: datetime, statuses: Collection[KeyStatus], expected_revision: int | None,
    ) -> tuple[str, tuple[Any, ...]] | None:
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
            params: tuple[Any, ...] = (keyring, credential_id, scope, key_version, envelope, to_json(metadata), ts,
                                       ts, *status_params)
        else:
            marks = ", ".join("?" for _ in statuses)
            sql = (
                "UPDATE credentials SET scope = ?, key_version = ?, envelope = ?, metadata = ?, "
                "revision = revision + 1, updated_at = ? WHERE keyring = ? AND id = ? AND revision = ? "
                "AND EXISTS (SELECT 1 FROM key_versions WHERE keyring = ? AND version = ? "
                f"AND status IN ({marks}){lock}) RETURNING revision"
            )
            params = (scope, key_version, envelope, to_json(metadata), ts, keyring, credential_id, expected_revision,
                      *status_params)
        return sql, params

    def put_credentials(
        self,
        keyring: str,
        rows: Sequence[tuple[str, str, int, bytes, dict[str, Any]]],
        now: datetime,
    ) -> None:
        ts = to_epoch(now)
        self._many(
            self._UPSERT,
            [(keyring, i, s, v, e, to_json(m), ts, ts) for (i, s, v, e, m) in rows],
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
        rows = self._credential_page(CRED_COLS, keyring, scope, key_version, after_id, limit)
        return decode_page(rows, skip_corrupt)

    def _credential_page(self, cols: str, keyring: str, scope: str | None, key_version: int | None,
                         after_id: Any, limit: int) -> list[Any]:
        where, params = where_clause(
            ("keyring = ?", keyring), ("scope = ?", scope), ("key_version = ?", key_version), ("id > ?", after_id)
        )
        return list(self._exec(
            f"SELECT {cols} FROM credentials WHERE {where} ORDER BY id LIMIT ?",
            [*params, limit],
        ).fetchall())

    #: The envelope header's version bytes where the column holds a real envelope, else NULL.
    _HEADER_SQL = (
        f"CASE WHEN typeof(envelope) = 'blob' AND length(envelope) >= {KEY_VERSION_END} "
        f"THEN substr(envelope, {VERSION_START_SQL}, {VERSION_LEN}) END"
    )

    #: Rows whose key_version column disagrees with the version their envelope header names.
    _MISMATCH_SQL = (
        f"typeof(envelope) = 'blob' AND length(envelope) >= {KEY_VERSION_END} AND typeof(key_version) = 'integer' "
        f"AND hex(substr(envelope, {VERSION_START_SQL}, {VERSION_LEN})) <> printf('%0{2 * VERSION_LEN}X', key_version)"
    )

    def version_mismatches(self, keyring: str, limit: int = 100) -> list[tuple[str, int, int]]:
        rows = self._exec(
            f"SELECT id, key_version, {self._HEADER_SQL} FROM credentials WHERE keyring = ? "
            f"AND {self._MISMATCH_SQL} ORDER BY id LIMIT ?",
            (keyring, limit),
        ).fetchall()
        return [(row_name(i), c if isinstance(c, int) else -1, _field_version(h)) for i, c, h in rows]

    def versions_referenced(self, keyring: str) -> dict[int, int]:
        rows = self._exec(
            f"SELECT {self._HEADER_SQL} AS header, key_version, COUNT(*) FROM credentials "
            "WHERE keyring = ? GROUP BY header, key_version",
            (keyring,),
        ).fetchall()
        out: dict[int, int] = {}
        for header, column, n in rows:
            named = key_version_field(header) if isinstance(header, BLOB_TYPES) else None
            if named is not None:
                version = named
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
    ) -> ReencryptPage:
        rows = self._exec(
            f"SELECT {CRED_COLS} FROM credentials WHERE keyring = ? AND key_version = ? "
            "AND scope = ? AND id > ? ORDER BY id LIMIT ?" + self._lock_suffix(skip_locked),
            (keyring, key_version, scope, after_id or "", limit),
        ).fetchall()
        return decode_reencrypt_page(rows, skip_corrupt)

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
        after, more = where_clause(("id > ?", after_id))
        rows = self._exec(
            f"SELECT id FROM credentials WHERE keyring = ? AND {clause} AND {after} ORDER BY id LIMIT ?",
            [keyring, *params, *more, limit],
        ).fetchall()
        page: Page[str] = Page()
        for (cid,) in rows:
            if not isinstance(cid, str):
                raise corrupt_credential(keyring, cid, None, BadColumn(f"id is {kind_of(cid)}, not text"))
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
                envelope = as_blob(r[4], "envelope")
                assert envelope is not None
                named = header_version(envelope)  # the header is authoritative, as in list_credentials
                updated = as_time(r[6], "updated_at")
                assert updated is not None
                page.append((as_text(r[1], "id"), as_text(r[2], "scope"),
                             as_int(r[3], "key_version") if named is None else named, as_int(r[5], "revision"),
                             updated.timestamp()))
            except BadColumn as exc:
                error = corrupt_credential(r[0], r[1], r[3], exc)
                if not skip_corrupt:
                    raise error from None
                page.corrupt.append(error)
        page.fetched = len(rows)
        page.last_id = rows[-1][1] if rows else None
        return page
