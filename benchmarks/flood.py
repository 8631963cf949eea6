"""What a flood without a token costs the server (``make flood``): issue 28's attack, measured.

``serve`` with its defaults on a fresh SQLite store (one worker,
``unauthenticated_rate`` 20/s, ``unauthenticated_burst`` 100); an
authorised client (a root token, one keep-alive connection) reads a 256-byte
KV secret in a loop, alone for ``--seconds``, then for ``--seconds`` while
``wrk -c16`` requests ``/v1/x/<65,000 a>`` without a token from the same
address.  Reported: the store's bytes added during the flood (database and
WAL files after a checkpoint: the flood's events and the reader's audited
reads; the flood's events' own bytes beside), the 429s
(``nebula_credential_http_rate_limited_total``), the flood's audited events,
and the authorised client's reads per second alone and during the flood.

Before the per-source budget the same flood added ~16 MB/s to the store.
Run: ``python -m benchmarks.flood [--seconds 10] [--json out.json] [--docs docs/server.md]``;
``--docs`` replaces the table between the ``flood`` markers of that page.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import machine  # noqa: E402
from benchmarks.server_kv import ours  # noqa: E402

START, END = "<!-- flood: start -->", "<!-- flood: end -->"
SECRET_PATH = "/v1/secret/data/flood/read"


@dataclass
class Flood:
    seconds: float
    connections: int
    workers: int
    token: str
    path_chars: int
    flood_requests: int
    refused_429: int
    flood_events_audited: int
    store_bytes_added: int
    flood_event_bytes: int
    reads_per_s_alone: float
    reads_per_s_during: float
    read_errors: int
    machine: str


def _store_bytes(db: Path) -> int:
    """The store's size on disk once its WAL is folded into the database (the server is idle then):
    the WAL file keeps its largest size between checkpoints, so without this a flood reads as 0 bytes."""
    with sqlite3.connect(db, timeout=30) as conn:
        for _ in range(50):
            if conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                break
            time.sleep(0.1)
    conn.close()
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def _audit(db: Path, after_seq: int) -> tuple[int, int, int]:
    """(last seq, the flood's events after ``after_seq``, their bytes: columns + 64 a row), read-only.
    The flood's are the 404s and 403s; the authorised reader's reads are audited too, as outcome ``ok``."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()[0]
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(details) + length(actor) + length(action) + length(mac) + 64), 0) "
            "FROM audit_events WHERE seq > ? AND action IN ('server.request', 'server.denied') "
            "AND outcome IN ('error', 'denied')",
            (after_seq,)).fetchone()
    conn.close()
    return int(last), int(count), int(size)


def _refused(host: str, port: int) -> int:
    """The serve's 429 count, from /metrics (never refused, whatever the flood spent)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = re.search(r'^nebula_credential_http_rate_limited_total\{reason="unauthenticated_or_denied"\} (\S+)$',
                      text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def _reads(host: str, port: int, token: str, seconds: float) -> tuple[float, int]:
    """(reads/s answered 200, other answers) by one client on one keep-alive connection."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    ok = bad = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            conn.request("GET", SECRET_PATH, headers={"X-Vault-Token": token})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                bad += 1
    finally:
        conn.close()
    return ok / (time.monotonic() - started), bad


def _flood_token(host: str, port: int, root: str, kind: str) -> str:
    """The flood's token: none, one the store does not know, or a real one whose policy allows nothing here."""
    if kind == "none":
        return ""
    if kind == "unknown":
        return "hvs.CAESIFloodFloodFloodFloodFloodFlood"
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/v1/auth/token/create", body=json.dumps({"policies": ["default"]}),
                     headers={"X-Vault-Token": root, "Content-Type": "application/json"})
        return str(json.loads(conn.getresponse().read())["auth"]["client_token"])
    finally:
        conn.close()


def run(seconds: float = 10.0, connections: int = 16, path_chars: int = 65_000, workers: int = 1,
        kind: str = "none") -> Flood:
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "store.db"
        with ours(f"sqlite:///{db}", folder, workers=workers) as (url, token):
            host, port_text = url.split("//")[1].rsplit(":", 1)
            port = int(port_text)
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", SECRET_PATH, body=json.dumps({"data": {"value": "x" * 244}}),
                         headers={"X-Vault-Token": token, "Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
            alone, bad_alone = _reads(host, port, token, seconds)
            seq, _, _ = _audit(db, 0)
            bytes_before = _store_bytes(db)
            refused_before = _refused(host, port)
            flood_token = _flood_token(host, port, token, kind)
            header = ["-H", f"X-Vault-Token: {flood_token}"] if flood_token else []
            wrk = subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", *header,
                                    f"{url}/v1/x/{'a' * path_chars}"], stdout=subprocess.PIPE, text=True)
            during: list[tuple[float, int]] = []
            reader = threading.Thread(target=lambda: during.append(_reads(host, port, token, seconds)))
            reader.start()
            out, _ = wrk.communicate(timeout=seconds + 120)
            reader.join()
            if wrk.returncode != 0:
                raise RuntimeError(f"wrk failed: {out}")
            total = re.search(r"(\d+) requests in", out)
            refused = _refused(host, port) - refused_before
            _, flood_events, row_bytes = _audit(db, seq)
            added = _store_bytes(db) - bytes_before
    return Flood(seconds, connections, workers, kind, path_chars, int(total.group(1)) if total else 0, refused,
                 flood_events, added, row_bytes, round(alone, 1), round(during[0][0], 1), bad_alone + during[0][1],
                 f"{info['CPU']}, {os.cpu_count()} cores, load average {info['load average at start']} at start")


_TOKEN_TEXT = {"none": "no token", "unknown": "an unknown token", "denied": "a token allowed nothing"}


def table(result: Flood) -> str:
    mb = 1_000_000
    return "\n".join([
        "| flood | requests | 429 | flood events audited | their bytes | store bytes added (all) "
        "| reads/s alone | reads/s during |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| `wrk -c{result.connections} -d{result.seconds:g}s`, `/v1/x/<{result.path_chars:,} a>`, "
        f"{_TOKEN_TEXT[result.token]} "
        f"| {result.flood_requests:,} | {result.refused_429:,} | {result.flood_events_audited:,} "
        f"| {result.flood_event_bytes / mb:.2f} MB | {result.store_bytes_added / mb:.2f} MB "
        f"| {result.reads_per_s_alone:,.0f} | {result.reads_per_s_during:,.0f} |",
        "",
        f"Measured by `make flood` on {result.machine}; {result.workers} worker(s), SQLite, defaults "
        f"(`unauthenticated_rate` 20, `unauthenticated_burst` 100). The store's bytes include the "
        f"authorised reader's audited reads during the flood; {result.read_errors} reads failed.",
    ])


def write_docs(page: Path, result: Flood) -> None:
    text = page.read_text()
    if START not in text or END not in text:
        raise RuntimeError(f"{page} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{table(result)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="alone, then during the flood")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="serve --workers (the budget is the serve's)")
    parser.add_argument("--token", choices=("none", "unknown", "denied"), default="none",
                        help="the flood's token: none, one the store does not know, or a valid one allowed nothing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--docs", type=Path, help="replace the flood table of this page")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.connections, workers=args.workers, kind=args.token)
    text = json.dumps(asdict(result), indent=2)
    print(text)
    print(table(result), file=sys.stderr)
    if args.json:
        args.json.write_text(text + "\n")
    if args.docs:
        write_docs(args.docs, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
