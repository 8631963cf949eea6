"""The ``reencrypt`` command as a real process on SQLite: progress, failures, signals, SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nebula_credential as nc

from .helpers import cli_env, run_cli

SCOPES = ("development", "other", "production", "user")


@pytest.fixture
def db(tmp_path: Path, key_file: Path) -> Iterator[tuple[str, nc.Vault]]:
    """An initialised SQLite store; the CLI finds master.key beside it, as a user's would."""
    url = f"sqlite:///{tmp_path / 'creds.db'}"
    vault = nc.open(url, create=True)
    try:
        yield url, vault
    finally:
        vault.close()


def _fill(vault: nc.Vault, n: int) -> dict[str, object]:
    values: dict[str, object] = {f"c{i:05d}": {"i": i, "pad": "y" * 200} for i in range(n)}
    vault.put_many(
        (cid, v, SCOPES[i % len(SCOPES)], None) for i, (cid, v) in enumerate(values.items())
    )
    return values


def _cli(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("--db", url, *args, cwd=cwd)


def _popen(url: str, *args: str, cwd: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nebula_credential", "--db", url, "reencrypt", *args],
        cwd=cwd, env=cli_env(), text=True, **kw,  # type: ignore[call-overload]
    )


def test_plain_progress_lines_and_json_summary(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    _fill(vault, 300)
    vault.keys.rotate()
    proc = _cli(url, "--json", "reencrypt", "--batch-size", "50", "--progress-interval", "0",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["reencrypted"], summary["total"], summary["failed"]) == (300, 300, 0)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("reencrypt: ")]
    assert lines[0].startswith("reencrypt: 50/300 (16.7%)") and "scope production" in lines[0]
    assert "rows/s" in lines[0] and "eta" in lines[0]
    assert lines[-1].startswith("reencrypt: 300/300 (100.0%)")
    scopes = [ln.split(" scope ")[1].split()[0] for ln in lines if " scope " in ln]
    assert list(dict.fromkeys(scopes)) == ["production", "user", "development", "other"]
    status = json.loads(_cli(url, "--json", "status", cwd=tmp_path).stdout)
    assert status["reencryption"] == {"pending": 0, "total": 300, "progress": 1.0}


def test_failures_are_listed_and_exit_non_zero(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    values = _fill(vault, 40)
    vault.keys.rotate()
    with vault.store.transaction() as tx:
        row = tx.get_credential("default", "c00005")
        assert row is not None
        tx.cas_update_envelopes("default", [(row.id, row.revision, 1, row.envelope[:-1] + bytes([row.envelope[-1] ^ 1]))])
    proc = _cli(url, "reencrypt", "--priority", "other,user", cwd=tmp_path)
    assert proc.returncode == 1
    assert "re-encrypted 39 of 40" in proc.stdout.replace("\n", " ")
    assert "failed: c00005 (v1): DecryptionError" in proc.stderr
    assert "error: 1 credential(s) could not be re-encrypted" in proc.stderr
    assert proc.stderr.count("Traceback") == 0
    for cid, value in values.items():
        if cid != "c00005":
            assert vault.get(cid) == value


def test_workers_refused_on_sqlite(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    _fill(vault, 5)
    vault.keys.rotate()
    proc = _cli(url, "reencrypt", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: reencryption.workers: 2 workers need a store with")
    assert vault.pending()[1] == 5  # refused before touching anything


def test_rich_bar_on_a_terminal(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    _fill(vault, 200)
    vault.keys.rotate()
    master, slave = pty.openpty()
    proc = _popen(url, "--batch-size", "20", cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(30)
    os.close(master)
    assert proc.returncode == 0
    text = out.decode(errors="replace")
    assert "re-encrypting" in text and "200/200" in text and "rows/s" in text
    assert "production" in text and "development" in text


def test_sigterm_stops_after_the_batch_and_a_rerun_resumes(
    db: tuple[str, nc.Vault], tmp_path: Path
) -> None:
    url, vault = db
    values = _fill(vault, 400)
    vault.keys.rotate()
    proc = _popen(url, "--batch-size", "20", "--rate-limit", "400", "--progress-interval", "0",
                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("reencrypt: ")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "run it again to resume" in err
    left = vault.pending()[1]
    assert 0 < left < 400
    again = _cli(url, "--json", "reencrypt", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout)["reencrypted"] == left
    assert {r.revision for r in vault.list()} == {2}
    for cid, value in values.items():
        assert vault.get(cid) == value


# ---- SIGKILL at random moments, with application traffic -------------------------
def _kill_loop(tmp_path: Path, url: str, vault: nc.Vault, *, rows: int, kills: int,
               seed: int) -> None:
    rng = random.Random(seed)
    _fill(vault, rows)
    ids = sorted(f"c{i:05d}" for i in range(rows))
    app = nc.open(url, provider=vault.provider)  # the application's own connections
    last: dict[str, object] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    counter = itertools.count(1)

    def writer() -> None:
        wrng = random.Random(seed + 1)
        try:
            while not stop.is_set():
                cid = wrng.choice(ids)
                with lock:
                    value = {"w": next(counter)}
                    app.put(cid, value, scope=SCOPES[int(cid[1:]) % len(SCOPES)])
                    last[cid] = value
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        rrng = random.Random(seed + 2)
        try:
            while not stop.is_set():
                cid = rrng.choice(ids)
                with lock:
                    floor = last.get(cid)
                got = app.get(cid)
                if floor is not None:
                    assert got["w"] >= floor["w"], (cid, got, floor)  # type: ignore[index]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    killed_mid_pass = 0
    try:
        for _ in range(kills):
            if rng.random() < 0.5:
                vault.keys.rotate()  # sometimes a new version, sometimes resume the old pass
            proc = _popen(url, "--batch-size", str(rng.choice((25, 100, 250))),
                          "--rate-limit", "8000", "--progress-interval", "0",
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stderr is not None
            first = proc.stderr.readline()  # the pass is running once a batch committed
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc.stderr.close()
            mid = first.startswith("reencrypt: ") and proc.returncode == -signal.SIGKILL
            killed_mid_pass += mid
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        app.store.close()
    # traffic stopped first: the app's key cache may still name an older active
    # version for up to keys.refresh_interval, and its writes then land under it
    final = _cli(url, "--json", "reencrypt", cwd=tmp_path)
    assert not errors, errors[:3]
    assert killed_mid_pass >= kills // 2, "the kills did not land inside passes"
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["failed"] == 0
    active = vault.keys.active_version().version
    assert vault.keys.credential_counts() == {active: rows}
    for cid in ids:
        expected = last.get(cid, {"i": int(cid[1:]), "pad": "y" * 200})
        assert vault.get(cid) == expected, cid  # exactly the last written value
    assert vault.audit.verify().ok


def test_sigkill_loop(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    _kill_loop(tmp_path, url, vault, rows=3000, kills=7, seed=7)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEBULA_SOAK") != "1", reason="soak: NEBULA_SOAK=1 (make soak)")
def test_sigkill_soak(db: tuple[str, nc.Vault], tmp_path: Path) -> None:
    url, vault = db
    _kill_loop(tmp_path, url, vault, rows=30_000, kills=60, seed=int(time.time()))


@pytest.mark.services
def test_workers_on_postgresql(
    postgres_store_url_factory: Callable[[], str], key_file: Path, tmp_path: Path
) -> None:
    """``--workers 3`` over SKIP LOCKED: every row moved exactly once, priority kept."""
    url = postgres_store_url_factory()
    with nc.open(url, create=True) as vault:
        values = _fill(vault, 600)
        vault.keys.rotate()
        env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))
        proc = run_cli("--db", url, "--json", "reencrypt", "--workers", "3", "--batch-size", "20",
                       "--progress-interval", "0", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert (summary["workers"], summary["reencrypted"], summary["conflicts"]) == (3, 600, 0)
        scopes = [ln.split(" scope ")[1].split()[0] for ln in proc.stderr.splitlines()
                  if " scope " in ln]
        assert list(dict.fromkeys(scopes)) == ["production", "user", "development", "other"]
        assert {r.revision for r in vault.list()} == {2}  # none twice, none skipped
        assert vault.keys.credential_counts() == {2: 600}
        for cid, value in values.items():
            assert vault.get(cid) == value
