"""The database engine's alert rules (promtool unit tests) and the metrics they read, from the store."""

from __future__ import annotations

from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine
from nebula_credential.metrics import render

from .test_metrics_alerts import promtool_rule_test


def _alert(name: str, series: str, values: str, quiet_at: str, fires_at: str, labels: dict[str, str],
           annotations: dict[str, str]) -> dict[str, object]:
    return {
        "interval": "1m",
        "input_series": [{"series": series, "values": values}],
        "alert_rule_test": [
            {"eval_time": quiet_at, "alertname": name, "exp_alerts": []},
            {"eval_time": fires_at, "alertname": name, "exp_alerts": [{"exp_labels": labels,
                                                                        "exp_annotations": annotations}]},
        ],
    }


def test_rotation_failing_alert(tmp_path: Path) -> None:
    promtool_rule_test(tmp_path, "1m", [_alert(
        "NebulaCredentialDatabaseRotationFailing",
        'nebula_credential_database_rotations_failing{instance="d",mount="database"}', "0 0 1+0x10", "6m", "8m",
        {"severity": "warning", "instance": "d", "mount": "database"},
        {"summary": "1 static role(s) of mount database failing to rotate",
         "description": "Check PostgreSQL and the connection's root credential: nebula-credential db static-role "
                        "list --json"})])


def test_rotation_overdue_alert(tmp_path: Path) -> None:
    promtool_rule_test(tmp_path, "1m", [_alert(
        "NebulaCredentialDatabaseRotationOverdue",
        'nebula_credential_database_rotations_overdue{instance="d",mount="db"}', "0 2+0x20", "10m", "12m",
        {"severity": "critical", "instance": "d", "mount": "db"},
        {"summary": "2 static role(s) of mount db overdue for rotation",
         "description": "Is a daemon or serve --maintain running? Rotate by hand: nebula-credential db rotate ROLE"})])


def test_lease_revocation_failing_alert(tmp_path: Path) -> None:
    promtool_rule_test(tmp_path, "1m", [_alert(
        "NebulaCredentialLeaseRevocationFailing",
        'nebula_credential_lease_revocations_failing{instance="d"}', "0 3+0x20", "10m", "12m",
        {"severity": "critical", "instance": "d"},
        {"summary": "3 lease revocation(s) keep failing",
         "description": "Database users outlive their leases; check PostgreSQL and the connection "
                        "(sys/leases/lookup)"})])


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


def test_metrics_expose_database_health(vault: nc.Vault) -> None:
    pytest.importorskip("prometheus_client")
    engine = DatabaseEngine(vault, "database")
    engine._register()
    text = render(vault)[0].decode()
    assert 'nebula_credential_database_rotations_overdue{mount="database"} 0.0' in text
    assert "nebula_credential_leases_active 0.0" in text
    assert "nebula_credential_lease_revocations_failing 0.0" in text
