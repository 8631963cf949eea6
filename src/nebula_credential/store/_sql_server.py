"""SQL of the HTTP server's tables: tokens (keyed hashes only), ACL policies and token roles.

Every row carries the MAC its repository computed (see ``rowmac``); the
store keeps it and hands it back, it never computes or checks one.  Updates
that change a MAC'd field take the new MAC with them, and the use counter
is a compare-and-swap so two requests cannot both spend the last use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from ..models import to_epoch
from ._rows import TOKEN_COLS, decode_token
from ._sql_base import SqlBase, to_json
from .records import TokenRow
from .tx import ServerTx


class ServerSql(SqlBase, ServerTx):
    """Server tokens, policies and token roles."""

    def token_insert(self, row: TokenRow) -> None:
        self._exec(
            f"INSERT INTO server_tokens ({TOKEN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.accessor, row.token_hash, row.parent, json.dumps(list(row.policies)), row.display_name,
             to_json(row.meta), row.created_at, row.expires_at, row.max_expires_at, row.ttl, int(row.renewable),
             row.num_uses, row.period, row.explicit_max_ttl, row.token_type, row.role, row.path, row.mac or None,
             json.dumps(list(row.bound_cidrs))),
        )

    def token_by_hash(self, token_hash: str) -> TokenRow | None:
        row = self._exec(f"SELECT {TOKEN_COLS} FROM server_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
        return None if row is None else decode_token(row)

    def token_by_accessor(self, accessor: str) -> TokenRow | None:
        row = self._exec(f"SELECT {TOKEN_COLS} FROM server_tokens WHERE accessor = ?", (accessor,)).fetchone()
        return None if row is None else decode_token(row)

    def token_list(self) -> list[TokenRow]:
        rows = self._exec(f"SELECT {TOKEN_COLS} FROM server_tokens ORDER BY created_at, accessor").fetchall()
        return [decode_token(r) for r in rows]

    def token_set_expiry(self, accessor: str, expires_at: float | None, mac: str = "") -> bool:
        cur = self._exec("UPDATE server_tokens SET expires_at = ?, mac = ? WHERE accessor = ?",
                         (expires_at, mac or None, accessor))
        return bool(cur.rowcount == 1)

    def token_set_parent(self, accessor: str, parent: str | None, mac: str) -> bool:
        cur = self._exec("UPDATE server_tokens SET parent = ?, mac = ? WHERE accessor = ?", (parent, mac, accessor))
        return bool(cur.rowcount == 1)

    def token_spend(self, accessor: str, old_uses: int, new_uses: int, old_mac: str, new_mac: str) -> bool:
        cur = self._exec(
            "UPDATE server_tokens SET num_uses = ?, mac = ? WHERE accessor = ? AND num_uses = ? AND mac = ?",
            (new_uses, new_mac, accessor, old_uses, old_mac),
        )
        return bool(cur.rowcount == 1)

    def token_delete(self, accessors: Sequence[str]) -> int:
        return sum(
            int(self._exec("DELETE FROM server_tokens WHERE accessor = ?", (a,)).rowcount) for a in accessors
        )

    def token_children(self, accessor: str) -> list[str]:
        rows = self._exec("SELECT accessor FROM server_tokens WHERE parent = ?", (accessor,)).fetchall()
        return [r[0] for r in rows]

    def policy_put(self, name: str, body: str, now: datetime, mac: str = "") -> None:
        self._exec(
            "INSERT INTO server_policies (name, body, updated_at, mac) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at, "
            "mac = excluded.mac",
            (name, body, to_epoch(now), mac or None),
        )

    def policy_get(self, name: str) -> str | None:
        row = self._exec("SELECT body FROM server_policies WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def policy_get_signed(self, name: str) -> tuple[str, str] | None:
        row = self._exec("SELECT body, mac FROM server_policies WHERE name = ?", (name,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1] or ""))

    def policy_list(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT name FROM server_policies ORDER BY name").fetchall()]

    def policy_delete(self, name: str) -> bool:
        return bool(self._exec("DELETE FROM server_policies WHERE name = ?", (name,)).rowcount == 1)

    def role_put(self, name: str, body: str, now: datetime, mac: str) -> None:
        self._exec(
            "INSERT INTO server_token_roles (name, body, updated_at, mac) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at, "
            "mac = excluded.mac",
            (name, body, to_epoch(now), mac),
        )

    def role_get(self, name: str) -> tuple[str, str] | None:
        row = self._exec("SELECT body, mac FROM server_token_roles WHERE name = ?", (name,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def role_list(self) -> list[str]:
        return [r[0] for r in self._exec("SELECT name FROM server_token_roles ORDER BY name").fetchall()]

    def role_delete(self, name: str) -> bool:
        return bool(self._exec("DELETE FROM server_token_roles WHERE name = ?", (name,)).rowcount == 1)
