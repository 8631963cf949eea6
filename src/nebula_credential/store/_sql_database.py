"""SQL of the database secrets engine: MAC'd items with a revision, and leases claimed by conditional UPDATEs.

A lease is revoked by exactly one process: the claim is one UPDATE whose
WHERE clause holds only while nobody else holds an unexpired claim, so of
two concurrent claimers one sees ``rowcount`` 1 and the other 0.  A claim
that its holder never releases (a crash) expires and the lease is claimed
again: revocation is idempotent, so a second try after a crash is harmless.
"""

from __future__ import annotations

from typing import Any

from ._sql_base import SqlBase
from .records import LeaseRow
from .tx import DatabaseTx

_LEASE_COLS = ("lease_id, mount, engine, body, token_accessor, issue_time, expire_time, max_expire_time, renewable, "
               "state, attempts, next_attempt, last_error, revoked_at, claimed_by, claim_until, mac")
_UNCLAIMED = "(claim_until IS NULL OR claim_until < ?)"


def _lease(r: Any) -> LeaseRow:
    return LeaseRow(
        lease_id=str(r[0]), mount=str(r[1]), engine=str(r[2]), body=str(r[3]),
        token_accessor=None if r[4] is None else str(r[4]), issue_time=float(r[5]), expire_time=float(r[6]),
        max_expire_time=float(r[7]), renewable=bool(r[8]), state=str(r[9]), attempts=int(r[10]),
        next_attempt=None if r[11] is None else float(r[11]), last_error=str(r[12] or ""),
        revoked_at=None if r[13] is None else float(r[13]), claimed_by=None if r[14] is None else str(r[14]),
        claim_until=None if r[15] is None else float(r[15]), mac=str(r[16] or ""),
    )


class DatabaseSql(SqlBase, DatabaseTx):
    """Tables ``db_items`` and ``secret_leases``."""

    # ---- items ------------------------------------------------------------------------------
    def db_item_get(self, mount: str, kind: str, name: str) -> tuple[str, int, str] | None:
        row = self._exec("SELECT body, revision, mac FROM db_items WHERE mount = ? AND kind = ? AND name = ?",
                         (mount, kind, name)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), str(row[2] or ""))

    def db_item_put(self, mount: str, kind: str, name: str, body: str, mac: str, now: float,
                    expected_revision: int | None = None) -> int | None:
        if expected_revision == 0:
            cur = self._exec(
                "INSERT INTO db_items (mount, kind, name, body, revision, updated_at, mac) VALUES (?,?,?,?,1,?,?) "
                "ON CONFLICT (mount, kind, name) DO NOTHING", (mount, kind, name, body, now, mac))
            return 1 if cur.rowcount == 1 else None
        if expected_revision is not None:
            cur = self._exec(
                "UPDATE db_items SET body = ?, revision = revision + 1, updated_at = ?, mac = ? "
                "WHERE mount = ? AND kind = ? AND name = ? AND revision = ?",
                (body, now, mac, mount, kind, name, expected_revision))
            return expected_revision + 1 if cur.rowcount == 1 else None
        self._exec(
            "INSERT INTO db_items (mount, kind, name, body, revision, updated_at, mac) VALUES (?,?,?,?,1,?,?) "
            "ON CONFLICT (mount, kind, name) DO UPDATE SET body = excluded.body, "
            "revision = db_items.revision + 1, updated_at = excluded.updated_at, mac = excluded.mac",
            (mount, kind, name, body, now, mac))
        found = self.db_item_get(mount, kind, name)
        return None if found is None else found[1]

    def db_item_names(self, mount: str, kind: str) -> list[str]:
        rows = self._exec("SELECT name FROM db_items WHERE mount = ? AND kind = ? ORDER BY name",
                          (mount, kind)).fetchall()
        return [str(r[0]) for r in rows]

    def db_item_delete(self, mount: str, kind: str, name: str) -> bool:
        cur = self._exec("DELETE FROM db_items WHERE mount = ? AND kind = ? AND name = ?", (mount, kind, name))
        return bool(cur.rowcount == 1)

    def db_item_list_signed(self) -> list[tuple[str, str, str, str, str]]:
        rows = self._exec("SELECT mount, kind, name, body, mac FROM db_items ORDER BY mount, kind, name").fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4] or "")) for r in rows]

    def lease_list_all(self) -> list[LeaseRow]:
        return [_lease(r) for r in self._exec(f"SELECT {_LEASE_COLS} FROM secret_leases ORDER BY lease_id").fetchall()]

    def db_item_mounts(self) -> list[str]:
        return [str(r[0]) for r in self._exec("SELECT DISTINCT mount FROM db_items ORDER BY mount").fetchall()]

    # ---- leases -----------------------------------------------------------------------------
    def lease_insert(self, row: LeaseRow) -> None:
        self._exec(
            f"INSERT INTO secret_leases ({_LEASE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.lease_id, row.mount, row.engine, row.body, row.token_accessor, row.issue_time, row.expire_time,
             row.max_expire_time, row.renewable, row.state, row.attempts, row.next_attempt, row.last_error,
             row.revoked_at, row.claimed_by, row.claim_until, row.mac))

    def lease_get(self, lease_id: str) -> LeaseRow | None:
        row = self._exec(f"SELECT {_LEASE_COLS} FROM secret_leases WHERE lease_id = ?", (lease_id,)).fetchone()
        return None if row is None else _lease(row)

    def lease_ids(self, prefix: str, *, live_only: bool = True) -> list[str]:
        # substr, not LIKE (ids may hold '%' or '_') nor a range (a collation may not order bytewise)
        live = " AND state <> 'revoked'" if live_only else ""
        rows = self._exec(
            f"SELECT lease_id FROM secret_leases WHERE substr(lease_id, 1, ?) = ?{live} ORDER BY lease_id",
            (len(prefix), prefix)).fetchall()
        return [str(r[0]) for r in rows if str(r[0]).startswith(prefix)]

    def lease_ids_for_token(self, accessor: str) -> list[str]:
        rows = self._exec("SELECT lease_id FROM secret_leases WHERE token_accessor = ? AND state <> 'revoked' "
                          "ORDER BY lease_id", (accessor,)).fetchall()
        return [str(r[0]) for r in rows]

    def lease_extend(self, lease_id: str, expire_time: float, mac: str, *, body: str | None = None) -> bool:
        if body is None:
            cur = self._exec("UPDATE secret_leases SET expire_time = ?, mac = ? WHERE lease_id = ? "
                             "AND state = 'active'", (expire_time, mac, lease_id))
        else:
            cur = self._exec("UPDATE secret_leases SET expire_time = ?, mac = ?, body = ? WHERE lease_id = ? "
                             "AND state = 'active'", (expire_time, mac, body, lease_id))
        return bool(cur.rowcount == 1)

    def lease_due(self, mount: str | None, now: float, limit: int) -> list[str]:
        where = "" if mount is None else " AND mount = ?"
        params: tuple[Any, ...] = (now, now, now) + (() if mount is None else (mount,)) + (limit,)
        rows = self._exec(
            "SELECT lease_id FROM secret_leases WHERE ((state = 'active' AND expire_time <= ?) OR "
            "(state = 'revoking' AND (next_attempt IS NULL OR next_attempt <= ?))) AND "
            f"{_UNCLAIMED}{where} ORDER BY expire_time LIMIT ?", params).fetchall()
        return [str(r[0]) for r in rows]

    def lease_claim(self, lease_id: str, holder: str, now: float, claim_until: float, *,
                    force: bool = False) -> bool:
        due = "" if force else (" AND ((state = 'active' AND expire_time <= ?) OR "
                                "(state = 'revoking' AND (next_attempt IS NULL OR next_attempt <= ?)))")
        params: tuple[Any, ...] = (holder, claim_until, lease_id, now) + (() if force else (now, now))
        cur = self._exec(
            "UPDATE secret_leases SET state = 'revoking', claimed_by = ?, claim_until = ? "
            f"WHERE lease_id = ? AND state <> 'revoked' AND {_UNCLAIMED}{due}", params)
        return bool(cur.rowcount == 1)

    def lease_revoked(self, lease_id: str, holder: str, now: float) -> bool:
        cur = self._exec("UPDATE secret_leases SET state = 'revoked', revoked_at = ?, claimed_by = NULL, "
                         "claim_until = NULL, last_error = '' WHERE lease_id = ? AND claimed_by = ?",
                         (now, lease_id, holder))
        return bool(cur.rowcount == 1)

    def lease_failed(self, lease_id: str, holder: str, error: str, next_attempt: float) -> None:
        self._exec("UPDATE secret_leases SET attempts = attempts + 1, last_error = ?, next_attempt = ?, "
                   "claimed_by = NULL, claim_until = NULL WHERE lease_id = ? AND claimed_by = ?",
                   (error[:500], next_attempt, lease_id, holder))

    def lease_tidy(self, revoked_before: float) -> int:
        cur = self._exec("DELETE FROM secret_leases WHERE state = 'revoked' AND revoked_at < ?", (revoked_before,))
        return int(cur.rowcount)

    def lease_counts(self, now: float) -> dict[str, int]:
        row = self._exec(
            "SELECT SUM(CASE WHEN state <> 'revoked' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN state = 'revoking' AND attempts > 0 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN state <> 'revoked' AND expire_time < ? THEN 1 ELSE 0 END) FROM secret_leases",
            (now - 300.0,)).fetchone()
        return {"active": int(row[0] or 0), "failing": int(row[1] or 0), "overdue": int(row[2] or 0)}
