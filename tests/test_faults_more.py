"""More faults survived with nothing lost: a SoftHSM token removed mid-pass and mid
``provider rotate``; PostgreSQL stopped immediately under a real ``serve``; the
daemon process's own clock jumping a year (``faketime``).

Each test prints what was injected, what was in flight and how much was lost (zero, asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fixtures_hsm_kms import SoftHsm
from .fixtures_postgres import PostgresCluster
from .helpers import cli_env, run_cli
from .server_proc import serve
from .test_faults_services import durable_pg_url as durable_pg_url
from .test_faults_services import stop_immediately_while

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file stops the server under load: the worker's own cluster, not the shared one."""
    return private_postgres_cluster
ROOT = Path(__file__).parents[1]


def own_softhsm(softhsm: SoftHsm, folder: Path) -> tuple[dict[str, str], Path]:
    """A SoftHSM config with a token folder of its own (the session's one must not vanish)."""
    tokens = folder / "tokens"
    tokens.mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = cli_env(SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "removable", "--pin", softhsm.pin,
                    "--so-pin", "so-pin-x"], check=True, capture_output=True, env=env)
    return env, tokens


def hsm_step(step: str, url: str, settings: dict[str, Any], tokens: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "tests.hsm_fault_child", step, url, json.dumps(settings),
                           str(tokens)], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def put_back(tokens: Path) -> None:
    for folder in tokens.parent.glob("away-*"):
        folder.rename(tokens / folder.name.removeprefix("away-"))


@pytest.mark.parametrize("step", ["reencrypt", "rotate"])
def test_softhsm_token_removed_mid_operation(softhsm: SoftHsm, tmp_path: Path, step: str) -> None:
    """Injected: the token's folder moved away mid-operation (in a child process), then put back."""
    env, tokens = own_softhsm(softhsm, tmp_path)
    settings = softhsm.settings(token_label="removable")
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert hsm_step("setup", url, settings, tokens, env)["rows"] == 90
    hit = hsm_step(step, url, settings, tokens, env)
    assert hit["error"] == "ProviderUnavailableError", hit
    assert "after 3 attempts" in hit["message"] and softhsm.pin not in hit["message"]
    assert hit["half_written"] == 0  # every envelope names the version that sealed it
    put_back(tokens)
    after = hsm_step("check", url, settings, tokens, env)  # a new process: the token is back
    print(f"softhsm token removed mid {step}: {hit['message']!r}; {hit['moved']} of 90 rows on v3 at the fault, "
          f"one batch/DEK in flight; next pass re-encrypted {after['finished']}, rewrapped {after['rewrapped']}; "
          f"{after['lost']} lost")
    assert after["lost"] == 0 and after["half_written"] == 0 and after["audit_ok"]
    assert after["moved"] == 90 and after["finished"] == 90 - hit["moved"]
    assert after["rewrapped"] == 9  # three keyrings, three DEKs each


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
CLOCK_CONFIG = """
[rotation]
strategy = "periodic"
interval = "90d"
[retention]
policy = "minimum-retention"
min_retention = "30d"
keep_versions = 1
[keys]
grace_period = "24h"
"""


def test_daemon_clock_jumps_a_year_forward_and_back(tmp_path: Path, key_file: Path) -> None:
    """Injected: libfaketime shifts the daemon process's own clock +1 year, -1 year, then forward again."""
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime not found: run scripts/ensure-system-deps.sh (Debian package faketime)")
    (tmp_path / "nebula-credential.toml").write_text(CLOCK_CONFIG)
    base = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 's.db'}",
                   NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))

    def cli(*args: str, shift: str | None = None) -> Any:
        env = dict(base, LD_PRELOAD=str(LIBFAKETIME), FAKETIME=shift) if shift else base
        res = run_cli("--json", *args, cwd=tmp_path, env=env)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout) if res.stdout.strip() else None

    def statuses() -> dict[int, str]:
        return {k["version"]: k["status"] for k in cli("keys", "list")["versions"]}

    cli("init")
    for i in range(3):
        cli("put", f"c{i}", "--value", json.dumps({"i": i}))
    cli("backup", "create", str(tmp_path / "b.db"), "--keep", "400d")
    passes = 0
    for _ in range(3):  # +1 year: four rotation intervals missed
        cli("daemon", "--once", shift="+365d")
        passes += 1
    after_jump = statuses()
    assert after_jump == {1: "grace", 2: "active"}, after_jump  # one rotation, nothing destroyed
    for _ in range(2):  # back a year and a day: before everything happened
        cli("daemon", "--once", shift="-366d")
        passes += 1
    assert statuses() == after_jump
    cli("daemon", "--once", shift="+367d")  # forward again: grace ran out
    cli("daemon", "--once", shift="+398d")  # past min_retention, but the backup still needs v1
    passes += 2
    assert statuses() == {1: "revoked", 2: "active"}
    cli("daemon", "--once", shift="+402d")  # the backup expired: retention resumes
    passes += 1
    final = statuses()
    assert final == {1: "destroyed", 2: "active"}, final
    assert all(cli("get", f"c{i}")["value"] == {"i": i} for i in range(3))
    assert cli("audit", "verify")["ok"]
    print(f"daemon clock +365d/-366d/+367d/+398d/+402d over {passes} `daemon --once` passes: "
          f"1 rotation (v1->v2), v1 destroyed only after the backup expired, 0 of 3 credentials lost")


def test_postgres_stopped_immediately_under_serve(durable_pg_url: str, postgres_cluster: PostgresCluster,
                                                  tmp_path: Path) -> None:
    """Injected: ``pg_ctl stop -m immediate`` under 4 HTTP clients writing KV v2 through a real ``serve``."""
    lock = threading.Lock()
    acked: dict[str, dict[str, int]] = {}
    tried: dict[str, dict[str, int]] = {}
    refused: dict[str, int] = {}
    stop, restarted = threading.Event(), threading.Event()
    after = [0]
    with serve(tmp_path, durable_pg_url) as server:
        token = server.token("root")

        def writer(n: int) -> None:
            with server.http(token) as client:
                i = 0
                while not stop.is_set():
                    path, value = f"f/w{n}-{i:05d}", {"n": n, "i": i}
                    i += 1
                    with lock:
                        tried[path] = value
                    try:
                        status = client.post(f"/v1/secret/data/{path}", json={"data": value}).status_code
                    except httpx.HTTPError as exc:
                        status, reason = 0, type(exc).__name__
                    with lock:
                        if 200 <= status < 300:
                            acked[path] = value
                            after[0] += restarted.is_set()
                        else:
                            reason = str(status) if status else reason
                            refused[reason] = refused.get(reason, 0) + 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        before = stop_immediately_while(postgres_cluster, threads, stop, restarted, lambda: len(acked) >= 150,
                                        lambda: after[0] >= 150, lambda: len(acked))
        assert before >= 150 and after[0] >= 150, (before, after[0], refused, server.log()[-2000:])
        with server.http(token) as client:
            listed = client.get("/v1/secret/metadata/f/", params={"list": "true"}).json()["data"]["keys"]
            stored = {f"f/{k}": client.get(f"/v1/secret/data/f/{k}").json()["data"]["data"] for k in listed}
        audit = server.cli("--json", "audit", "verify")
    lost = sorted(p for p, v in acked.items() if stored.get(p) != v)
    unacked_present = sorted(set(stored) - set(acked))
    print(f"pg immediate stop under serve (4 HTTP writers): {len(acked)} acknowledged ({before} before the stop), "
          f"4 in flight at the stop, refused {refused}, {len(unacked_present)} unacknowledged present whole, "
          f"{len(lost)} lost")
    assert lost == []
    assert all(stored[p] == tried[p] for p in unacked_present)  # an unacknowledged write is whole or absent
    assert len(unacked_present) <= sum(refused.values())
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"], audit.stdout + audit.stderr
