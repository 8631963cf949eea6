"""Our ``serve`` beside OpenBao over HTTP, alternated in one run, and the framework floor.

Issue 27's server rows, all with Debian's ``wrk`` (2 threads) on this machine:

- **SQLite**: ``serve`` with its *default* settings (one worker per core,
  every request audited) beside OpenBao with in-memory storage and no audit
  device, as ``bao server -dev`` runs (a config file rather than ``-dev``
  only to raise ``max_request_json_strings``, which refuses a 1,000-item
  batch otherwise).
- **PostgreSQL**: ``serve`` on a throwaway cluster beside OpenBao's
  ``postgresql`` storage backend on the same cluster, request audit on
  (``[audit] requests``, a file audit device for OpenBao) and off.
- **Floor**: a bare ASGI and a bare RSGI app on granian with the same worker
  count (:mod:`.floor_app`), the KV read's wrk script.

Cases: KV v2 read; KV v2 write to one path and spread over 1,000 paths;
Transit encrypt and decrypt of 256 bytes; a 1,000-item Transit batch
encrypt (4 connections; the others 32).  Both servers of a pair run at the
same time and each case alternates them ``rounds`` times, so load from
elsewhere on the machine falls on both; a row gives medians over the rounds
(throughput, p99), the non-2xx answers summed, and the median of the
per-round ratios (ours / OpenBao).  The load average is read before each
case.  Nothing here is asserted: ``tests/test_benchmarks_server.py`` only
checks that a tiny run produces its rows.

Run: ``python -m benchmarks.server_perf [--seconds 5] [--rounds 2] [--no-pg]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import server_kv
from .server_kv import running, wrk
from .server_transit import _bao

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port  # noqa: E402

PLAINTEXT = base64.b64encode(os.urandom(256)).decode()
SECRET = {"value": "x" * 244}
GET_LUA = 'wrk.method = "GET"\nwrk.headers["X-Vault-Token"] = "{token}"\n'
POST_LUA = """wrk.method = "POST"
wrk.headers["X-Vault-Token"] = "{token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""
SPREAD_LUA = POST_LUA + """request = function()
  return wrk.format(nil, "/v1/secret/data/bench/w" .. math.random(1000))
end
"""


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    script: str  # formatted with token and body
    body: str  # key into the target's prepared bodies ("" for none)
    connections: int = 32
    items: int = 1


CASES = (
    Case("KV v2 read", "/v1/secret/data/bench/read", GET_LUA, ""),
    Case("KV v2 write, one path", "/v1/secret/data/bench/one", POST_LUA, "kv"),
    Case("KV v2 write, 1,000 paths", "/", SPREAD_LUA, "kv"),
    Case("Transit encrypt 256 B", "/v1/transit/encrypt/bench", POST_LUA, "encrypt"),
    Case("Transit decrypt 256 B", "/v1/transit/decrypt/bench", POST_LUA, "decrypt"),
    Case("Transit batch encrypt, 1,000 items", "/v1/transit/encrypt/bench", POST_LUA, "batch", 4, 1000),
)


@dataclass
class Target:
    label: str
    url: str
    token: str
    bodies: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    rps: float
    p99_ms: float
    errors: int
    load: float


@dataclass
class Row:
    section: str
    case: str
    ours: str
    theirs: str
    ours_runs: list[Run]
    theirs_runs: list[Run]
    connections: int
    items: int

    @property
    def ratio(self) -> float:
        return statistics.median(a.rps / b.rps for a, b in zip(self.ours_runs, self.theirs_runs, strict=True)
                                 if b.rps)


def prepare(target: Target, batch: int = 1000) -> Target:
    """The read secret, the Transit key and a ciphertext, then every case's body."""
    headers = {"X-Vault-Token": target.token}
    with httpx.Client(base_url=target.url, headers=headers, timeout=60) as http:
        http.post("/v1/secret/data/bench/read", json={"data": SECRET}).raise_for_status()
        http.post("/v1/transit/keys/bench", json={}).raise_for_status()
        ct = http.post("/v1/transit/encrypt/bench", json={"plaintext": PLAINTEXT}).json()["data"]["ciphertext"]
    target.bodies = {
        "": "",
        "kv": json.dumps({"data": SECRET}),
        "encrypt": json.dumps({"plaintext": PLAINTEXT}),
        "decrypt": json.dumps({"ciphertext": ct}),
        "batch": json.dumps({"batch_input": [{"plaintext": PLAINTEXT}] * batch}),
    }
    return target


@contextmanager
def ours(db: str, folder: Path, *, audit: bool = True, workers: int | None = None) -> Iterator[Target]:
    """``serve`` with its defaults (no ``--workers`` unless given) on a new store."""
    with server_kv.ours(db, folder, audit_reads=audit, workers=workers) as (url, token):
        yield prepare(Target(f"ours ({'audit on' if audit else 'audit off'})", url, token))


@contextmanager
def openbao(folder: Path, *, storage: str = 'storage "inmem" {}', audit: bool = False) -> Iterator[Target]:
    """OpenBao initialised and unsealed here, KV v2 at secret/ and Transit at transit/ (as -dev has)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    audit_block = f'audit "file" "bench" {{\n  options {{\n    file_path = "{folder / "audit.log"}"\n  }}\n}}\n'
    (folder / "bao.hcl").write_text(f"""{storage}
disable_mlock = true
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{free_port()}"
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
  max_request_json_strings = 10000000
}}
{audit_block if audit else ""}""")
    url = f"http://127.0.0.1:{port}"
    env = {"HOME": str(folder), "PATH": "/usr/bin:/bin"}
    with running([_bao(), "server", f"-config={folder / 'bao.hcl'}"], folder, env, url, ready="/v1/sys/init"):
        keys = httpx.put(f"{url}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=60).json()
        httpx.put(f"{url}/v1/sys/unseal", json={"key": keys["keys"][0]}, timeout=60).raise_for_status()
        token = keys["root_token"]
        headers = {"X-Vault-Token": token}
        deadline = time.monotonic() + 60
        while True:  # the first mount waits for the node to become active
            r = httpx.post(f"{url}/v1/sys/mounts/secret", json={"type": "kv", "options": {"version": "2"}},
                           headers=headers, timeout=60)
            if r.status_code < 300 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        r.raise_for_status()
        httpx.post(f"{url}/v1/sys/mounts/transit", json={"type": "transit"}, headers=headers,
                   timeout=60).raise_for_status()
        for _ in range(100):  # KV v2's upgrade runs in the background after the mount
            if httpx.get(f"{url}/v1/secret/config", headers=headers, timeout=60).status_code == 200:
                break
            time.sleep(0.1)
        kind = "in-memory" if "inmem" in storage else "postgresql"
        yield prepare(Target(f"OpenBao ({kind}, {'file audit' if audit else 'no audit'})", url, token))


def pg_storage(cluster_url: str, admin: Callable[[str], object]) -> str:
    """OpenBao's ``postgresql`` storage block, its table created first (DESIGN.md's recipe)."""
    admin('CREATE TABLE IF NOT EXISTS openbao_kv_store (parent_path TEXT COLLATE "C" NOT NULL, '
          'path TEXT COLLATE "C", key TEXT COLLATE "C", value BYTEA, PRIMARY KEY (path, key))')
    admin("CREATE INDEX IF NOT EXISTS parent_path_idx ON openbao_kv_store (parent_path)")
    return f'storage "postgresql" {{\n  connection_url = "{cluster_url}?sslmode=disable"\n}}'


@contextmanager
def floor(interface: str, workers: int, folder: Path) -> Iterator[Target]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    granian = str(Path(sys.executable).parent / "granian")
    argv = [granian, "--interface", interface, "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--no-ws", f"benchmarks.floor_app:{interface}_app"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with running(argv, folder, env, f"http://127.0.0.1:{port}", ready="/") as url:
        yield Target(f"bare {interface.upper()} on granian, {workers} worker(s)", url, "x", {"": ""})


def _one(target: Target, case: Case, seconds: int, folder: Path) -> Run:
    load = os.getloadavg()[0]
    script = case.script.format(token=target.token, body=target.bodies[case.body])
    rps, _p50, p99, bad = wrk(target.url + case.path, script, seconds, case.connections, folder)
    return Run(rps, p99, bad, load)


def compare(section: str, ours_t: Target, theirs: Target, cases: tuple[Case, ...], seconds: int, rounds: int,
            folder: Path, say: Callable[[str], None]) -> list[Row]:
    """Each case ``rounds`` times, ours then theirs in turn."""
    rows = []
    for case in cases:
        row = Row(section, case.name, ours_t.label, theirs.label, [], [], case.connections, case.items)
        for _ in range(rounds):
            for target, runs in ((ours_t, row.ours_runs), (theirs, row.theirs_runs)):
                run = _one(target, case, seconds, folder)
                runs.append(run)
                say(f"  {section} | {case.name} | {target.label}: {run.rps:,.0f}/s p99 {run.p99_ms:.1f} ms "
                    f"non-2xx {run.errors} (load {run.load:.1f})")
        rows.append(row)
    return rows


def run(seconds: int = 5, rounds: int = 2, *, pg: bool = True, floor_rows: bool = True,
        cases: tuple[Case, ...] = CASES, say: Callable[[str], None] = print) -> list[Row]:
    from nebula_credential.server.run import worker_count

    workers = worker_count(0)  # what serve starts by default: the floor apps get as many
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.chmod(tmp, 0o755)
        with ExitStack() as stack:
            a = stack.enter_context(ours(f"sqlite:///{base / 'ours' / 'store.db'}", base / "ours"))
            b = stack.enter_context(openbao(base / "bao-dev"))
            b.label = "OpenBao dev (in-memory, no audit)"
            rows += compare("SQLite, serve defaults", a, b, cases, seconds, rounds, base, say)
            if floor_rows:
                for interface in ("asgi", "rsgi"):
                    with floor(interface, workers, base / interface) as bare:
                        rows += compare("framework floor", a, bare, cases[:1], seconds, rounds, base, say)
        if pg:
            from ._pg import throwaway_cluster

            (base / "pgroot").mkdir()
            cluster = throwaway_cluster(str(base / "pgroot"))
            try:
                for audit in (True, False):
                    with ExitStack() as stack:
                        schema = cluster.new_schema()
                        a = stack.enter_context(ours(cluster.url(schema=schema), base / f"ours-pg-{audit}",
                                                     audit=audit))
                        bao_db = f"bao_{'on' if audit else 'off'}"
                        cluster.admin(f"CREATE DATABASE {bao_db}", database="postgres")
                        storage = pg_storage(cluster.url(bao_db), lambda sql, db=bao_db: cluster.admin(sql, db))
                        b = stack.enter_context(openbao(base / f"bao-pg-{audit}", storage=storage, audit=audit))
                        section = f"PostgreSQL, audit {'on' if audit else 'off'}"
                        rows += compare(section, a, b, cases, seconds, rounds, base, say)
            finally:
                cluster.stop("immediate")
    return rows


def _median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def table(rows: list[Row]) -> str:
    lines = ["| section | case | ours | ours/s | ours p99 ms | ours non-2xx | versus | their/s | their p99 ms | "
             "their non-2xx | ratio | load |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        unit = "" if r.items == 1 else f" ({r.items:,} items/request)"
        loads = [x.load for x in r.ours_runs + r.theirs_runs]
        lines.append(
            f"| {r.section} | {r.case}{unit}, {r.connections} conns | {r.ours} | {_median(r.ours_runs, 'rps'):,.0f} | "
            f"{_median(r.ours_runs, 'p99_ms'):.1f} | {sum(x.errors for x in r.ours_runs)} | {r.theirs} | "
            f"{_median(r.theirs_runs, 'rps'):,.0f} | {_median(r.theirs_runs, 'p99_ms'):.1f} | "
            f"{sum(x.errors for x in r.theirs_runs)} | {r.ratio:.2f} | {min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines)


def _default_workers() -> int:
    from nebula_credential.server.run import worker_count

    return worker_count(0)


def section(rows: list[Row], seconds: int, rounds: int) -> str:
    return ("\n## HTTP server beside OpenBao\n\n"
            f"`benchmarks/server_perf.py`: wrk -t2, {seconds} s per run, {rounds} alternated rounds per case, "
            "our `serve` with its default settings (one worker per core: "
            f"{_default_workers()} here; every request audited), medians over the rounds, "
            "ratio = median of the per-round ratios of requests/s, load = 1-minute load average before each run.\n\n"
            f"{table(rows)}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server_perf", description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated case names' first words to keep (e.g. 'KV v2 read')")
    args = ap.parse_args(argv)
    cases = tuple(c for c in CASES if not args.only or any(c.name.startswith(o) for o in args.only.split(",")))
    rows = run(args.seconds, args.rounds, pg=not args.no_pg, floor_rows=not args.no_floor, cases=cases,
               say=lambda m: print(m, file=sys.stderr, flush=True))
    print(section(rows, args.seconds, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
