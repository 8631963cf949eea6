"""SQL of what operations keep: registered backups, leases and the audit chain."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from ..models import from_epoch, to_epoch
from ._rows import AUDIT_COLS, BACKUP_COLS, decode_audit, decode_backup
from ._sql_base import SqlBase, where_clause
from .records import AuditRow, BackupRecord
from .tx import OperationsTx


@cache
def audit_insert(rows: int) -> str:
    """The ``INSERT`` of ``rows`` chain rows in one statement."""
    return f"INSERT INTO audit_events ({AUDIT_COLS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * rows)


class OperationsSql(SqlBase, OperationsTx):
    """Backups and the versions they hold, leases, the audit chain and its head."""

    def put_backup(self, record: BackupRecord, versions: dict[str, dict[int, int]]) -> None:
        self._exec("DELETE FROM backup_keys WHERE backup = ?", (record.name,))
        self._exec(
            f"INSERT INTO backups ({BACKUP_COLS}) VALUES (?,?,?,?,?,?,?) "
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
        rows = self._exec(f"SELECT {BACKUP_COLS} FROM backups ORDER BY taken_at, name").fetchall()
        return [decode_backup(r) for r in rows]

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

    _AUDIT_INSERT = audit_insert(1)

    @staticmethod
    def _audit_params(row: AuditRow) -> tuple[Any, ...]:
        return (row.seq, row.ts, row.actor, row.action, row.keyring, row.key_version, row.credential_id,
                row.outcome, row.details, row.mac)

    def audit_append(self, *rows: AuditRow) -> None:
        params = [self._audit_params(row) for row in rows]
        if len(params) == 1:
            self._exec(self._AUDIT_INSERT, params[0])
        else:
            self._many(self._AUDIT_INSERT, params)

    def get_audit_head(self) -> str | None:
        row = self._exec("SELECT value FROM audit_head WHERE name = 'chain'").fetchone()
        return None if row is None else str(row[0])

    _AUDIT_HEAD_SET = ("INSERT INTO audit_head (name, value) VALUES ('chain', ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value")

    def set_audit_head(self, value: str) -> None:
        self._exec(self._AUDIT_HEAD_SET, (value,))

    def audit_rows(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        rows = self._exec(
            f"SELECT {AUDIT_COLS} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [decode_audit(r) for r in rows]

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
        where, params = where_clause(
            ("action LIKE ?" if prefix else "action = ?",
             action[:-1].replace("%", "") + "%" if prefix and action else action),
            # store-wide events (init, provider rotate) have no keyring
            ("(keyring = ? OR keyring IS NULL)", keyring),
            ("key_version = ?", version),
            ("ts >= ?", since),
        )
        rows = self._exec(
            f"SELECT {AUDIT_COLS} FROM audit_events WHERE {where} ORDER BY seq DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [decode_audit(r) for r in reversed(rows)]

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
