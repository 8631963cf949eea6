"""A backup is data, not code: its schema must be exactly the one the migrations make.

SQLite keeps triggers, views and indexes *in the database file*.  A copy
whose schema someone edited can carry a trigger that grants root on the
next token insert, or copies a wrapped key aside before ``keys destroy``
clears it; a view can stand in for a table and hide rows.  Restoring such
a copy would install that code in the store.  So before a copy is opened
as a store, its ``sqlite_master`` is compared with the schema the
project's own migrations produce in a fresh, empty database migrated to
the copy's schema version (built at run time, never a hand-kept list), and
anything extra, missing or different is refused by name.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

from .exceptions import BackupError
from .store import SCHEMA_VERSION

#: (type, name) -> (tbl_name, normalised sql)
Schema = dict[tuple[str, str], tuple[str, str]]

class _Migrating(Protocol):
    """The SQL backends' transaction: it applies a prefix of the migration list (not on StoreTx)."""

    def apply_migrations(self, migrations: Sequence[Sequence[str]], real: str) -> int: ...


#: Objects SQLite itself may add to any database (statistics from ANALYZE / PRAGMA optimize).
_SQLITE_INTERNAL = re.compile(r"^sqlite_stat\d$")
_SPACE = re.compile(r"\s+")
_AROUND_PUNCT = re.compile(r"\s*([(),])\s*")


def _normalise(sql: str | None) -> str:
    """SQL text compared modulo layout whitespace (SQLite stores it as written); nothing else is forgiven."""
    if sql is None:
        return ""
    return _AROUND_PUNCT.sub(r"\1", _SPACE.sub(" ", sql.strip()))


def read_schema(conn: sqlite3.Connection) -> Schema:
    """Every object in ``sqlite_master`` but SQLite's own statistics tables."""
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {
        (str(kind), str(name)): (str(tbl), _normalise(sql))
        for kind, name, tbl, sql in rows
        if not (kind == "table" and _SQLITE_INTERNAL.match(str(name)))
    }


def expected_schema(version: int) -> Schema:
    """The schema a fresh SQLite store has at ``version``, made by the project's own migrations.

    Built in a private temporary file with the store's public interface, so
    it follows every migration without a list to keep in step.
    """
    from .store.sqlite import MIGRATIONS, SqliteStore

    if not 1 <= version <= min(SCHEMA_VERSION, len(MIGRATIONS)):
        raise BackupError(f"no known schema version {version}")
    with tempfile.TemporaryDirectory(prefix="nc-schema-") as tmp:
        db = Path(tmp) / "expected.db"
        store = SqliteStore(f"sqlite:///{db}")
        try:
            with store.transaction() as tx:
                cast(_Migrating, tx).apply_migrations(MIGRATIONS[:version], "REAL")
        finally:
            store.close()
        conn = sqlite3.connect(db)
        try:
            return read_schema(conn)
        finally:
            conn.close()


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    value = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    return value if isinstance(value, int) else 0


def schema_differences(copy: Path, *, label: str | None = None) -> tuple[int, list[str]]:
    """(schema version, what differs from the expected schema) of a SQLite file, read only.

    ``label`` names the file in errors (the backup, not a working copy).
    Raises :class:`BackupError` when the file is not a SQLite database.
    """
    name = label or str(copy)
    try:
        conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{name} is not a readable SQLite database: {exc}") from None
    try:
        conn.execute("PRAGMA trusted_schema = OFF")  # nothing of the copy's schema runs while we read it
        actual = read_schema(conn)
        version = _schema_version(conn)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{name} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    if version < 1 or version > SCHEMA_VERSION:
        return version, []  # the caller reports an unknown or newer schema
    expected = expected_schema(version)
    problems = []
    for key in sorted(actual.keys() - expected.keys()):
        problems.append(f"extra {key[0]} {key[1]!r} (on {actual[key][0]!r})")
    for key in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing {key[0]} {key[1]!r}")
    for key in sorted(actual.keys() & expected.keys()):
        if actual[key] != expected[key]:
            problems.append(f"{key[0]} {key[1]!r} differs from the schema the migrations create")
    return version, problems


def check_schema(copy: Path, *, label: str | None = None) -> int:
    """The copy's schema version; :class:`BackupError` naming every object that should not be there."""
    version, problems = schema_differences(copy, label=label)
    if problems:
        raise BackupError(
            f"{label or copy} is not a schema this project creates (schema version {version}): "
            + "; ".join(problems) + "; a backup is data, never code: nothing was restored"
        )
    return version
