"""Rotation: re-encrypting a whole SQLite table, ours beside the alternatives.

All contenders work on copies of tables built once, with the same rows
(ids, scopes, ~300-byte values) and the same table layout:

* ours: ``vault.reencrypt()`` after ``keys.rotate()`` (batched reads,
  compare-and-swap writes, scope priority);
* the MultiFernet loop Airflow-style tools run (``rotate-fernet-key``):
  select every row, ``MultiFernet.rotate`` each, update each, one commit;
* the database bound: the same batched reads and compare-and-swap writes
  through the same store, with no cryptography (envelopes written back
  unchanged);
* the database bound measured the simple way: the same file through plain
  ``sqlite3`` (same pragmas), the same keyset scan of the same columns and
  the same compare-and-swap ``UPDATE`` in one ``executemany`` per batch, no
  cryptography: what the file allows, with no store or engine around it;
* the cryptography alone: decrypt + encrypt of every row already in memory.

Each figure is the median of several repetitions, each on a fresh copy.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

import nebula_credential as nc
from nebula_credential.models import EncryptedCredential
from nebula_credential.providers.base import KeyProvider
from nebula_credential.reencrypt import reencrypt_row
from nebula_credential.store import open_store
from nebula_credential.store._rows import CRED_COLS

SCOPES = ("production", "user", "development")
OURS = "nebula-credential vault.reencrypt()"
PLAIN_BOUND = "database bound, plain sqlite3 (same scan + CAS, no crypto)"
VALUE_CHARS = 290  # a JSON string of ~300 bytes once quoted and encrypted


@dataclass(slots=True)
class RotRow:
    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def items(n: int) -> Iterator[tuple[str, str, str, None]]:
    """Deterministic ids and scopes, random-looking ~300-byte values."""
    pad = os.urandom(VALUE_CHARS // 2 + 1).hex()
    for i in range(n):
        cid = f"svc-{i:08d}/password"
        yield cid, (f"{i:08d}" + pad)[:VALUE_CHARS], SCOPES[i % 3], None


def build_ours(path: Path, n: int, provider: KeyProvider) -> None:
    with nc.open(f"sqlite:///{path}", create=True, provider=provider) as vault:
        vault.put_many(items(n), batch_size=2000)


def build_fernet(path: Path, n: int, old: Fernet) -> None:
    """The same rows in the same table layout, each value a Fernet token."""
    store = open_store(f"sqlite:///{path}")
    try:
        batch: list[tuple[str, str, int, bytes, dict[str, object]]] = []
        for cid, value, scope, _ in items(n):
            batch.append((cid, scope, 0, old.encrypt(f'"{value}"'.encode()), {}))
            if len(batch) == 2000:
                with store.transaction() as tx:
                    tx.put_credentials("default", batch, nc.models.utc_now())
                batch.clear()
        if batch:
            with store.transaction() as tx:
                tx.put_credentials("default", batch, nc.models.utc_now())
    finally:
        store.close()


def copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    return dst


def ours_pass(path: Path, provider: KeyProvider) -> tuple[int, float]:
    with nc.open(f"sqlite:///{path}", provider=provider) as vault:
        vault.keys.rotate(reason="bench")
        start = time.perf_counter()
        result = vault.reencrypt()
        seconds = time.perf_counter() - start
        assert result.ok and result.reencrypted == result.total, result.to_json()
        return result.reencrypted, seconds


def db_bound_pass(path: Path, batch_size: int = 500) -> tuple[int, float]:
    """The store I/O of one re-encryption pass, with the envelopes written back unchanged."""
    store = open_store(f"sqlite:///{path}")
    try:
        start = time.perf_counter()
        done = 0
        with store.read() as tx:
            counts = tx.count_by_version("default")
            scopes = tx.scopes_for_version("default", 1)
        assert set(counts) == {1}
        for scope in SCOPES if set(scopes) == set(SCOPES) else scopes:
            after: str | None = None
            while True:
                with store.read() as tx:
                    rows = tx.fetch_for_reencryption("default", 1, scope, after, batch_size)
                if not rows:
                    break
                after = rows[-1].id
                updates = [(r.id, r.revision, 2, r.envelope) for r in rows]
                with store.transaction() as tx:
                    done += tx.cas_update_envelopes("default", updates)
                if len(rows) < batch_size:
                    break
        return done, time.perf_counter() - start
    finally:
        store.close()


#: The statements the store runs for a pass (store/_sql_credentials.py), spelled out.
_SCAN = (f"SELECT {CRED_COLS} FROM credentials WHERE keyring = ? AND key_version = ? "
         "AND scope = ? AND id > ? ORDER BY id LIMIT ?")
_CAS = ("UPDATE credentials SET envelope = ?, key_version = ?, revision = revision + 1 "
        "WHERE keyring = ? AND id = ? AND revision = ?")


def plain_sqlite_bound_pass(path: Path, batch_size: int = 500) -> tuple[int, float]:
    """The database bound the simple way: plain sqlite3, same scan and CAS, envelopes unchanged."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        done = 0
        scopes = [s for (s,) in conn.execute(
            "SELECT DISTINCT scope FROM credentials WHERE keyring = ? AND key_version = ?", ("default", 1))]
        for scope in SCOPES if set(scopes) == set(SCOPES) else scopes:
            after = ""
            while True:
                conn.execute("BEGIN")
                rows = conn.execute(_SCAN, ("default", 1, scope, after, batch_size)).fetchall()
                conn.execute("COMMIT")
                if not rows:
                    break
                after = rows[-1][1]
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.executemany(_CAS, [(r[4], 2, "default", r[1], r[6]) for r in rows])
                conn.execute("COMMIT")
                done += cur.rowcount
                if len(rows) < batch_size:
                    break
        return done, time.perf_counter() - start
    finally:
        conn.close()


def crypto_only_pass(path: Path, provider: KeyProvider) -> tuple[int, float]:
    with nc.open(f"sqlite:///{path}", provider=provider) as vault:
        vault.keys.rotate(reason="bench")
        rows: list[EncryptedCredential] = list(vault.list())
        km = vault.keys
        km.decrypt(rows[0].envelope, nc.credential_context("default", rows[0].id, rows[0].scope))
        start = time.perf_counter()
        for row in rows:
            reencrypt_row(km, row)
        return len(rows), time.perf_counter() - start


def multifernet_pass(path: Path, mf: MultiFernet) -> tuple[int, float]:
    """Airflow's ``rotate-fernet-key`` shape: select all, rotate each, update each, commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT keyring, id, envelope FROM credentials").fetchall()
        for keyring, cid, token in rows:
            conn.execute(
                "UPDATE credentials SET envelope = ?, revision = revision + 1 "
                "WHERE keyring = ? AND id = ?",
                (mf.rotate(token), keyring, cid),
            )
        conn.execute("COMMIT")
        return len(rows), time.perf_counter() - start
    finally:
        conn.close()


def multifernet_crypto_only(path: Path, mf: MultiFernet) -> tuple[int, float]:
    conn = sqlite3.connect(path)
    try:
        tokens = [t for (t,) in conn.execute("SELECT envelope FROM credentials")]
    finally:
        conn.close()
    start = time.perf_counter()
    for token in tokens:
        mf.rotate(token)
    return len(tokens), time.perf_counter() - start


def run(n: int = 100_000, reps: int = 3, workdir: Path | None = None) -> list[RotRow]:
    """Rows/s of each contender on an ``n``-row table (median of ``reps`` fresh copies)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nc-rot-", dir=workdir) as tmp:
        base = Path(tmp)
        provider = nc.KeyManager.ephemeral().provider  # one throwaway root key for all copies
        ours_src, fernet_src, work = base / "ours.db", base / "fernet.db", base / "work.db"
        build_ours(ours_src, n, provider)
        old, new = Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())
        build_fernet(fernet_src, n, old)
        mf = MultiFernet([new, old])

        cases: list[tuple[str, Path, Callable[[Path], tuple[int, float]], str]] = [
            (
                OURS,
                ours_src,
                lambda p: ours_pass(p, provider),
                "batches of 500, CAS on revision",
            ),
            (
                "MultiFernet rotate() loop (Airflow-style)",
                fernet_src,
                lambda p: multifernet_pass(p, mf),
                "select all, rotate, update each, one commit",
            ),
            (
                "database bound (same I/O, no crypto)",
                ours_src,
                db_bound_pass,
                "our batched reads + CAS writes, envelopes unchanged",
            ),
            (
                PLAIN_BOUND,
                ours_src,
                plain_sqlite_bound_pass,
                "plain sqlite3: same keyset scan + CAS executemany, no crypto",
            ),
            (
                "our cryptography alone (no database)",
                ours_src,
                lambda p: crypto_only_pass(p, provider),
                "decrypt + encrypt per row, rows in memory",
            ),
            (
                "MultiFernet rotate() alone (no database)",
                fernet_src,
                lambda p: multifernet_crypto_only(p, mf),
                "tokens in memory",
            ),
        ]
        samples: dict[str, list[tuple[int, float]]] = {name: [] for name, *_ in cases}
        for _ in range(reps):
            for name, src, fn, _note in cases:
                samples[name].append(fn(copy_db(src, work)))
        out = []
        for name, _src, _fn, note in cases:
            done = samples[name][0][0]
            out.append(RotRow(name, done, statistics.median(s for _, s in samples[name]), note))
        provider.close()
        return out
