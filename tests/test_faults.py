"""Faults survived with nothing lost: a full disk (real tmpfs) and a clock that jumps.

Each test states what was injected, how many operations were in flight
and how many acknowledged ones were lost (the target, asserted, is zero).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import create_sqlite_backup, list_backups
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import BackupError, StoreError
from nebula_credential.models import KeyStatus

from .helpers import FakeClock, cli_env, run_cli

VALUE = "x" * 900  # ~1 KB per credential: a 2 MiB disk fills within a few thousand rows


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for this test (root only; skipped where mounting is not permitted).

    3, not 2: every credential also has a version row (schema v6), and the last pass of the
    re-encryption test rewrites 600 rows through the WAL beside the database.
    """
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with a filler file, then free ``leave`` bytes of it."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: no partial chunk left to flush (and fail) at close
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def readable(url: str, clock: FakeClock | None = None) -> dict[str, object]:
    """Every credential of a store, decrypted by a fresh process-like open (audit checked)."""
    with nc.open(url, clock=clock or FakeClock()) as v:
        assert v.audit.verify().ok
        return {row.id: v.get(row.id) for row in v.list()}


def test_disk_full_during_import(small_disk: Path, tmp_path: Path, key_file: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{small_disk / 's.db'}",
                  NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    for i in range(3):
        assert run_cli("put", f"pre{i}", "--value", json.dumps({"v": i}), cwd=tmp_path, env=env).returncode == 0
    lines = [json.dumps({"id": f"imp{i:05d}", "value": {"v": VALUE, "i": i}}) for i in range(4000)]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    res = run_cli("import", "big.jsonl", "--batch-size", "100", cwd=tmp_path, env=env)
    # injected: ENOSPC on a 2 MiB tmpfs; in flight: one batch of 100 rows
    assert res.returncode == 1, res.stdout
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "full" in res.stderr
    assert "Traceback" not in res.stderr
    got = readable(f"sqlite:///{small_disk / 's.db'}")
    imported = sorted(k for k in got if k.startswith("imp"))
    assert all(got[f"pre{i}"] == {"v": i} for i in range(3))  # committed before the fault: all there
    assert len(imported) % 100 == 0 and 0 < len(imported) < 4000  # whole batches only, nothing half-written
    assert imported == [f"imp{i:05d}" for i in range(len(imported))]
    print(f"disk full during import: {len(imported)} of 4000 imported in whole batches of 100, "
          "1 batch in flight rolled back, 0 committed lost")
    res = run_cli("audit", "verify", cwd=tmp_path, env=env)
    assert res.returncode == 0 and "intact" in res.stdout


def test_disk_full_during_reencryption_then_the_next_pass_finishes(small_disk: Path, key_file: Path,
                                                                   clock: FakeClock) -> None:
    url = f"sqlite:///{small_disk / 's.db'}"
    with nc.open(url, create=True, clock=clock) as v:
        v.put_many(((f"c{i:04d}", {"v": VALUE, "i": i}, "default", None) for i in range(600)), batch_size=200)
        v.keys.rotate()
    filler = fill(small_disk, leave=96 * 1024)
    with nc.open(url, clock=clock) as v:
        with pytest.raises(StoreError, match="full"):
            v.reencrypt(batch_size=20)  # injected: ENOSPC mid-pass; in flight: one batch of 20
        moved = sum(1 for row in v.list() if row.key_version == 2)
        assert 0 <= moved < 600
    got = readable(url, clock)  # the store opens, the audit chain verifies, every row decrypts
    assert got == {f"c{i:04d}": {"v": VALUE, "i": i} for i in range(600)}
    print(f"disk full during re-encryption: {moved} of 600 moved before ENOSPC, 1 batch of 20 in flight, 0 lost")
    filler.unlink()  # space returns: the next pass finishes the job
    with nc.open(url, clock=clock) as v:
        result = v.reencrypt(batch_size=20)
        assert result.ok and result.reencrypted == 600 - moved
        assert {row.key_version for row in v.list()} == {2}
    assert readable(url, clock) == got


def test_disk_full_during_backup(small_disk: Path, tmp_path: Path, key_file: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with nc.open(url, create=True, clock=clock) as v:
        v.put_many(((f"c{i}", {"v": VALUE}, "default", None) for i in range(3000)), batch_size=500)
        with pytest.raises(BackupError, match="full"):
            create_sqlite_backup(v, small_disk / "b.db", keep=timedelta(days=30))
        assert sorted(p.name for p in small_disk.iterdir()) == []  # no partial copy, no manifest
        assert list_backups(v.store) == []  # and no registration left holding keys
        v.put("after", {"v": 1})  # the live store goes on
    got = readable(url, clock)
    assert len(got) == 3001


def test_clock_jumps_a_year_forward_and_back(tmp_path: Path, key_file: Path) -> None:
    """Injected: the clock jumps +1 year, then -1 year, then forward again. No storm, no early destroy."""
    clock = FakeClock()
    cfg = KeyManagementConfig.from_dict({
        "rotation": {"strategy": "periodic", "interval": "90d"},
        "retention": {"policy": "minimum-retention", "min_retention": "30d", "keep_versions": 1},  # v1 may go
        "keys": {"grace_period": "24h"},
    })
    url = f"sqlite:///{tmp_path / 's.db'}"
    start = clock.now
    with nc.open(url, create=True, clock=clock, config=cfg) as v:
        for i in range(10):
            v.put(f"c{i}", {"i": i})
        create_sqlite_backup(v, tmp_path / "b.db", keep=timedelta(days=400))
        clock.advance(days=365)  # +1 year: four intervals missed
        reports = [v.maintain() for _ in range(5)]
        assert [r.rotated for r in reports if r.rotated] == [(1, 2)]  # one rotation, not four
        statuses = {kv.version: kv.status for kv in v.keys.list()}
        assert statuses == {1: KeyStatus.GRACE, 2: KeyStatus.ACTIVE}  # nothing destroyed
        clock.now = start - timedelta(days=1)  # -1 year (and a day): before everything happened
        for _ in range(3):
            r = v.maintain()
            assert r.rotated is None and r.cleanup == []
        assert {kv.version: kv.status for kv in v.keys.list()} == statuses
        clock.now = start + timedelta(days=365 + 2)  # forward again: grace ran out, revoked
        v.maintain()
        assert v.keys.version(1).status is KeyStatus.REVOKED
        clock.advance(days=31)  # past min_retention, but the backup (400d from the start) still needs v1
        r = v.maintain()
        assert r.cleanup == [] and v.keys.version(1).status is KeyStatus.REVOKED
        clock.now = start + timedelta(days=401)  # the backup expired: retention resumes
        r = v.maintain()
        assert [a.version for a in r.cleanup] == [1]
        assert sum(1 for kv in v.keys.list() if kv.status is KeyStatus.ACTIVE) == 1
        assert len(v.keys.list()) == 2  # no rotation storm across all the jumps
        assert all(v.get(f"c{i}") == {"i": i} for i in range(10))
        assert v.audit.verify().ok
