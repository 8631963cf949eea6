"""Metrics read from the store at scrape time; the seed's alert rules fire exactly past their thresholds."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.alerts import evaluate
from nebula_credential.config import AlertsConfig
from nebula_credential.metrics import KeyMetrics, MetricsExporter, snapshot

from .helpers import FakeClock, cli_env, free_port, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in metrics")


def test_metrics_reflect_rotation_and_reencryption(vault: nc.Vault, clock: FakeClock) -> None:
    exporter = MetricsExporter(vault)
    exporter.attach(vault)
    for i in range(10):
        vault.put(f"c{i}", {"i": i})
    vault.get("c1")
    clock.advance(days=3)
    vault.keys.rotate()
    text = exporter.render()[0].decode()
    assert _value(text, "nebula_credential_active_versions", keyring="default") == 2
    assert _value(text, "nebula_credential_rotation_events_total", keyring="default") == 1
    assert _value(text, "nebula_credential_reencryption_progress", keyring="default") == 0.0
    assert _value(text, "nebula_credential_credentials_per_version", keyring="default", version="1") == 10
    assert _value(text, "nebula_credential_current_key_age_days", keyring="default") == 0.0
    assert _value(text, "nebula_credential_key_requests_total", keyring="default", operation="encrypt") == 10
    assert _value(text, "nebula_credential_operation_seconds_count", keyring="default", operation="decrypt") == 1
    vault.reencrypt()
    text = exporter.render()[0].decode()
    assert _value(text, "nebula_credential_reencryption_progress", keyring="default") == 1.0
    assert _value(text, "nebula_credential_credentials_per_version", keyring="default", version="2") == 10
    assert "nebula_credential_provider_call_seconds_bucket" in text


def test_backup_metrics_follow_registrations_and_holds(vault: nc.Vault, clock: FakeClock) -> None:
    from nebula_credential.backups import register_backup

    exporter = MetricsExporter(vault)
    text = exporter.render()[0].decode()
    assert _value(text, "nebula_credential_backup_last_taken_timestamp_seconds") == 0  # none: the rule stays quiet
    assert _value(text, "nebula_credential_backups_unexpired") == 0
    vault.put("a", {"n": 1})
    clock.advance(days=1)
    taken = clock()
    register_backup(vault, "nightly", taken_at=taken, keep=timedelta(days=30))
    vault.keys.rotate()
    vault.reencrypt()
    vault.keys.revoke(1)  # unreferenced now, but the backup still needs version 1
    text = exporter.render()[0].decode()
    assert _value(text, "nebula_credential_backup_last_taken_timestamp_seconds") == taken.timestamp()
    assert _value(text, "nebula_credential_backups_unexpired") == 1
    assert _value(text, "nebula_credential_backup_held_versions", keyring="default") == 1
    clock.advance(days=31)
    text = exporter.render()[0].decode()
    assert _value(text, "nebula_credential_backups_unexpired") == 0
    assert _value(text, "nebula_credential_backup_held_versions", keyring="default") == 0


def _m(**kw: object) -> KeyMetrics:
    base: dict[str, object] = dict(keyring="k", active_version=3, active_versions=2, total_versions=3,
                                   rotation_events=2, current_key_age_days=1.0, credentials_per_version={},
                                   pending_reencryption=0, total_credentials=100)
    base.update(kw)
    return KeyMetrics(**base)  # type: ignore[arg-type]


def _names(m: KeyMetrics, **kw: int) -> set[str]:
    return {a.name for a in evaluate(m, AlertsConfig(), **kw)}


EPS = 1e-6


def test_key_age_alerts_fire_past_80_and_100_days() -> None:
    assert _names(_m(current_key_age_days=80.0)) == set()
    assert _names(_m(current_key_age_days=80.0 + EPS)) == {"KeyTooOld"}
    assert _names(_m(current_key_age_days=100.0)) == {"KeyTooOld"}
    assert _names(_m(current_key_age_days=100.0 + EPS)) == {"KeyTooOld", "NoRecentRotation"}


def test_reencryption_stalled_after_7_days_below_half() -> None:
    stuck = dict(total_credentials=100, pending_reencryption=51)
    assert "ReencryptionStalled" not in _names(_m(current_key_age_days=7.0, **stuck))
    assert "ReencryptionStalled" in _names(_m(current_key_age_days=7.0 + EPS, **stuck))
    assert "ReencryptionStalled" not in _names(_m(current_key_age_days=8, total_credentials=100, pending_reencryption=50))


def test_more_than_five_live_versions() -> None:
    assert _names(_m(active_versions=5)) == set()
    assert _names(_m(active_versions=6)) == {"TooManyLiveVersions"}


def test_access_error_ratio_above_one_percent() -> None:
    assert _names(_m(), errors=1, requests=100) == set()
    assert _names(_m(), errors=2, requests=199) == {"KeyAccessErrors"}
    assert _names(_m(), errors=0, requests=0) == set()


def test_thresholds_are_configurable() -> None:
    cfg = nc.KeyManagementConfig.from_dict({"alerts": {"key_age_days": 10, "max_live_versions": 2}}).alerts
    assert {a.name for a in evaluate(_m(current_key_age_days=11, active_versions=3), cfg)} == {
        "KeyTooOld", "TooManyLiveVersions"}


def test_status_evaluates_alerts_from_the_store(vault: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"x": 1})
    assert vault.status()["alerts"] == []
    clock.advance(days=81)
    alerts = vault.status()["alerts"]
    assert [a["name"] for a in alerts] == ["KeyTooOld"] and set(alerts[0]) == {"name", "severity", "message"}
    vault.keys.rotate()
    clock.advance(days=8)
    assert [a["name"] for a in vault.status()["alerts"]] == ["ReencryptionStalled"]
    vault.reencrypt()
    assert vault.status()["alerts"] == []


def test_snapshot_counts_access_errors_from_audit(vault: nc.Vault) -> None:
    vault.put("a", {"x": 1})
    vault.keys.rotate()
    vault.keys.revoke(1)
    with pytest.raises(nc.KeyRevokedError):
        vault.get("a")
    assert snapshot(vault).key_access_errors == 1


def test_prometheus_rules_file_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/ensure-system-deps.sh installs Debian's prometheus package"
    res = subprocess.run([promtool, "check", "rules", str(ROOT / "deploy" / "prometheus-rules.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # NebulaCredentialRowsRejected and KeyUsageBound joined the seven; then the database engine's three
    assert "12 rules found" in res.stdout


def promtool_rule_test(tmp_path: Path, evaluation_interval: str, tests: list[dict[str, object]]) -> None:
    """Run promtool's rule unit tests ``tests`` against the shipped rules file."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/ensure-system-deps.sh installs Debian's prometheus package"
    spec = tmp_path / "rules_test.yml"
    spec.write_text(json.dumps({"rule_files": [str(ROOT / "deploy" / "prometheus-rules.yml")],
                                "evaluation_interval": evaluation_interval, "tests": tests}))
    res = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_audit_head_alert_fires_when_the_chain_goes_back(tmp_path: Path) -> None:
    """promtool's rule unit test: a head that drops below its highest value alerts at once."""
    promtool_rule_test(tmp_path, "1m", [{
        "interval": "1m",
        "input_series": [{"series": 'nebula_credential_audit_head_seq{instance="d"}',
                          "values": "10 11 12 12 5 5"}],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "NebulaCredentialAuditHeadWentBack", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "NebulaCredentialAuditHeadWentBack", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "instance": "d"},
                "exp_annotations": {
                    "summary": "The audit chain's head went back to event 5",
                    "description": "Someone deleted or rolled back audit events; run nebula-credential "
                                   "audit verify --against your exported copy",
                },
            }]},
        ],
    }])


def test_backups_stopped_alert_fires_two_days_after_the_newest_backup(tmp_path: Path) -> None:
    """promtool: quiet for a store that never registered a backup; fires an hour past two days."""
    day = 86400
    promtool_rule_test(tmp_path, "1h", [{
        "interval": "1h",
        "input_series": [
            # no backup ever registered: the metric reads 0, and the rule stays quiet
            {"series": 'nebula_credential_backup_last_taken_timestamp_seconds{instance="b"}',
             "values": "0+0x80"},
            {"series": 'nebula_credential_backup_last_taken_timestamp_seconds{instance="never"}',
             "values": "0+0x80"},
        ],
        "alert_rule_test": [
            {"eval_time": "49h", "alertname": "NebulaCredentialBackupsStopped", "exp_alerts": []},
            {"eval_time": "50h", "alertname": "NebulaCredentialBackupsStopped", "exp_alerts": []},
        ],
    }, {
        "interval": "1h",
        "input_series": [
            {"series": 'nebula_credential_backup_last_taken_timestamp_seconds{instance="b"}',
             "values": f"{day} {day}+0x80"},
        ],
        "alert_rule_test": [
            {"eval_time": "72h", "alertname": "NebulaCredentialBackupsStopped", "exp_alerts": []},
            {"eval_time": "74h", "alertname": "NebulaCredentialBackupsStopped", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "b"},
                "exp_annotations": {
                    "summary": "No backup registered for 2d 2h 0m 0s",
                    "description": "The newest registered backup is older than two days; check the backup "
                                   "job (nebula-credential backup list)",
                },
            }]},
        ],
    }])


def test_usage_bound_alert_fires_at_max_encryptions_per_keyring(tmp_path: Path) -> None:
    """promtool: quiet below the bound, fires at it (where auto_rotation = false stops writes)."""
    annotations = {
        "summary": "Active key of keyring default reached max_encryptions",
        "description": "New writes fail (auto_rotation = false): nebula-credential --keyring default keys rotate",
    }
    promtool_rule_test(tmp_path, "1m", [{
        "interval": "1m",
        "input_series": [
            {"series": 'nebula_credential_active_key_encryptions{instance="d",keyring="default"}',
             "values": "98 99 100 100"},
            {"series": 'nebula_credential_max_encryptions{instance="d",keyring="default"}', "values": "100+0x3"},
            {"series": 'nebula_credential_active_key_encryptions{instance="d",keyring="other"}', "values": "1+0x3"},
            {"series": 'nebula_credential_max_encryptions{instance="d",keyring="other"}', "values": "100+0x3"},
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "NebulaCredentialKeyUsageBound", "exp_alerts": []},
            {"eval_time": "2m", "alertname": "NebulaCredentialKeyUsageBound", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "instance": "d", "keyring": "default"},
                "exp_annotations": annotations,
            }]},
        ],
    }])


def test_daemon_serves_metrics_with_correct_values(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    (tmp_path / "c.toml").write_text('[rotation]\nstrategy = "manual"\n')
    env["NEBULA_CREDENTIAL_CONFIG"] = str(tmp_path / "c.toml")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    run_cli("import", "-", cwd=tmp_path, env=env, input="".join(json.dumps({"id": f"c{i}", "value": i}) + "\n" for i in range(40)))
    assert run_cli("keys", "rotate", cwd=tmp_path, env=env).returncode == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nebula_credential", "daemon", "--interval", "1h",
                             "--metrics-addr", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if json.loads(r.read())["passes"] >= 1:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        # the daemon's first pass re-encrypted everything onto v2
        assert _value(text, "nebula_credential_reencryption_progress", keyring="default") == 1.0
        assert _value(text, "nebula_credential_credentials_per_version", keyring="default", version="2") == 40
        assert _value(text, "nebula_credential_rotation_events_total", keyring="default") == 1
        assert _value(text, "nebula_credential_active_versions", keyring="default") in (1, 2)
        head = _value(text, "nebula_credential_audit_head_seq")
        with sqlite3.connect(tmp_path / "c.db") as conn:
            assert head == conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
        run_cli("keys", "rotate", cwd=tmp_path, env=env)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert _value(text, "nebula_credential_audit_head_seq") > head
        assert _value(text, "nebula_credential_rotation_events_total", keyring="default") == 2
        assert _value(text, "nebula_credential_reencryption_progress", keyring="default") == 0.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_status_cli_json_has_alerts(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    run_cli("init", cwd=tmp_path, env=env)
    data = json.loads(run_cli("--json", "status", cwd=tmp_path, env=env).stdout)
    assert data["alerts"] == [] and data["active_version"] == 1
    assert set(data["reencryption"]) == {"pending", "total", "progress"}
    assert timedelta(0) == timedelta(0)
