"""The benchmark code runs and produces rows (tiny sizes; no timing is asserted).

Needs no ``bench`` extra: our rows and the bare AESGCM rows always run; an
alternative whose library is missing comes back as a skipped row with the
reason, which is what the results page shows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import hotpath, large, profile_hotpath, report, rotation, startup  # noqa: E402

OPTIONAL = {
    "Google Tink AEAD AES256_GCM": "tink",
    "Asherah (memory metastore, static KMS)": "asherah",
    "AWS Encryption SDK (raw AES key)": "aws_encryption_sdk",
    "AWS Encryption SDK (raw AES key, caching CMM)": "aws_encryption_sdk",
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def hot_rows() -> list[hotpath.Row]:
    return hotpath.run(reps=1, target_seconds=0.002, n_max=50)


def test_hotpath_rows_ours_and_bare_always_measured(hot_rows: list[hotpath.Row]) -> None:
    by = {(r.name, r.direction): r for r in hot_rows}
    for name in (
        report.OURS,
        hotpath.BARE,
        "cryptography MultiFernet (2 keys)",
        "nebula-credential vault.put / vault.get (SQLite)",
    ):
        for d in ("encrypt", "decrypt"):
            row = by[(name, d)]
            assert row.ops is not None and row.ops > 0 and row.ratio is not None
    assert by[(hotpath.BARE, "encrypt")].ratio == 1.0


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_hotpath_alternative_measured_or_skipped_with_reason(
    hot_rows: list[hotpath.Row], name: str
) -> None:
    rows = [r for r in hot_rows if r.name == name]
    assert {r.direction for r in rows} == {"encrypt", "decrypt"}
    if not _installed(OPTIONAL[name]):
        assert all(r.ops is None and "not installed" in r.note for r in rows)
        pytest.skip(f"{OPTIONAL[name]} not installed (bench extra): row reported as skipped")
    assert all(r.ops is not None and r.ops > 0 for r in rows)


def test_profile_steps() -> None:
    steps = profile_hotpath.run(n=20, reps=1)
    assert {s.direction for s in steps} == {"encrypt", "decrypt"}
    assert all(s.ns > 0 for s in steps)


def test_rotation_rows_and_large_and_page(tmp_path: Path, hot_rows: list[hotpath.Row]) -> None:
    rot = rotation.run(n=60, reps=1, workdir=tmp_path)
    assert [r.rows for r in rot] == [60] * 6  # the plain-sqlite3 database bound is the sixth
    assert all(r.seconds > 0 for r in rot)
    big = large.run(sizes=(30,), workdir=tmp_path)
    assert big[0].rows == 30 and big[0].peak_rss_mib > 0
    steps = profile_hotpath.run(n=5, reps=1)
    starts = startup.run(runs=1)
    assert all(r.wall_min > 0 and r.cpu_median >= 0 for r in starts)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text(f"old\n{report.KEEP_START}\nby hand\n{report.KEEP_END}\n")
    page = report.write(
        tmp_path / "docs", hot_rows, rot, steps, big, report.machine(), "smoke", 0.1, starts
    )
    text = page.read_text()
    assert "## Rotation" in text and "| 30 |" in text and report.OURS in text
    assert "## Command-line start-up" in text and "by hand" in text and "old" not in text.split("\n")[0]
    if _installed("matplotlib"):
        assert (tmp_path / "docs" / "benchmarks.png").stat().st_size > 1000
    else:
        assert "matplotlib not installed" in text
