"""``python -m benchmarks`` (``make bench``): run everything, write docs/benchmarks.{md,png}."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import hotpath, large, profile_hotpath, report, rotation, startup

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--reps", type=int, default=15, help="repetitions per figure (median)")
    ap.add_argument("--seconds", type=float, default=0.06, help="target seconds per repetition")
    ap.add_argument("--rows", type=int, default=100_000, help="table size for the rotation run")
    ap.add_argument("--rot-reps", type=int, default=3, help="repetitions of each rotation pass")
    ap.add_argument("--large", action="store_true", help="also 100k vs 1M: time and peak memory")
    ap.add_argument("--aio", action="store_true", help="also the asyncio API: PostgreSQL get, SQLite options")
    ap.add_argument("--server", action="store_true",
                    help="also the HTTP server beside OpenBao, alternated, and the framework floor (server_perf.py)")
    ap.add_argument("--server-seconds", type=int, default=5, help="wrk seconds per server run")
    ap.add_argument("--server-rounds", type=int, default=2, help="alternated rounds per server case")
    ap.add_argument("--startup-runs", type=int, default=15, help="runs of each command for CLI start-up")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the page and PNG go")
    args = ap.parse_args(argv)
    info = report.machine()
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    say("encrypt/decrypt beside the alternatives")
    rows = hotpath.run(reps=args.reps, target_seconds=args.seconds)
    for r in rows:
        say(
            f"  {r.name} {r.direction}: {r.ops and round(r.ops):} ops/s "
            f"ratio {r.ratio and round(r.ratio, 3)} {r.note if r.ops is None else ''}"
        )
    say("hot-path breakdown")
    steps = profile_hotpath.run(n=50_000, reps=min(args.reps, 7))
    say(f"rotation on {args.rows:,} rows")
    rot = rotation.run(n=args.rows, reps=args.rot_reps)
    for rr in rot:
        say(f"  {rr.name}: {rr.rows_per_s:,.0f} rows/s ({rr.seconds:.2f} s)")
    big = None
    if args.large:
        say("100k vs 1M re-encryption (child processes)")
        big = large.run()
        for b in big:
            say(f"  {b.rows:,}: {b.seconds:.1f} s, peak RSS {b.peak_rss_mib:.1f} MiB")
    say("command-line start-up (whole processes)")
    starts = startup.run(runs=args.startup_runs)
    for st in starts:
        say(f"  {st.name}: wall median {st.wall_median:.3f} s (min {st.wall_min:.3f}), CPU {st.cpu_median:.3f} s")
    extra = ""  # the asyncio and server sections, after the library's
    if args.aio:
        from . import aio_get, aio_sqlite

        say("asyncio API: get on PostgreSQL, SQLite options (docs/asyncio.md explains them)")
        extra += ("\n## asyncio API\n\nSee [asyncio.md](asyncio.md) for what each row is.\n\n### get on PostgreSQL\n\n"
                  f"{aio_get.report()}\n\n### SQLite options\n\n{aio_sqlite.report()}\n")
    if args.server:
        from . import server_perf, server_profile

        say("HTTP server beside OpenBao (SQLite vs dev, PostgreSQL vs its postgresql backend) and the floor")
        server_rows = server_perf.run(args.server_seconds, args.server_rounds, say=say)
        say("where one request's CPU goes (one worker, py-spy)")
        profiles = server_profile.run(["KV v2 read", "KV v2 write, one", "Transit encrypt", "Transit decrypt"],
                                      seconds=args.server_seconds)
        extra += (server_perf.section(server_rows, args.server_seconds, args.server_rounds)
                  + "\n### Where one request's CPU goes\n\n`benchmarks/server_profile.py`: one worker, "
                  "CPU per request from /proc, split by py-spy samples (GIL held) into stages; "
                  "µs (share).\n\n" + server_profile.table(profiles) + "\n")
    settings = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    page = report.write(  # the whole run's time, the asyncio and server parts included
        args.out, rows, rot, steps, big, info, settings.strip(), time.perf_counter() - start, starts
    )
    if extra:
        page.write_text(page.read_text() + extra)
    say(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
