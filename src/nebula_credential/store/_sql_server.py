"""SQL of the HTTP server's tables: tokens (keyed hashes only) and ACL policies."""

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
    """Server tokens and policies."""

    def token_insert(self, row: TokenRow) -> None:
        self._exec(
            f"INSERT INTO server_tokens ({TOKEN_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (row.accessor, row.token_hash, row.parent, json.dumps(list(row.policies)), row.display_name,
             to_json(row.meta), row.created_at, row.expires_at, row.max_expires_at, row.ttl, int(row.renewable)),
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
