"""Store backends, chosen by URL scheme; the PostgreSQL driver is imported only when a URL names it.

The package's public face: the backend interface (:class:`Store`), the
transaction interface and its per-family slices (:class:`StoreTx` =
:class:`MetaTx` + :class:`KeysTx` + :class:`CredentialsTx` +
:class:`OperationsTx` + :class:`ServerTx` + :class:`MountsTx`), the records, and
:func:`open_store`.  Code outside the package imports from here, never
from a module inside it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from ..exceptions import ConfigError
from ._schema import SCHEMA_VERSION
from .base import Store, redact_url
from .records import (
    AuditRow,
    BackupRecord,
    CredentialPage,
    LeaseRow,
    MountRow,
    Page,
    ReencryptPage,
    ReencryptRow,
    TokenRow,
    VersionRow,
)
from .sqlite import SqliteStore, path_from_url, read_file
from .tx import (
    MOUNTS_GENERATION_META,
    AuthTx,
    CredentialsTx,
    DatabaseTx,
    KeysTx,
    MetaTx,
    MountsTx,
    OperationsTx,
    ServerTx,
    StoreTx,
    VersionsTx,
)


def read_file_copy(path: Path) -> AbstractContextManager[StoreTx]:
    """A read transaction on a copy of a file-backed store (a backup), opened read-only.

    See :meth:`Store.copy_to`; a file that is not a readable store raises :class:`StoreError`.
    """
    return read_file(path)


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the store a URL names (``sqlite:///...`` or ``postgresql://...``)."""
    store: Store
    if url.startswith("sqlite:"):
        store = SqliteStore(url)
    elif url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ConfigError(
            "store.url",
            f"unsupported store URL {redact_url(url)!r}; expected sqlite:///path/to.db "
            "or postgresql://user@host:5432/db",
        )
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()  # a refused or failed migration must not leak the pool
            raise
    return store


__all__ = [
    "MOUNTS_GENERATION_META",
    "SCHEMA_VERSION",
    "AuditRow",
    "AuthTx",
    "BackupRecord",
    "CredentialPage",
    "CredentialsTx",
    "DatabaseTx",
    "KeysTx",
    "LeaseRow",
    "MetaTx",
    "MountRow",
    "MountsTx",
    "OperationsTx",
    "Page",
    "ReencryptPage",
    "ReencryptRow",
    "ServerTx",
    "Store",
    "StoreTx",
    "TokenRow",
    "VersionRow",
    "VersionsTx",
    "open_store",
    "path_from_url",
    "read_file_copy",
    "redact_url",
]
