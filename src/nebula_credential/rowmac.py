"""Authenticated rows: an HMAC over a row's identity and every field that decides access.

A database writer (no root key) can edit any column.  Rows whose content
*grants* something -- a token's policies, parent and lifetimes, a policy's
rules, a role's allowed policies, a mount, a lease -- therefore carry
``mac = HMAC-SHA256(row key, canonical(table, primary key, fields))``, and
the code that reads them refuses a row whose MAC does not verify.  The row
key is 32 random bytes wrapped by the root key (:data:`~.rootwrapped.ROW_MAC_KEY`,
rewrapped by ``provider rotate``), so without the provider nobody can mint
a valid MAC.

Binding the table and primary key stops a MAC'd row being copied under
another name; binding every deciding field stops an edit.  What a MAC
cannot stop is a row being deleted, or replaced by an earlier state of the
same row (its old MAC still verifies): see docs/security-model.md.

The encoding is canonical JSON of ``[version, table, key, fields]`` with
numbers written as ``float.hex`` (so ``3600``, ``3600.0`` and whatever a
backend hands back for a REAL column encode alike), keys sorted, no
whitespace: one byte string per logical row, whatever the backend.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ._secret import SecretBytes
from .rootwrapped import ROW_MAC_KEY, KeyProvider, MetaTx, RootWrapped

__all__ = ["AUTHENTICATED_TABLES", "ROW_MAC_KEY", "RowMac", "canonical", "rejected_action"]

#: Tables whose rows carry a MAC; a refused row is audited as :func:`rejected_action` of its table
#: and counted per table in ``nebula_credential_rows_rejected_total``.  Add a table here with its MAC.
AUTHENTICATED_TABLES: tuple[str, ...] = ("server_tokens", "server_policies", "server_token_roles", "server_mounts",
                                         "auth_items", "db_items", "secret_leases")


def rejected_action(table: str) -> str:
    """The audit action of a row of ``table`` refused because its MAC failed."""
    return f"server.row_rejected.{table}"

_VERSION = "nc-row-mac-1"


def _norm(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int | float):
        return {"n": float(value).hex()}
    if isinstance(value, dict | Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple | Sequence):
        return [_norm(v) for v in value]
    raise TypeError(f"a row field of type {type(value).__name__} has no canonical form")


def canonical(table: str, key: Sequence[str], fields: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC is computed over."""
    doc = [_VERSION, table, [str(k) for k in key], _norm(dict(fields))]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class RowMac:
    """MACs under one root-wrapped key, unwrapped on first use and kept for the process's life.

    ``load`` runs in a write transaction the first time: it creates the
    wrapped key when the store has none (see :meth:`RootWrapped.ensure`).
    """

    def __init__(self, transaction: Callable[[], Any], provider: KeyProvider,
                 secret: RootWrapped = ROW_MAC_KEY, *, lock: AbstractContextManager[Any] | None = None) -> None:
        self._transaction = transaction
        self._provider = provider
        self._secret = secret
        self._key: SecretBytes | None = None
        # the store's lock under the asyncio server (a thread lock held across an awaited
        # statement would block the loop's other greenlets); a thread lock otherwise
        self._lock: AbstractContextManager[Any] = lock if lock is not None else threading.Lock()

    @classmethod
    def from_key(cls, key: bytes | SecretBytes) -> RowMac:
        """A MAC helper over a key already unwrapped (``doctor``, tests): it never creates one."""
        made = cls(lambda: None, None, ROW_MAC_KEY)  # type: ignore[arg-type]
        made._key = key if isinstance(key, SecretBytes) else SecretBytes(bytes(key))
        return made

    def _raw(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    with self._transaction() as tx:
                        wrapped = self._ensure(tx)
                    self._key = self._provider.unwrap(wrapped, self._secret.context)
        return bytes(self._key.buffer)

    def _ensure(self, tx: MetaTx) -> bytes:
        return self._secret.ensure(tx, self._provider)

    def mac(self, table: str, key: Sequence[str], fields: Mapping[str, Any]) -> str:
        """The hex MAC of a row."""
        return hmac.new(self._raw(), canonical(table, key, fields), hashlib.sha256).hexdigest()

    def verify(self, table: str, key: Sequence[str], fields: Mapping[str, Any], mac: str) -> bool:
        """True when ``mac`` is the row's MAC (constant-time compare; an empty MAC never verifies)."""
        if not mac:
            return False
        return hmac.compare_digest(self.mac(table, key, fields), mac)
