"""SQL of the auth methods' items: one generic table, use counts spent by a conditional UPDATE."""

from __future__ import annotations

from ._sql_base import SqlBase
from .tx import AuthTx

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class AuthSql(SqlBase, AuthTx):
    """AppRole, userpass, JWT, cubbyhole and wrapping items."""

    def auth_put(self, mount: str, kind: str, name: str, body: str, now: float, *,
                 expires_at: float | None = None, uses_left: int | None = None, mac: str = "") -> None:
        self._exec(
            "INSERT INTO auth_items (mount, kind, name, body, created_at, expires_at, uses_left, mac) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (mount, kind, name) DO UPDATE SET body = excluded.body, "
            "expires_at = excluded.expires_at, uses_left = excluded.uses_left, mac = excluded.mac",
            (mount, kind, name, body, now, expires_at, uses_left, mac),
        )

    def auth_get(self, mount: str, kind: str, name: str, now: float) -> tuple[str, float | None, int | None] | None:
        found = self.auth_get_signed(mount, kind, name, now)
        return None if found is None else found[:3]

    def auth_get_signed(self, mount: str, kind: str, name: str,
                        now: float) -> tuple[str, float | None, int | None, str] | None:
        row = self._exec(
            f"SELECT body, expires_at, uses_left, mac FROM auth_items WHERE mount = ? AND kind = ? AND name = ? "
            f"AND {_LIVE} AND (uses_left IS NULL OR uses_left > 0)",
            (mount, kind, name, now),
        ).fetchone()
        return None if row is None else (str(row[0]), row[1], row[2], str(row[3] or ""))

    def auth_names(self, mount: str, kind: str, now: float) -> list[str]:
        rows = self._exec(
            f"SELECT name FROM auth_items WHERE mount = ? AND kind = ? AND {_LIVE} "
            "AND (uses_left IS NULL OR uses_left > 0) ORDER BY name",
            (mount, kind, now),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def auth_list_signed(self) -> list[tuple[str, str, str, str, float | None, str]]:
        rows = self._exec("SELECT mount, kind, name, body, expires_at, mac FROM auth_items "
                          "ORDER BY mount, kind, name").fetchall()
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5] or "")) for r in rows]

    def auth_delete(self, mount: str, kind: str, name: str) -> bool:
        cur = self._exec("DELETE FROM auth_items WHERE mount = ? AND kind = ? AND name = ?", (mount, kind, name))
        return bool(cur.rowcount == 1)

    def auth_delete_kind(self, mount: str, kind: str) -> int:
        return int(self._exec("DELETE FROM auth_items WHERE mount = ? AND kind = ?", (mount, kind)).rowcount)

    def auth_delete_mount(self, mount: str) -> int:
        return int(self._exec("DELETE FROM auth_items WHERE mount = ?", (mount,)).rowcount)

    def auth_purge_expired(self, now: float) -> int:
        cur = self._exec("DELETE FROM auth_items WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        # a cubbyhole (kind = its token's accessor) and a wrapped answer (name = the wrapping token's
        # accessor) go with their token: gone once the token is revoked or expired and removed
        orphans = self._exec(
            "DELETE FROM auth_items WHERE ((mount = 'cubbyhole' AND kind NOT IN (SELECT accessor FROM server_tokens)) "
            "OR (mount = 'sys/wrapping' AND kind = 'wrap' AND name NOT IN (SELECT accessor FROM server_tokens)))"
        )
        return int(cur.rowcount) + int(orphans.rowcount)

    def auth_spend(self, mount: str, kind: str, name: str, now: float) -> str | None:
        found = self.auth_spend_signed(mount, kind, name, now)
        return None if found is None else found[0]

    def auth_spend_signed(self, mount: str, kind: str, name: str,
                          now: float) -> tuple[str, float | None, int | None, str] | None:
        # the row's own lock (PostgreSQL) or the single writer (SQLite) makes this one decision:
        # two concurrent spends of the last use see rowcount 1 and 0
        cur = self._exec(
            f"UPDATE auth_items SET uses_left = uses_left - 1 WHERE mount = ? AND kind = ? AND name = ? "
            f"AND {_LIVE} AND (uses_left IS NULL OR uses_left > 0)",
            (mount, kind, name, now),
        )
        if cur.rowcount != 1:
            return None
        row = self._exec(
            "SELECT body, expires_at, uses_left, mac FROM auth_items WHERE mount = ? AND kind = ? AND name = ?",
            (mount, kind, name),
        ).fetchone()
        if row is None:
            return None
        if row[2] is not None and int(row[2]) <= 0:
            self.auth_delete(mount, kind, name)
        return str(row[0]), row[1], row[2], str(row[3] or "")
