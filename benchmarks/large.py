"""Re-encryption at 100k vs 1M rows on SQLite: time and peak memory.

Each table is built by one child process; a second, fresh child opens it,
rotates and re-encrypts, then reports its wall time and peak RSS
(``VmHWM``), so the building never counts toward the peak.  A flat
peak from 100k to 1M shows the pass streams batches instead of loading
the table.

Run as ``python -m benchmarks.large build|pass DB KEYFILE [ROWS]`` by
:func:`run`; not meant to be called by hand.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class LargeRow:
    rows: int
    build_seconds: float
    seconds: float
    peak_rss_mib: float
    rss_before_mib: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (kB); VmHWM is reset by exec,
    unlike ``ru_maxrss``, which a child inherits from the process that forked it."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(argv: list[str]) -> dict[str, float]:
    import nebula_credential as nc
    from nebula_credential.providers.local import LocalKeyProvider

    from .rotation import build_ours

    mode, db, keyfile = argv[0], Path(argv[1]), Path(argv[2])
    if mode == "build":
        start = time.perf_counter()
        build_ours(db, int(argv[3]), LocalKeyProvider.create(keyfile))
        return {"seconds": time.perf_counter() - start}
    with nc.open(f"sqlite:///{db}", provider=LocalKeyProvider.load(keyfile)) as vault:
        vault.keys.rotate(reason="bench")
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        result = vault.reencrypt()
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": result.reencrypted,
        "ok": float(result.ok),
        "peak_rss_mib": _status_mib("VmHWM"),
        "rss_before_mib": before,
    }


def _spawn(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(
    sizes: tuple[int, ...] = (100_000, 1_000_000), workdir: Path | None = None
) -> list[LargeRow]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="nc-large-", dir=workdir) as tmp:
            db, keyfile = Path(tmp) / "large.db", Path(tmp) / "master.key"
            built = _spawn("build", str(db), str(keyfile), str(n))
            done = _spawn("pass", str(db), str(keyfile))
            assert done["ok"] == 1.0 and done["rows"] == n, done
            rows.append(
                LargeRow(
                    n,
                    built["seconds"],
                    done["seconds"],
                    done["peak_rss_mib"],
                    done["rss_before_mib"],
                )
            )
    return rows


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1:])))
