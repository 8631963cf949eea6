"""maintain and daemon as operators run them: separate processes, real time, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .helpers import cli_env, free_port, run_cli

# Time moves by shifting each process's own clock (libfaketime), not by sleeping: a loaded machine
# cannot make a second process start "too late" and see another interval run out.
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
HOURLY = '[rotation]\nstrategy = "periodic"\ninterval = "1h"\n[keys]\ngrace_period = "1h"\n'


def _at(env: dict[str, str], shift: str) -> dict[str, str]:
    """``env`` for a process whose clock runs ``shift`` ahead (libfaketime's FAKETIME syntax)."""
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime not found: run scripts/ensure-system-deps.sh (Debian package faketime)")
    return dict(env, LD_PRELOAD=str(LIBFAKETIME), FAKETIME=shift)


def _setup(tmp_path: Path, config: str) -> dict[str, str]:
    (tmp_path / "c.toml").write_text(config)
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}", NEBULA_CREDENTIAL_CONFIG=str(tmp_path / "c.toml"))
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    return env


def _versions(tmp_path: Path, env: dict[str, str]) -> dict[int, str]:
    out = json.loads(run_cli("--json", "keys", "list", cwd=tmp_path, env=env).stdout)
    return {v["version"]: v["status"] for v in out["versions"]}


def test_real_time_scenario_rotates_then_carries_old_version_to_revoked(tmp_path: Path) -> None:
    env = _setup(tmp_path, HOURLY)
    assert run_cli("put", "a", "--value", '{"k": 1}', cwd=tmp_path, env=env).returncode == 0
    first = json.loads(run_cli("--json", "maintain", cwd=tmp_path, env=_at(env, "+90m")).stdout)
    assert first["rotated"] == {"old_version": 1, "new_version": 2}
    assert _versions(tmp_path, env)[1] == "grace"
    run_cli("maintain", cwd=tmp_path, env=_at(env, "+180m"))
    assert _versions(tmp_path, env)[1] == "revoked"
    assert json.loads(run_cli("--json", "get", "a", cwd=tmp_path, env=env).stdout)["value"] == {"k": 1}


def test_two_maintain_processes_rotate_exactly_once(tmp_path: Path) -> None:
    env = _setup(tmp_path, '[rotation]\nstrategy = "periodic"\ninterval = "1h"\n')
    run_cli("import", "-", cwd=tmp_path, env=env,
            input="".join(json.dumps({"id": f"c{i}", "value": i}) + "\n" for i in range(500)))
    later = _at(env, "+90m")  # both processes see the interval run out once, however late either starts
    cmd = [sys.executable, "-m", "nebula_credential", "--json", "maintain"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=later, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    rotated = [json.loads(o)["rotated"] for o, _ in outs]
    assert sum(r is not None for r in rotated) == 1, rotated
    versions = _versions(tmp_path, env)
    assert list(versions.values()).count("active") == 1 and max(versions) == 2
    listing = json.loads(run_cli("--json", "list", "--key-version", "2", cwd=tmp_path, env=env).stdout)
    assert len(listing["credentials"]) == 500


def test_daemon_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = _setup(tmp_path, '[rotation]\nstrategy = "manual"\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nebula_credential", "daemon", "--interval", "1s", "--metrics-addr", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = json.loads(resp.read())
                    if body["passes"] >= 1:
                        break
            except OSError:
                time.sleep(0.1)
        assert body is not None and body["status"] == "ok" and body["passes"] >= 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "daemon stopped" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cleanup_dry_run_names_each_kept_version_with_its_reason_and_date(tmp_path: Path) -> None:
    env = _setup(tmp_path, '[retention]\npolicy = "minimum-retention"\nmin_retention = "7d"\nkeep_versions = 1\n'
                           '[keys]\nrefresh_interval = "1h"\n')
    for args in (("put", "a", "--value", '{"k": 1}'), ("keys", "rotate"), ("reencrypt",), ("keys", "revoke", "1")):
        assert run_cli(*args, cwd=tmp_path, env=env).returncode == 0, args
    out = json.loads(run_cli("--json", "keys", "cleanup", "--dry-run", cwd=tmp_path, env=env).stdout)
    assert out["would_destroy"] == []
    by_version: dict[int, list[dict[str, str]]] = {}
    for k in out["kept"]:
        by_version.setdefault(k["version"], []).append(k)
    assert [k["reason"].split(":")[0] for k in by_version[2]] == ["active"]
    v1 = {k["reason"].split(" ")[1]: k for k in by_version[1]}  # "destroy floor ...", "retention minimum ..."
    assert set(v1) == {"floor", "minimum"}, by_version[1]
    floor, minimum = (datetime.fromisoformat(v1[k]["until"]) for k in ("floor", "minimum"))
    assert minimum - floor == timedelta(days=7) - timedelta(hours=2)  # both counted from the revocation
    assert timedelta(0) < floor - datetime.now(UTC) <= timedelta(hours=2)
    human = run_cli("keys", "cleanup", "--dry-run", cwd=tmp_path, env=env).stdout
    assert "v1 kept: retention minimum 7d from revocation until " in human, human
    assert "v1 kept: destroy floor 2h from revocation" in human and "v2 kept: active" in human


def test_without_auto_rotation_maintain_stops_at_the_usage_bound_and_alerts_instead_of_rotating(
        tmp_path: Path) -> None:
    env = _setup(tmp_path, '[keys]\nauto_rotation = false\n[rotation]\nmax_encryptions = 2\n')
    # a process reserves its encryptions in blocks: the first put takes both
    assert run_cli("put", "c0", "--value", '{"k": 1}', cwd=tmp_path, env=env).returncode == 0
    refused = run_cli("put", "c9", "--value", '{"k": 1}', cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "reached max_encryptions (2) and auto_rotation is off" in refused.stderr
    res = run_cli("--json", "maintain", cwd=tmp_path, env=env)
    assert res.returncode == 1 and res.stderr == refused.stderr, res.stderr  # the same typed error as `put`
    report = json.loads(res.stdout)
    assert report["rotated"] is None and "auto_rotation is off" in report["usage_bound"]
    assert _versions(tmp_path, env) == {1: "active"}  # no automatic rotation
    alerts = json.loads(run_cli("--json", "status", cwd=tmp_path, env=env).stdout)["alerts"]
    assert [a["name"] for a in alerts] == ["KeyUsageBound"] and alerts[0]["severity"] == "critical"
    once = run_cli("daemon", "--once", "--metrics-addr", f"127.0.0.1:{free_port()}", cwd=tmp_path, env=env)
    assert "reached max_encryptions (2) and auto_rotation is off" in once.stderr, once.stderr
    assert _versions(tmp_path, env) == {1: "active"}
    assert run_cli("keys", "rotate", cwd=tmp_path, env=env).returncode == 0  # the operator's rotation clears it
    assert json.loads(run_cli("--json", "status", cwd=tmp_path, env=env).stdout)["alerts"] == []
