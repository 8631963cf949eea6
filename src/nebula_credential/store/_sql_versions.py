"""SQL of credential versions (``credential_versions``, schema v6).

A version row carries its own scope (the AEAD context binds it, and a
secret's scope may change between versions) and its key version, which
readers take from the envelope header as they do for ``credentials``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..envelope import key_version_field
from ..models import EncryptedCredential, to_epoch
from ._rows import BLOB_TYPES, CRED_COLS, as_blob, as_int, as_text, as_time, decode_credential, row_name
from ._sql_base import SqlBase, to_json
from .records import VersionRow
from .tx import VersionsTx

VERSION_COLS = "keyring, id, version, scope, key_version, envelope, created_at, deletion_time, destroyed"


_NUMBER = (int, float)


def _decode(row: Any) -> VersionRow:
    kr, cid, version, scope, key_version, envelope, created, deletion, destroyed = row
    if (  # the fast path (every read decodes one): each column of the type the schema promises
        type(kr) is str and type(cid) is str and type(version) is int and type(scope) is str
        and type(key_version) is int and (envelope is None or type(envelope) is bytes)
        and type(created) in _NUMBER and (deletion is None or type(deletion) in _NUMBER)
    ):
        try:
            return VersionRow(kr, cid, version, scope, key_version, envelope, datetime.fromtimestamp(created, UTC),
                              None if deletion is None else datetime.fromtimestamp(deletion, UTC), bool(destroyed))
        except (OverflowError, OSError, ValueError):  # a timestamp out of range: the slow path names it
            pass
    return _decode_checked(row)


def _decode_checked(row: Any) -> VersionRow:
    created = as_time(row[6], "created_at")
    assert created is not None
    return VersionRow(
        keyring=as_text(row[0], "keyring"), id=as_text(row[1], "id"), version=as_int(row[2], "version"),
        scope=as_text(row[3], "scope"), key_version=as_int(row[4], "key_version"),
        envelope=as_blob(row[5], "envelope", null=True), created_at=created,
        deletion_time=as_time(row[7], "deletion_time", null=True), destroyed=bool(row[8]),
    )


def decode_credential_version(row: Sequence[Any]) -> tuple[EncryptedCredential, VersionRow | None, int]:
    """A row of :attr:`VersionsSql._VERSION_SQL`: the current row, the version's row (None: no such
    version) and the latest version number (0: none)."""
    return decode_credential(row[:9]), None if row[11] is None else _decode(row[9:18]), int(row[18] or 0)


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


class VersionsSql(SqlBase, VersionsTx):
    """Version rows: appended by every write, pruned past ``max_versions``, flagged, destroyed, re-encrypted."""

    _HEADER_SQL: str
    _MISMATCH_SQL: str

    def lock_credential(self, keyring: str, credential_id: str) -> EncryptedCredential | None:
        row = self._exec(
            f"SELECT {CRED_COLS} FROM credentials WHERE keyring = ? AND id = ?{self._row_lock('UPDATE')}",
            (keyring, credential_id),
        ).fetchone()
        return None if row is None else decode_credential(row)

    def lock_credential_and_meta(self, keyring: str, credential_id: str,
                                 name: str) -> tuple[EncryptedCredential | None, str | None]:
        head, meta = self._exec_all([  # one round trip on PostgreSQL
            (f"SELECT {CRED_COLS} FROM credentials WHERE keyring = ? AND id = ?{self._row_lock('UPDATE')}",
             (keyring, credential_id)),
            ("SELECT value FROM meta WHERE name = ?", (name,)),
        ])
        row, value = head.fetchone(), meta.fetchone()
        return None if row is None else decode_credential(row), None if value is None else str(value[0])

    def set_credential_metadata(self, keyring: str, credential_id: str, metadata: dict[str, Any]) -> bool:
        cur = self._exec("UPDATE credentials SET metadata = ? WHERE keyring = ? AND id = ?",
                         (to_json(metadata), keyring, credential_id))
        return bool(cur.rowcount == 1)

    def replace_envelope(self, keyring: str, credential_id: str, key_version: int, envelope: bytes,
                         metadata: dict[str, Any], now: datetime) -> bool:
        cur = self._exec(
            "UPDATE credentials SET key_version = ?, envelope = ?, metadata = ?, revision = revision + 1, "
            "updated_at = ? WHERE keyring = ? AND id = ?",
            (key_version, envelope, to_json(metadata), to_epoch(now), keyring, credential_id))
        return bool(cur.rowcount == 1)

    def latest_version(self, keyring: str, credential_id: str) -> int:
        row = self._exec("SELECT MAX(version) FROM credential_versions WHERE keyring = ? AND id = ?",
                         (keyring, credential_id)).fetchone()
        return int(row[0] or 0)

    def add_version(self, row: VersionRow) -> None:
        self._defer(
            f"INSERT INTO credential_versions ({VERSION_COLS}) VALUES ({_marks(9)})",
            (row.keyring, row.id, row.version, row.scope, row.key_version, row.envelope, to_epoch(row.created_at),
             None if row.deletion_time is None else to_epoch(row.deletion_time), int(row.destroyed)),
        )

    def archive_version(self, keyring: str, credential_id: str, version: int, key_version: int,
                        envelope: bytes) -> None:
        self._defer(
            "UPDATE credential_versions SET envelope = ?, key_version = ? WHERE keyring = ? AND id = ? "
            "AND version = ? AND destroyed = 0 AND envelope IS NULL",
            (envelope, key_version, keyring, credential_id, version))

    def get_version_row(self, keyring: str, credential_id: str, version: int) -> VersionRow | None:
        row = self._exec(
            f"SELECT {VERSION_COLS} FROM credential_versions WHERE keyring = ? AND id = ? AND version = ?",
            (keyring, credential_id, version),
        ).fetchone()
        return None if row is None else _decode(row)

    def version_rows(self, keyring: str, credential_id: str) -> list[VersionRow]:
        rows = self._exec(
            f"SELECT {VERSION_COLS} FROM credential_versions WHERE keyring = ? AND id = ? ORDER BY version",
            (keyring, credential_id),
        ).fetchall()
        return [_decode(r) for r in rows]

    #: The current row's columns, then a version row's; the current row's envelope only beside the
    #: newest version (the current one) or alone when there is none, so it crosses the wire once.
    _HISTORY_SQL = (
        "SELECT c.keyring, c.id, c.scope, c.key_version, "
        "CASE WHEN v.version IS NULL OR v.version = (SELECT MAX(m.version) FROM credential_versions m "
        "WHERE m.keyring = c.keyring AND m.id = c.id) THEN c.envelope END, "
        "c.metadata, c.revision, c.created_at, c.updated_at, "
        "v.keyring, v.id, v.version, v.scope, v.key_version, v.envelope, v.created_at, v.deletion_time, v.destroyed "
        "FROM credentials c LEFT JOIN credential_versions v ON v.keyring = c.keyring AND v.id = c.id "
        "WHERE c.keyring = ? AND c.id = ? ORDER BY v.version"
    )

    def credential_history(self, keyring: str, credential_id: str
                           ) -> tuple[EncryptedCredential, list[VersionRow]] | None:
        rows = self._exec(self._HISTORY_SQL, (keyring, credential_id)).fetchall()
        if not rows:
            return None
        head = decode_credential(rows[-1][:9])  # the newest version's row carries the current envelope
        if rows[-1][11] is None:  # LEFT JOIN: no version row at all
            return head, []
        return head, [_decode(r[9:]) for r in rows]

    #: The current row, one version row (or NULLs) and the latest version number: one row, one statement.
    #: ``{version}`` is ``?`` for a given version, the latest's number for the current one.
    _VERSION_SQL = (
        "SELECT c.keyring, c.id, c.scope, c.key_version, c.envelope, c.metadata, c.revision, c.created_at, "
        "c.updated_at, v.keyring, v.id, v.version, v.scope, v.key_version, v.envelope, v.created_at, "
        "v.deletion_time, v.destroyed, "
        "(SELECT MAX(m.version) FROM credential_versions m WHERE m.keyring = c.keyring AND m.id = c.id) "
        "FROM credentials c LEFT JOIN credential_versions v ON v.keyring = c.keyring AND v.id = c.id "
        "AND v.version = {version} WHERE c.keyring = ? AND c.id = ?"
    )
    _LATEST = "(SELECT MAX(m.version) FROM credential_versions m WHERE m.keyring = c.keyring AND m.id = c.id)"
    _CURRENT_VERSION_SQL = _VERSION_SQL.format(version=_LATEST)
    _GIVEN_VERSION_SQL = _VERSION_SQL.format(version="?")

    def credential_version(self, keyring: str, credential_id: str, version: int | None
                           ) -> tuple[EncryptedCredential, VersionRow | None, int] | None:
        if version is None:
            row = self._exec(self._CURRENT_VERSION_SQL, (keyring, credential_id)).fetchone()
        else:
            row = self._exec(self._GIVEN_VERSION_SQL, (version, keyring, credential_id)).fetchone()
        return None if row is None else decode_credential_version(row)

    def prune_versions(self, keyring: str, credential_id: str, up_to: int) -> None:
        if up_to >= 1:
            self._defer("DELETE FROM credential_versions WHERE keyring = ? AND id = ? AND version <= ?",
                        (keyring, credential_id, up_to))

    def _changed(self, sql: str, params: Sequence[Any]) -> list[int]:
        return sorted(int(r[0]) for r in self._exec(sql + " RETURNING version", params).fetchall())

    def set_deletion_time(self, keyring: str, credential_id: str, versions: Sequence[int],
                          at: datetime | None) -> list[int]:
        if not versions:
            return []
        return self._changed(
            f"UPDATE credential_versions SET deletion_time = ? WHERE keyring = ? AND id = ? "
            f"AND version IN ({_marks(len(versions))}) AND destroyed = 0",
            (None if at is None else to_epoch(at), keyring, credential_id, *versions))

    def destroy_versions(self, keyring: str, credential_id: str, versions: Sequence[int], at: datetime) -> list[int]:
        if not versions:
            return []
        return self._changed(
            f"UPDATE credential_versions SET envelope = NULL, destroyed = 1 WHERE keyring = ? AND id = ? "
            f"AND version IN ({_marks(len(versions))}) AND destroyed = 0",
            (keyring, credential_id, *versions))

    def delete_all_versions(self, keyring: str, credential_id: str) -> int:
        cur = self._exec("DELETE FROM credential_versions WHERE keyring = ? AND id = ?", (keyring, credential_id))
        return int(cur.rowcount)

    def version_envelopes_referenced(self, keyring: str) -> dict[int, int]:
        rows = self._exec(
            f"SELECT {self._HEADER_SQL} AS header, key_version, COUNT(*) FROM credential_versions "
            "WHERE keyring = ? AND envelope IS NOT NULL GROUP BY header, key_version",
            (keyring,),
        ).fetchall()
        out: dict[int, int] = {}
        for header, column, n in rows:
            named = key_version_field(header) if isinstance(header, BLOB_TYPES) else None
            version = named if named is not None else column if isinstance(column, int) else None
            if version is not None:
                out[version] = out.get(version, 0) + int(n)
        return out

    def versions_for_reencryption(self, keyring: str, active_version: int, after: tuple[str, int] | None,
                                  limit: int) -> list[VersionRow]:
        # by column first (indexed), then by header: a lying column is reported by doctor, not moved
        after_id, after_version = after if after is not None else ("", 0)
        rows = self._exec(
            f"SELECT {VERSION_COLS} FROM credential_versions WHERE keyring = ? AND envelope IS NOT NULL "
            "AND key_version <> ? AND (id > ? OR (id = ? AND version > ?)) ORDER BY id, version LIMIT ?",
            (keyring, active_version, after_id, after_id, after_version, limit),
        ).fetchall()
        return [_decode(r) for r in rows]

    def cas_update_version_envelopes(self, keyring: str,
                                     updates: Sequence[tuple[str, int, bytes, int, bytes]]) -> int:
        changed = 0
        for cid, version, old, key_version, envelope in updates:
            cur = self._exec(
                "UPDATE credential_versions SET envelope = ?, key_version = ? WHERE keyring = ? AND id = ? "
                "AND version = ? AND envelope = ?",
                (envelope, key_version, keyring, cid, version, old))
            changed += int(cur.rowcount)
        return changed

    def version_header_mismatches(self, keyring: str, limit: int = 100) -> list[tuple[str, int, int, int]]:
        rows = self._exec(
            f"SELECT id, version, key_version, {self._HEADER_SQL} FROM credential_versions WHERE keyring = ? "
            f"AND envelope IS NOT NULL AND {self._MISMATCH_SQL} ORDER BY id, version LIMIT ?",
            (keyring, limit),
        ).fetchall()
        out = []
        for cid, version, column, header in rows:
            named = key_version_field(bytes(header)) if header is not None else None
            out.append((row_name(cid), int(version), column if isinstance(column, int) else -1,
                        -1 if named is None else named))
        return out

