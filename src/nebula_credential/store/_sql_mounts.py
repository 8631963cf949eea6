"""SQL of the HTTP server's mount table (runtime secrets engines and auth methods)."""

from __future__ import annotations

import json
from typing import Any

from ..exceptions import CorruptRecordError
from ._sql_base import SqlBase, to_json
from .records import MountRow
from .tx import MOUNTS_GENERATION_META, MountsTx

_COLS = "kind, path, type, description, accessor, uuid, options, config, keyring, created_at, mac"


def _decode(row: Any) -> MountRow:
    try:
        options, config = json.loads(row[6]), json.loads(row[7])
        if not isinstance(options, dict | None) or not isinstance(config, dict):
            raise ValueError("options must be a JSON object or null, config an object")
    except ValueError as exc:
        raise CorruptRecordError(f"mount {row[1]!r}: {exc}") from None
    return MountRow(path=str(row[1]), kind=str(row[0]), type=str(row[2]), description=str(row[3]),
                    accessor=str(row[4]), uuid=str(row[5]), options=options, config=config,
                    keyring=str(row[8]), created_at=float(row[9]), mac=str(row[10] or ""))


def _options(options: dict[str, Any] | None) -> str:
    """Vault keeps ``options`` as sent: an object, or null when the client sent null."""
    return "null" if options is None else to_json(options)


class MountsSql(SqlBase, MountsTx):
    """The mount table; every change bumps the generation in ``meta`` in the same transaction."""

    def _bump(self) -> None:
        current = self.mount_generation()
        self._exec(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (MOUNTS_GENERATION_META, str(current + 1)),
        )

    def mount_generation(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE name = ?", (MOUNTS_GENERATION_META,)).fetchone()
        return int(row[0]) if row is not None and str(row[0]).isdigit() else 0

    def mount_list(self) -> list[MountRow]:
        rows = self._exec(f"SELECT {_COLS} FROM server_mounts ORDER BY kind, path").fetchall()
        return [_decode(r) for r in rows]

    def mount_get(self, kind: str, path: str) -> MountRow | None:
        row = self._exec(f"SELECT {_COLS} FROM server_mounts WHERE kind = ? AND path = ?", (kind, path)).fetchone()
        return None if row is None else _decode(row)

    def mount_insert(self, row: MountRow) -> None:
        self._exec(
            f"INSERT INTO server_mounts ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (row.kind, row.path, row.type, row.description, row.accessor, row.uuid, _options(row.options),
             to_json(row.config), row.keyring, row.created_at, row.mac),
        )
        self._bump()

    def mount_update(self, row: MountRow) -> bool:
        cur = self._exec(
            "UPDATE server_mounts SET description = ?, options = ?, config = ?, mac = ? WHERE kind = ? AND path = ?",
            (row.description, _options(row.options), to_json(row.config), row.mac, row.kind, row.path),
        )
        changed = bool(cur.rowcount == 1)
        if changed:
            self._bump()
        return changed

    def mount_delete(self, kind: str, path: str) -> bool:
        cur = self._exec("DELETE FROM server_mounts WHERE kind = ? AND path = ?", (kind, path))
        deleted = bool(cur.rowcount == 1)
        if deleted:
            self._bump()
        return deleted
