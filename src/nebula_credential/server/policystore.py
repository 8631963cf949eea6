"""The server's HCL policies, kept in its own table behind the narrow :class:`ServerTables`.

Reads and writes of the policy table, in one place for the HTTP API, the
console and the CLI.  Built-in policies (``root``, ``default``) are code,
never rows.  Every stored policy carries a MAC (:mod:`~nebula_credential.rowmac`)
over its name and text: a row a database writer edited, or one without a
MAC, is refused -- reported through ``on_reject`` and read as absent, so it
grants nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..rowmac import RowMac
from ..servertables import POLICY_TABLE, ServerTables, ServerTx, policy_mac_fields
from .policies import BUILTIN, DEFAULT_POLICY, DEFAULT_POLICY_TEXT, RESERVED, PolicyError, parse

TABLE = POLICY_TABLE
#: Called with (table, primary key, reason) for every row refused.
RejectHook = Callable[[str, str, str], None]


class PolicyStore:
    """Read, write, list and delete stored policy documents."""

    def __init__(self, tables: ServerTables, clock: Callable[[], datetime], rowmac: RowMac,
                 on_reject: RejectHook | None = None) -> None:
        self._tables = tables
        self._clock = clock
        self.rowmac = rowmac
        self.on_reject = on_reject

    def _checked(self, name: str, found: tuple[str, str] | None) -> str | None:
        if found is None:
            return None
        body, mac = found
        if self.rowmac.verify(TABLE, (name,), policy_mac_fields(name, body), mac):
            return body
        if self.on_reject is not None:
            self.on_reject(TABLE, name, "missing MAC" if not mac else "MAC mismatch")
        return None

    def get(self, name: str) -> str | None:
        """The document (None: no such policy, or a stored row that failed its MAC)."""
        if name == DEFAULT_POLICY:
            return DEFAULT_POLICY_TEXT
        if name in BUILTIN:
            return ""
        with self._tables.read() as tx:
            found = tx.policy_get_signed(name)
        return self._checked(name, found)

    def names(self) -> list[str]:
        """Stored and built-in policy names, sorted."""
        with self._tables.read() as tx:
            return sorted({*tx.policy_list(), *BUILTIN})

    def put(self, name: str, text: str, tx: ServerTx | None = None) -> None:
        """Store ``text`` after parsing it: what could not be enforced is refused before it is kept.

        With ``tx`` the write joins that transaction (the CLI audits it in the same one)."""
        if name in RESERVED:
            raise PolicyError(f"cannot change the built-in {name} policy")
        parse(text)
        mac = self.rowmac.mac(TABLE, (name,), policy_mac_fields(name, text))
        if tx is not None:
            tx.policy_put(name, text, self._clock(), mac)
        else:
            self._tables.run(lambda t: t.policy_put(name, text, self._clock(), mac))

    def delete(self, name: str, tx: ServerTx | None = None) -> bool:
        """Delete a stored policy; False when there was none."""
        if name in RESERVED:
            raise PolicyError(f"cannot delete the built-in {name} policy")
        if tx is not None:
            return tx.policy_delete(name)
        return self._tables.run(lambda t: t.policy_delete(name))

    def rejected(self) -> list[str]:
        """Stored policies whose MAC does not verify (``doctor`` names them; nothing is reported)."""
        bad = []
        with self._tables.read() as tx:
            for name in tx.policy_list():
                found = tx.policy_get_signed(name)
                if found is not None and not self.rowmac.verify(
                        TABLE, (name,), policy_mac_fields(name, found[0]), found[1]):
                    bad.append(name)
        return bad
