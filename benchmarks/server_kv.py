"""KV v2 over HTTP: our server (SQLite, PostgreSQL) beside OpenBao dev, in one run.

For each target: one 256-byte secret read over and over, and writes of a
256-byte secret spread over 1,000 paths, with Debian's ``wrk`` (2 threads,
32 connections, a Lua script for the token header and the POST body),
everything on this machine, plain HTTP on loopback for all three.  Our
server audits every request (the audit chain is a write per request); the
``--no-read-audit`` variant shows ``[audit] requests = false``.

Run: ``python -m benchmarks.server_kv [--seconds 10] [--connections 32]``.
Prints a Markdown table (requests/s, p50, p99) for docs/server.md.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import cli_env, free_port, stop_process  # noqa: E402

SECRET = {"value": "x" * 244}  # 256 bytes of JSON: {"value":"xxx..."}
READ_LUA = """
wrk.method = "GET"
wrk.headers["X-Vault-Token"] = "{token}"
"""
WRITE_LUA = """
wrk.method = "POST"
wrk.headers["X-Vault-Token"] = "{token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
request = function()
  return wrk.format(nil, "/v1/secret/data/bench/w" .. math.random(1000))
end
"""


@dataclass
class Result:
    target: str
    operation: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        raise RuntimeError(f"cannot read wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, script: str, seconds: int, connections: int, folder: Path) -> tuple[float, float, float, int]:
    lua = folder / f"wrk-{uuid.uuid4().hex}.lua"
    lua.write_text(script)
    out = subprocess.run(["/usr/bin/wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua),
                          url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(bad.group(1)) if bad else 0


def _wait(url: str, proc: subprocess.Popen[bytes], ready: str = "/v1/sys/health") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url + ready, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextmanager
def running(argv: list[str], folder: Path, env: dict[str, str], url: str,
            ready: str = "/v1/sys/health") -> Iterator[str]:
    """A server process, logging to the folder, ready when ``ready`` (/v1/sys/health) answers 200."""
    with (folder / "server.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(url, proc, ready)
            yield url
        finally:
            stop_process(proc, timeout=30)


@contextmanager
def ours(db: str, folder: Path, *, audit_reads: bool = True, workers: int | None = 1,
         src: Path | None = None) -> Iterator[tuple[str, str]]:
    """``serve`` on a new store at ``db``: its URL and a root token (``workers`` None: serve's default;
    ``src``: run that source tree, e.g. the code before a change, instead of this one)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"server-{uuid.uuid4().hex[:6]}.toml"
    config.write_text("" if audit_reads else "[audit]\nrequests = false\n")
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(folder / "master.key"), NEBULA_CREDENTIAL_CONFIG=str(config),
                  **({} if src is None else {"PYTHONPATH": str(src)}))
    cli = [sys.executable, "-m", "nebula_credential", "--db", db]
    subprocess.run([*cli, "init"], env=env, cwd=folder, check=True, capture_output=True)
    token = json.loads(subprocess.run([*cli, "--json", "token", "create", "--policy", "root"], env=env, cwd=folder,
                                      check=True, capture_output=True, text=True).stdout)["token"]
    port = free_port()
    argv = [*cli, "serve", "--listen", f"127.0.0.1:{port}"] + ([] if workers is None else ["--workers", str(workers)])
    with running(argv, folder, env, f"http://127.0.0.1:{port}") as url:
        yield url, token


@contextmanager
def openbao(folder: Path) -> Iterator[tuple[str, str]]:
    binary = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    token = uuid.uuid4().hex
    port = free_port()
    with running([binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"],
                 folder, {"HOME": str(folder), "PATH": "/usr/bin:/bin"}, f"http://127.0.0.1:{port}") as url:
        yield url, token


def measure(name: str, url: str, token: str, seconds: int, connections: int, folder: Path) -> list[Result]:
    httpx.post(f"{url}/v1/secret/data/bench/read", json={"data": SECRET}, headers={"X-Vault-Token": token},
               timeout=30).raise_for_status()
    results = []
    for op, script, path in (("read", READ_LUA, "/v1/secret/data/bench/read"), ("write", WRITE_LUA, "/")):
        body = json.dumps({"data": SECRET})
        rps, p50, p99, bad = wrk(url + path, script.format(token=token, body=body), seconds, connections, folder)
        results.append(Result(name, op, rps, p50, p99, bad))
        print(f"{name:34} {op:5} {rps:9,.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  non-2xx {bad}",
              file=sys.stderr, flush=True)
    return results


def run(seconds: int = 10, connections: int = 32) -> list[Result]:
    """Ours on SQLite and PostgreSQL, then OpenBao dev, one after the other on this machine."""
    from tests.fixtures_postgres import DATABASE, PostgresCluster

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.chmod(tmp, 0o755)
        (base / "pg").mkdir()
        cluster = PostgresCluster(base / "pg")
        cluster.init()
        cluster.start()
        try:
            cluster.admin(f"CREATE DATABASE {DATABASE}", database="postgres")
            runs = [
                ("ours, SQLite", f"sqlite:///{base / 'a.db'}", True, 1),
                ("ours, SQLite, read audit off", f"sqlite:///{base / 'b.db'}", False, 1),
                ("ours, SQLite, 2 workers", f"sqlite:///{base / 'c.db'}", True, 2),
                ("ours, PostgreSQL", cluster.url(schema=cluster.new_schema()), True, 1),
                ("ours, PostgreSQL, 2 workers", cluster.url(schema=cluster.new_schema()), True, 2),
            ]
            for name, db, audit_reads, workers in runs:
                folder = base / uuid.uuid4().hex[:8]
                folder.mkdir()
                with ours(db, folder, audit_reads=audit_reads, workers=workers) as (url, token):
                    results += measure(name, url, token, seconds, connections, folder)
            folder = base / "bao"
            folder.mkdir()
            with openbao(folder) as (url, token):
                results += measure("OpenBao 2.x dev (in-memory)", url, token, seconds, connections, folder)
        finally:
            cluster.stop("immediate")
    return results


def table(results: list[Result]) -> str:
    lines = ["| target | operation | requests/s | p50 ms | p99 ms | non-2xx |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r.target} | {r.operation} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
              for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    print(table(run(args.seconds, args.connections)))


if __name__ == "__main__":
    main()
