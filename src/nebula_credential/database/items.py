"""The engine's non-secret rows (connections, roles, rotation state): JSON bodies under a row MAC.

"The database is not trusted": a row that decides which PostgreSQL user is
rotated or dropped, with which statements, is refused unless its MAC
(:mod:`~nebula_credential.rowmac`, key = mount, kind, name) verifies.  A
refused row is audited as ``server.row_rejected.db_items`` and reads as
:class:`~nebula_credential.exceptions.CorruptRecordError`.  Each row has a
revision, so the rotation state machine advances by check-and-set: two
processes never both take the same rotation.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..exceptions import CorruptRecordError
from ..rowmac import RowMac, rejected_action

if TYPE_CHECKING:
    from ..store import StoreTx
    from ..vault import Vault

TABLE = "db_items"
LOCK_KIND = "lock"


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


_ROWMACS: weakref.WeakKeyDictionary[Any, RowMac] = weakref.WeakKeyDictionary()
_ROWMACS_LOCK = threading.Lock()


def rowmac_for(vault: Vault) -> RowMac:
    """One MAC helper per store (its key is unwrapped once, not by every engine object or scrape)."""
    store = vault.store
    with _ROWMACS_LOCK:
        found = _ROWMACS.get(store)
        if found is None:
            found = _ROWMACS[store] = RowMac(store.transaction, vault.provider, lock=store.new_lock())
        return found


class Items:
    """One mount's items, by kind (``config``, ``static``, ``static-state``, ``role``, ``mount``)."""

    def __init__(self, vault: Vault, mount: str, rowmac: RowMac | None = None) -> None:
        self.vault = vault
        self.mount = mount
        self.rowmac = rowmac or rowmac_for(vault)

    def _mac(self, kind: str, name: str, body: str) -> str:
        return self.rowmac.mac(TABLE, (self.mount, kind, name), {"body": body})

    def _now(self) -> float:
        return self.vault.clock().timestamp()

    def get(self, kind: str, name: str, tx: StoreTx | None = None) -> tuple[dict[str, Any], int] | None:
        """(body, revision), or None when absent; a row whose MAC fails is audited and refused."""
        if tx is None:
            with self.vault.store.read() as rtx:
                found = rtx.db_item_get(self.mount, kind, name)
        else:
            found = tx.db_item_get(self.mount, kind, name)
        if found is None:
            return None
        body, revision, mac = found
        if not self.rowmac.verify(TABLE, (self.mount, kind, name), {"body": body}, mac):
            with self.vault.store.transaction() as wtx:
                self.vault.audit.record(wtx, rejected_action(TABLE), outcome="refused", table=TABLE,
                                        row=f"{self.mount} {kind} {name!r}"[:128], reason="mac")
            raise CorruptRecordError(f"database engine row {kind} {name!r} of mount {self.mount!r} was changed "
                                     "outside nebula-credential (its MAC does not verify): refused")
        return json.loads(body), revision

    def put(self, kind: str, name: str, body: dict[str, Any], *, expected_revision: int | None = None,
            tx: StoreTx | None = None) -> int | None:
        """Write; the new revision, or None when ``expected_revision`` did not hold (0: must be absent)."""
        text = _dumps(body)
        mac = self._mac(kind, name, text)
        if tx is not None:
            return tx.db_item_put(self.mount, kind, name, text, mac, self._now(), expected_revision)
        with self.vault.store.transaction() as wtx:
            return wtx.db_item_put(self.mount, kind, name, text, mac, self._now(), expected_revision)

    def names(self, kind: str) -> list[str]:
        with self.vault.store.read() as tx:
            return tx.db_item_names(self.mount, kind)

    def delete(self, kind: str, name: str, tx: StoreTx | None = None) -> bool:
        if tx is not None:
            return tx.db_item_delete(self.mount, kind, name)
        with self.vault.store.transaction() as wtx:
            return wtx.db_item_delete(self.mount, kind, name)

    # ---- locks: a row per lock, taken and released by check-and-set ----------------------------
    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take lock ``name`` for ``ttl`` seconds (or renew it if ``holder`` has it); False if another
        holder's claim has not run out.  A row of kind ``lock``, so every runtime role that may use the
        engine may take it (the store's own lease table is the operators')."""
        now = self._now()
        found = self.get(LOCK_KIND, name)
        body = {"holder": holder, "until": now + ttl}
        if found is None:
            return self.put(LOCK_KIND, name, body, expected_revision=0) is not None
        held, revision = found
        if held.get("holder") != holder and float(held.get("until") or 0) > now:
            return False
        return self.put(LOCK_KIND, name, body, expected_revision=revision) is not None

    def release(self, name: str, holder: str) -> None:
        found = self.get(LOCK_KIND, name)
        if found is not None and found[0].get("holder") == holder:
            self.put(LOCK_KIND, name, {"holder": "", "until": 0}, expected_revision=found[1])
