"""The server's HCL policies, kept in its own table behind the narrow :class:`ServerTables`.

Reads and writes of the policy table, in one place for the HTTP API, the
console and the CLI.  Built-in policies (``root``) are never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..servertables import ServerTables, ServerTx
from .policies import BUILTIN, parse


class PolicyStore:
    """Read, write, list and delete stored policy documents."""

    def __init__(self, tables: ServerTables, clock: Callable[[], datetime]) -> None:
        self._tables = tables
        self._clock = clock

    def get(self, name: str) -> str | None:
        """The stored document (None: no such policy)."""
        with self._tables.read() as tx:
            return tx.policy_get(name)

    def names(self) -> list[str]:
        """Stored and built-in policy names, sorted."""
        with self._tables.read() as tx:
            return sorted({*tx.policy_list(), *BUILTIN})

    def put(self, name: str, text: str, tx: ServerTx | None = None) -> None:
        """Store ``text`` after parsing it: what could not be enforced is refused before it is kept.

        With ``tx`` the write joins that transaction (the CLI audits it in the same one)."""
        parse(text)
        if tx is not None:
            tx.policy_put(name, text, self._clock())
        else:
            self._tables.run(lambda t: t.policy_put(name, text, self._clock()))

    def delete(self, name: str, tx: ServerTx | None = None) -> bool:
        """Delete a stored policy; False when there was none."""
        if tx is not None:
            return tx.policy_delete(name)
        return self._tables.run(lambda t: t.policy_delete(name))
