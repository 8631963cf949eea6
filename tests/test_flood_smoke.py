"""``make flood`` runs (2 s instead of 10) and the flood adds a bounded amount to the store.

The full measurement (``python -m benchmarks.flood``) is for a quiet
machine; here nothing timed is asserted, only counts and sizes: a flood
without a token gets at most the default budget audited (a burst of 100,
then 20 a second: 180 events over the 2 s run and 2 s of slack) and the
store grows by less than 2 MB, flood and the authorised reader's audited
reads together (the same 2 s added ~30 MB before the budget).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import flood

pytestmark = pytest.mark.services


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make system-deps)")
def test_the_flood_measurement_runs_and_the_store_grows_by_a_bounded_amount(tmp_path: Path) -> None:
    result = flood.run(seconds=2)
    assert result.flood_requests > 0 and result.reads_per_s_alone > 0 and result.read_errors == 0
    assert 0 < result.flood_events_audited <= 100 + 20 * (2 + 2)
    assert result.store_bytes_added < 2_000_000, result
    page = tmp_path / "server.md"
    page.write_text(f"before\n{flood.START}\nold\n{flood.END}\nafter\n")
    flood.write_docs(page, result)
    text = page.read_text()
    assert "old" not in text and "| `wrk -c16 -d2s`" in text and text.endswith("after\n")
