"""SQL of key versions (``key_versions``) and their access counters (``key_access``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..models import KeyStatus, KeyVersion, to_epoch
from ._rows import VERSION_COLS, decode_version
from ._sql_base import SqlBase
from .tx import KeysTx

_STATUS = {s.value: s for s in KeyStatus}


class KeysSql(SqlBase, KeysTx):
    """Key versions: the lifecycle's compare-and-swaps, row locks and counters."""

    def keyrings(self) -> list[str]:
        rows = self._exec("SELECT DISTINCT keyring FROM key_versions ORDER BY keyring").fetchall()
        return [r[0] for r in rows]

    def list_versions(self, keyring: str) -> list[KeyVersion]:
        rows = self._exec(
            f"SELECT {VERSION_COLS} FROM key_versions WHERE keyring = ? ORDER BY version",
            (keyring,),
        ).fetchall()
        return [decode_version(r) for r in rows]

    def get_version(self, keyring: str, version: int) -> KeyVersion | None:
        row = self._exec(
            f"SELECT {VERSION_COLS} FROM key_versions WHERE keyring = ? AND version = ?",
            (keyring, version),
        ).fetchone()
        return None if row is None else decode_version(row)

    def lock_keyring(self, keyring: str) -> None:
        """SQLite: a write transaction already holds the database write lock."""

    def lock_version(self, keyring: str, version: int) -> KeyVersion | None:
        row = self._exec(
            f"SELECT {VERSION_COLS} FROM key_versions WHERE keyring = ? AND version = ?"
            + self._row_lock("UPDATE"),
            (keyring, version),
        ).fetchone()
        return None if row is None else decode_version(row)

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
            f"INSERT INTO key_versions ({VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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

    # key access counters (schema v5)
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
