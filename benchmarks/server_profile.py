"""Where one request's CPU goes in ``serve``: CPU per request and a sampled breakdown by stage.

One ``serve`` worker on a throwaway SQLite store (request audit on), one
case of :mod:`.server_perf` driven by ``wrk``.  The worker's own CPU time
(``/proc/<pid>/stat``, every thread) divided by the requests it answered
gives CPU per request, a figure the machine's load barely moves (unlike
requests/s).  With ``py-spy`` installed, the worker is sampled while it
holds the GIL and each sample is put in the innermost stage its stack
passes through (:data:`STAGES`); the stage's share times the CPU per
request is its cost in microseconds.  SQLite's and OpenSSL's own work
with the GIL released is not sampled, so those shares are the Python side.

``--src`` runs another source tree (the code before a change) with the
same harness, for a before/after table in one run.

Run: ``python -m benchmarks.server_profile [--case "KV v2 read"] [--seconds 8] [--src OLD/src]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import server_kv
from .server_kv import wrk
from .server_perf import CASES, Case, Target, prepare

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: (stage, pattern on a frame "function (file:line)"), tried from the innermost frame outwards.
STAGES: tuple[tuple[str, str], ...] = (
    ("audit", r"Backend\.audit|Backend\._flush|_write_events|record_events|/audit\.py|audit_request|_audited"),
    ("crypto", r"keys\.py|envelope\.py|_nonce\.py|transit/crypto\.py|cryptography|encrypt_under|decrypt_under"),
    ("store (SQL)", r"/store/|history\.py|sqlite3|Vault\.(head|read_version|read_kv|get_record|put_version|_put)"),
    ("token lookup", r"tokens\.py|Backend\.lookup|Backend\.peek|request_token|_token_in|servertables"),
    ("policy match", r"policies\.py|acl\.py|Ctx\.(require|allows)|Backend\.acl"),
    ("serialisation", r"_json\.py.*dumps|JSONAnswer|JSONResponse|json/encoder|vault_json|Ctx\.reply|_batch_reply"),
    ("parsing", r"read_json|read_body|_json\.py|json/decoder|Request\.(body|stream)|_limited|normalise|parse_qsl|"
                r"b64decode"),
    ("thread hop", r"run_in_executor|ThreadPoolExecutor|futures/|_ThreadRunner|run_sync|Backend\.(run|write)|"
                   r"wrap_future|shield|_chain_future|call_soon_threadsafe"),
    ("middleware, routing", r"starlette|Middleware|MountDispatcher|MountTable|_router_key|route_label|ratelimit|"
                            r"dispatch\.py|_routes\.py"),
    ("handler", r"server/kv\.py|server/transit\.py|transit/requests\.py|_request\.py"),
)


@dataclass
class Profile:
    label: str
    case: str
    requests_per_s: float
    cpu_us_per_request: float
    samples: int
    stages: dict[str, float] = field(default_factory=dict)  # stage -> share of the GIL-holding samples


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pid(port: int) -> int:
    """The granian worker serving ``port``: the newest process whose command line names the port."""
    out = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
    pids = sorted(int(p) for p in out)
    if not pids:
        raise RuntimeError("no serve process found")
    return pids[-1]


@contextmanager
def one_worker(src: Path, folder: Path, db: str | None = None) -> Iterator[Target]:
    """``serve --workers 1`` from the source tree ``src`` on a new SQLite store (or the store ``db``)."""
    with server_kv.ours(db or f"sqlite:///{folder / 'store.db'}", folder, workers=1, src=src) as (url, token):
        yield prepare(Target(str(src), url, token))


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return "granian, event loop"


def breakdown(raw: Path) -> tuple[int, dict[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():  # py-spy may cut a line short when the process is busy
            counts[stage_of(stack.split(";"))] += int(count)
    total = sum(counts.values())
    return total, {stage: n / total for stage, n in counts.most_common()} if total else {}


def measure(target: Target, case: Case, seconds: int, folder: Path, label: str) -> Profile:
    port = int(target.url.rsplit(":", 1)[1])
    pid = _worker_pid(port)
    script = case.script.format(token=target.token, body=target.bodies[case.body])
    wrk(target.url + case.path, script, 1, case.connections, folder)  # warm-up: caches, first-use paths
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = folder / f"{label}.raw"
    spy = None
    if Path(spy_bin).exists():
        spy = subprocess.Popen([spy_bin, "record", "-p", str(pid), "-f", "raw", "-o", str(raw), "-d", str(seconds),
                                "-r", "250", "--gil", "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    before = _cpu_seconds(pid)
    rps, _p50, _p99, _bad = wrk(target.url + case.path, script, seconds, case.connections, folder)
    cpu = _cpu_seconds(pid) - before
    total, stages = 0, {}
    if spy is not None:
        spy.wait()
        if raw.exists():
            total, stages = breakdown(raw)
    return Profile(label, case.name, rps, cpu / (rps * seconds) * 1e6, total, stages)


def run(case_names: list[str], seconds: int = 8, sources: list[tuple[str, Path]] | None = None,
        rounds: int = 1, pg: bool = False) -> list[Profile]:
    """Profile each case on each source tree; ``pg``: on a throwaway PostgreSQL cluster, a new schema each."""
    sources = sources or [("this tree", ROOT / "src")]
    out = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        base = Path(tmp)
        cluster = None
        if pg:
            from ._pg import throwaway_cluster

            os.chmod(tmp, 0o755)  # the cluster's own user walks into it
            (base / "pgroot").mkdir()
            cluster = throwaway_cluster(str(base / "pgroot"))
            stack.callback(cluster.stop, "immediate")
        for name in case_names:
            case = next(c for c in CASES if c.name.startswith(name))
            for r in range(rounds):
                for label, src in sources:
                    folder = base / f"{label.replace(' ', '_')}-{r}-{len(out)}"
                    db = None if cluster is None else cluster.url(schema=cluster.new_schema())
                    with one_worker(src, folder, db) as target:
                        p = measure(target, case, seconds, folder, label.replace(" ", "_"))
                    p.label = label
                    out.append(p)
                    print(f"  {label} | {case.name}: {p.requests_per_s:,.0f}/s, {p.cpu_us_per_request:,.0f} µs CPU "
                          f"per request, {p.samples} samples (load {os.getloadavg()[0]:.1f})", file=sys.stderr,
                          flush=True)
    return out


def table(profiles: list[Profile]) -> str:
    stages = [s for s, _ in STAGES] + ["granian, event loop"]
    lines = ["| code | case | req/s (1 worker) | CPU µs/request | " + " | ".join(stages) + " |",
             "|---|---|---:|---:|" + "---:|" * len(stages)]
    for p in profiles:
        cells = [f"{p.stages.get(s, 0) * p.cpu_us_per_request:,.0f} ({p.stages.get(s, 0):.0%})" for s in stages]
        lines.append(f"| {p.label} | {p.case} | {p.requests_per_s:,.0f} | {p.cpu_us_per_request:,.0f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server_profile", description=__doc__)
    ap.add_argument("--case", action="append", help="a case name's start (default: KV v2 read, Transit encrypt)")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--src", type=Path, help="also profile this source tree (labelled 'before')")
    ap.add_argument("--pg", action="store_true", help="on a throwaway PostgreSQL cluster instead of SQLite")
    args = ap.parse_args(argv)
    sources = [("after", ROOT / "src")] + ([("before", args.src.resolve())] if args.src else [])
    print(table(run(args.case or ["KV v2 read", "Transit encrypt"], args.seconds, sources, args.rounds, args.pg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
