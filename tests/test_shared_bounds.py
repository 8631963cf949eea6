"""Issue 28 item 10: bounds several processes share come from the store, not from one process.

* The destroy floor (twice ``refresh_interval``) is the largest interval any
  process on the store has announced: a process configured with
  ``refresh_interval = "0s"`` cannot destroy right after a revoke while
  another process may still hold the version as one to write under.
* The usage bound (``max_encryptions``) is never passed across processes,
  not even by one: two real processes encrypt in turns on one store with
  auto-rotation on, and no version protects more than the bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nebula_credential as nc

from .helpers import cli_env

BOUND = 500


def _config(path: Path, refresh: str, *, bound: int | None = None) -> Path:
    text = f'[keys]\nrefresh_interval = "{refresh}"\nauto_rotation = true\n[retention]\nkeep_versions = 1\n'
    if bound is not None:
        text += f"[rotation]\nstrategy = \"usage\"\nmax_encryptions = {bound}\n"
    path.write_text(text)
    return path


def _cli(tmp_path: Path, db: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nebula_credential", "--db", db, "--config", str(config), *args],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)


def test_a_short_refresh_interval_in_the_destroying_process_does_not_lower_the_floor(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'floor.db'}"
    slow = _config(tmp_path / "slow.toml", "60s")
    fast = _config(tmp_path / "fast.toml", "0s")
    assert _cli(tmp_path, db, fast, "init").returncode == 0
    # process A (an application refreshing its key cache every 60 s) opens the store
    opened = _cli(tmp_path, db, slow, "keys", "list")
    assert opened.returncode == 0, opened.stderr
    # process B, configured with 0 s, rotates, revokes and tries to destroy at once
    for args in (("keys", "rotate"), ("keys", "revoke", "1")):
        done = _cli(tmp_path, db, fast, *args)
        assert done.returncode == 0, done.stderr
    refused = _cli(tmp_path, db, fast, "keys", "destroy", "1", "--force", "--yes-destroy-key-version", "1")
    assert refused.returncode == 1
    assert "floor" in refused.stderr and "2m" in refused.stderr.replace(" ", ""), refused.stderr
    with nc.open(db, config=fast) as vault:
        assert vault.keys.version(1).status.value == "revoked"


_WORKER = textwrap.dedent("""
    import json, sys
    import nebula_credential as nc
    from nebula_credential import envelope
    vault = nc.open(sys.argv[1], config=sys.argv[2])
    km = vault.keys
    print("ready", flush=True)
    for line in sys.stdin:
        counts = {}
        for _ in range(int(line)):
            v = envelope.parse(km.encrypt(b"x")).key_version
            counts[v] = counts.get(v, 0) + 1
        print(json.dumps(counts), flush=True)
""")


def test_two_processes_never_pass_the_usage_bound_together(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    config = _config(tmp_path / "usage.toml", "60s", bound=BOUND)
    nc.open(db, config=config, create=True).close()
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), db, str(config)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path)
               for _ in range(2)]
    used: dict[int, int] = {}
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"

        def run(w: subprocess.Popen[str], n: int) -> None:
            assert w.stdin is not None and w.stdout is not None
            w.stdin.write(f"{n}\n")
            w.stdin.flush()
            for version, count in json.loads(w.stdout.readline()).items():
                used[int(version)] = used.get(int(version), 0) + count

        a, b = workers
        # A reserves a block of v1; B uses the rest of v1 and rotates; A finishes its block, finds v1
        # retired and moves to B's version; turns go on until several versions are used up
        run(a, 1)
        for _ in range(6):
            run(b, 600)
            run(a, 600)
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
            w.wait(timeout=60)
    assert sum(used.values()) == 1 + 6 * 1200
    assert max(used.values()) <= BOUND, used
    with nc.open(db, config=config) as vault:
        counters = {kv.version: kv.encryptions for kv in vault.keys.list()}
    assert all(c <= BOUND for c in counters.values()), counters
    assert all(used[v] <= counters[v] for v in used), (used, counters)
