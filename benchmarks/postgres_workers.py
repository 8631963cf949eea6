"""Re-encryption on PostgreSQL with 1, 2 and 4 workers, beside the database bound.

Starts a throwaway PostgreSQL cluster (the test suite's recipe), seeds N
credentials of ~300 bytes, and measures in one process:

* ours: ``vault.reencrypt(workers=W)`` after a rotation (SKIP LOCKED batches);
* the database bound: the same batched SELECT ... FOR UPDATE SKIP LOCKED and
  compare-and-swap UPDATEs with W threads, rewriting each row's envelope
  unchanged (no cryptography).

Run: ``python -m benchmarks.postgres_workers [--rows 100000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import nebula_credential as nc  # noqa: E402
from nebula_credential.providers.local import LocalKeyProvider  # noqa: E402
from nebula_credential.store.base import StoreTx  # noqa: E402

SCOPES = ("production", "user", "development")


def seed(vault: nc.Vault, rows: int) -> None:
    secret = "x" * 200
    vault.put_many(((f"cred-{i:07d}", {"token": secret, "i": i}, SCOPES[i % 3], {"n": i}) for i in range(rows)),
                   batch_size=2000)


def db_bound(vault: nc.Vault, workers: int, batch: int = 500) -> tuple[int, float]:
    """Same reads and writes as a pass, no crypto: move every row from v1 to v2 unchanged."""
    kr = vault.keyring_name
    done = [0]
    lock = threading.Lock()

    def work() -> None:
        for scope in SCOPES:
            while True:
                def step(tx: StoreTx, scope: str = scope) -> int:
                    rows = tx.fetch_for_reencryption(kr, 1, scope, None, batch, skip_locked=True)
                    return tx.cas_update_envelopes(kr, [(r.id, r.revision, 2, r.envelope) for r in rows])

                n = vault.store.run(step)
                if n == 0:
                    break
                with lock:
                    done[0] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    from benchmarks._pg import throwaway_cluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = throwaway_cluster(tmp)
        os.environ["NEBULA_CREDENTIAL_MASTER_KEY_FILE"] = str(Path(tmp) / "master.key")
        LocalKeyProvider.create(Path(tmp) / "master.key")  # one root key, named for every store below
        try:
            results = []
            url = cluster.url(schema=cluster.new_schema())
            with nc.open(url, create=True, provider=LocalKeyProvider.load(Path(tmp) / "master.key")) as vault:
                t0 = time.perf_counter()
                seed(vault, args.rows)
                print(f"seeded {args.rows} rows in {time.perf_counter() - t0:.1f}s", flush=True)
                for workers in (1, 2, 4):
                    vault.keys.rotate()
                    r = vault.reencrypt(workers=workers, batch_size=500)
                    assert r.ok and r.reencrypted == args.rows, r.to_json()
                    results.append(("ours", workers, r.reencrypted / r.seconds))
                    print(f"ours      workers={workers}: {r.reencrypted / r.seconds:9,.0f} rows/s", flush=True)
            for workers in (1, 2, 4):
                url = cluster.url(schema=cluster.new_schema())
                with nc.open(url, create=True, provider=LocalKeyProvider.load(Path(tmp) / "master.key")) as vault:
                    seed(vault, args.rows)
                    vault.keys.rotate()
                    n, secs = db_bound(vault, workers)
                    assert n == args.rows
                    results.append(("db-bound", workers, n / secs))
                    print(f"db-bound  workers={workers}: {n / secs:9,.0f} rows/s", flush=True)
            print("\n| workers | ours rows/s | DB bound rows/s | ratio |\n|---:|---:|---:|---:|")
            for w in (1, 2, 4):
                ours = next(v for k, ww, v in results if k == "ours" and ww == w)
                bound = next(v for k, ww, v in results if k == "db-bound" and ww == w)
                print(f"| {w} | {ours:,.0f} | {bound:,.0f} | {ours / bound:.2f} |")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
