"""Adoption: move secrets from a single application key under managed keys.

Each legacy token is opened with the legacy key set and stored through the
vault, one record at a time: the plaintext exists only in memory for that
record and is never written to disk.  A credential id already in the vault
is skipped, so re-running adopts nothing twice and never overwrites a value
the application has since changed.

Like ``import``, a JSONL file is checked whole before anything is written:
every line parses and is typed (a string id and token, a valid scope, an
object for metadata; no ``str()`` of a number or an object id), so a bad
line adopts nothing.  Whatever is adopted is audited, even when a later
record stops the run.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._jsonl import iter_numbered
from .exceptions import ConfigError, InvalidInputError, NebulaCredentialError
from .legacy import LegacyKeySet, decode_value
from .names import check_credential_id, check_scope
from .store import redact_url
from .vault import DEFAULT_SCOPE, Vault


@dataclass(frozen=True, slots=True)
class LegacyRecord:
    id: str
    token: str | bytes = field(repr=False)
    scope: str = DEFAULT_SCOPE
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AdoptReport:
    adopted: int = 0
    skipped_existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "adopted" if not self.dry_run else "would_adopt": self.adopted,
            "skipped_existing": self.skipped_existing,
            "failed": len(self.failed),
            "failures": [{"id": i, "reason": r} for i, r in self.failed],
        }


def check_record(rec: LegacyRecord, where: str = "record") -> LegacyRecord:
    """A record typed as the vault will store it; :class:`InvalidInputError` naming ``where`` if not."""
    check_credential_id(rec.id, f"{where}: id")
    check_scope(rec.scope, f"{where}: scope")
    if not isinstance(rec.token, str | bytes):
        raise InvalidInputError(f"{where}: token", f"must be a string, got {type(rec.token).__name__}")
    if not isinstance(rec.metadata, dict):
        raise InvalidInputError(f"{where}: metadata", f"must be a JSON object, got {type(rec.metadata).__name__}")
    return rec


def adopt(
    vault: Vault,
    records: Iterable[LegacyRecord],
    keys: LegacyKeySet,
    *,
    dry_run: bool = False,
) -> AdoptReport:
    """Adopt ``records``; a sequence is checked whole first, and what was adopted is always audited."""
    report = AdoptReport(dry_run=dry_run)
    kr = vault.keyring_name
    if isinstance(records, Sequence):
        for n, rec in enumerate(records, 1):
            check_record(rec, f"record {n}")
    try:
        for n, rec in enumerate(records, 1):
            check_record(rec, f"record {n} ({rec.id!r})" if isinstance(rec.id, str) else f"record {n}")
            with vault.store.read() as tx:
                exists = tx.get_credential(kr, rec.id) is not None
            if exists:
                report.skipped_existing += 1
                continue
            try:
                value = decode_value(keys.decrypt(rec.token))
            except (NebulaCredentialError, ValueError) as exc:
                report.failed.append((rec.id, str(exc)))
                continue
            if not dry_run:
                meta = dict(rec.metadata)
                meta.setdefault("adopted", True)
                vault.put(rec.id, value, scope=rec.scope, metadata=meta)
            del value
            report.adopted += 1
    finally:
        if not dry_run:
            with vault.store.transaction() as tx:
                vault.audit.record(
                    tx,
                    "legacy.adopt",
                    keyring=kr,
                    adopted=report.adopted,
                    skipped=report.skipped_existing,
                    failed=len(report.failed),
                )
    return report


_SHAPE = '{"id", "scope", "token", "metadata"}'


def _jsonl_records(path: str | Path) -> Iterator[LegacyRecord]:
    for n, item in iter_numbered(path, ("id", "token"), _SHAPE):
        scope = item.get("scope")
        metadata = item.get("metadata")
        yield check_record(LegacyRecord(
            id=item["id"],
            token=item["token"],
            scope=DEFAULT_SCOPE if scope is None or scope == "" else scope,
            metadata={} if metadata is None else metadata,
        ), f"{path}:{n}")


def records_from_jsonl(path: str | Path) -> Iterator[LegacyRecord]:
    """``{"id", "scope", "token", "metadata"}`` per line: the whole file is checked before the first is yielded.

    A file is read twice (checked, then streamed); standard input (``-``)
    is read once and held -- tokens are ciphertext, never plaintext.
    """
    if str(path) == "-":
        yield from list(_jsonl_records(path))
        return
    for _ in _jsonl_records(path):
        pass
    yield from _jsonl_records(path)


def records_from_db(url: str, query: str, *, page: int = 500) -> Iterator[LegacyRecord]:
    """Rows of ``query`` (columns: id, token[, scope[, metadata]]) from SQLite or PostgreSQL."""
    if url.startswith("sqlite:"):
        from .store.sqlite import path_from_url

        path = path_from_url(url)
        if not Path(path).exists():
            raise ConfigError("--from-db", f"no SQLite database at {path}")
        conn: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    elif url.startswith(("postgresql://", "postgres://")):
        from ._extras import extra

        with extra("postgres", "psycopg"):
            import psycopg
        try:
            conn = psycopg.connect(url)
        except psycopg.Error as exc:
            raise ConfigError("--from-db", f"cannot connect to {redact_url(url)}: {type(exc).__name__}") from None
    else:
        raise ConfigError("--from-db", "expected sqlite:///path or postgresql://...")
    try:
        cur = conn.cursor()
        try:
            cur.execute(query)
        except Exception as exc:  # driver-specific error types; the query is the user's
            raise ConfigError("--query", f"query failed: {exc}") from None
        while True:
            rows = cur.fetchmany(page)
            if not rows:
                return
            for row in rows:
                if len(row) < 2:
                    raise ConfigError("--query", "the query must return at least (id, token)")
                token = row[1]
                if token is None:
                    continue
                scope = str(row[2]) if len(row) > 2 and row[2] else DEFAULT_SCOPE
                meta = row[3] if len(row) > 3 and row[3] else {}
                if isinstance(meta, str):
                    try:
                        meta = json.loads(meta)
                    except ValueError:
                        meta = {"legacy_metadata": meta}
                yield LegacyRecord(
                    id=str(row[0]),
                    token=bytes(token) if isinstance(token, memoryview) else token,
                    scope=scope,
                    metadata=meta if isinstance(meta, dict) else {},
                )
    finally:
        conn.close()
