"""Store backends, chosen by URL scheme; each backend's driver is imported lazily."""

from __future__ import annotations

from ..exceptions import ConfigError
from .base import SCHEMA_VERSION, AuditRow, Store, StoreTx, TokenRow, redact_url


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open the store a URL names (``sqlite:///...`` or ``postgresql://...``)."""
    store: Store
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

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


__all__ = ["SCHEMA_VERSION", "AuditRow", "Store", "StoreTx", "TokenRow", "open_store", "redact_url"]
