"""Schema versioning: a store created by an older release migrates cleanly on open."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import nebula_credential as nc
from nebula_credential.store import SCHEMA_VERSION
from nebula_credential.store._schema import schema_v1


def test_v1_store_migrates_to_current(tmp_path: Path, key_file: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # exactly what release 1 created
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        for stmt in schema_v1("BLOB", "REAL"):
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (1, ?)", (time.time(),))
    # a v1 store has no audit head: initialise through the library, then check the upgrade path
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1
    with nc.open(f"sqlite:///{db}", create=True) as v:
        v.put("a", {"x": 1})
        v.keys.rotate()
        assert v.audit.verify().ok
        with v.store.read() as tx:
            assert tx.schema_version() == SCHEMA_VERSION
            assert tx.has_table("backups")
            assert tx.has_table("server_tokens") and tx.has_table("server_policies")
            assert tx.get_audit_head() is not None
    with nc.open(f"sqlite:///{db}") as v:  # reopening applies nothing twice
        assert v.get("a") == {"x": 1}
        with v.store.read() as tx:
            assert tx.schema_version() == SCHEMA_VERSION
