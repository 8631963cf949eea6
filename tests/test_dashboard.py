"""deploy/grafana-dashboard.json and deploy/prometheus-rules.yml name only metrics we export.

The exported set is collected from a real ``MetricsExporter`` over a real
SQLite store, plus ``metrics.SERVER_METRICS`` (the HTTP server's, declared once).
Every selector in every query must name one of their series, with labels the
metric has; the dashboard's queries must also parse as PromQL (promtool).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import nebula_credential as nc
from nebula_credential.metrics import SERVER_METRICS, MetricsExporter, MetricSpec, exported_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
RULES = ROOT / "deploy" / "prometheus-rules.yml"

_GRAFANA_VARS = {"$__range": "1h", "$__rate_interval": "5m", "$__interval": "1m", "$keyring": ".*"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan", "e"}
_IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MetricSpec]:
    """Series name -> metric, as a daemon and a server over a real store export them."""
    folder = tmp_path_factory.mktemp("metrics")
    vault = nc.open(f"sqlite:///{folder / 'm.db'}", create=True)
    try:
        specs = exported_metrics(MetricsExporter(vault))
    finally:
        vault.close()
    return {series: m for m in specs for series in m.series()}


def substitute(expr: str) -> str:
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """``(metric name, label names in its matchers)`` for each vector selector of a PromQL expression."""
    label_values = re.fullmatch(rf"\s*label_values\(\s*({_IDENT})\s*,\s*({_IDENT})\s*\)\s*", expr)
    if label_values:
        yield label_values.group(1), {label_values.group(2)}
        return
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', substitute(expr))
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(rf"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(\s*{_IDENT}?(?:\s*,\s*{_IDENT})*\s*\)",
                  " ", text)
    for m in re.finditer(rf"({_IDENT})\s*(\{{[^}}]*\}})?\s*(\()?", text):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or name in _KEYWORDS:
            continue
        labels = set(re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", matchers or ""))
        yield name, labels


def grouping_labels(expr: str) -> set[str]:
    found: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found |= {g.strip() for g in group.split(",") if g.strip()}
    return found


def problems(expr: str, exported: dict[str, MetricSpec]) -> list[str]:
    out = []
    metric_labels: set[str] = {"le"}
    names = list(selectors(expr))
    if not names:
        out.append(f"no metric in {expr!r}")
    for name, labels in names:
        spec = exported.get(name)
        if spec is None:
            out.append(f"{name} is not exported by the daemon or the server")
            continue
        allowed = set(spec.labels) | ({"le"} if name.endswith("_bucket") else set())
        metric_labels |= set(spec.labels)
        if labels - allowed:
            out.append(f"{name} has no label(s) {sorted(labels - allowed)} (it has {sorted(spec.labels)})")
    missing = grouping_labels(expr) - metric_labels
    if names and missing:
        out.append(f"grouping by label(s) {sorted(missing)} that no metric of {expr!r} has")
    return out


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def dashboard_exprs(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(data["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in data.get("annotations", {}).get("list", []) if "expr" in a]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_every_dashboard_query_names_exported_metrics_and_labels(exported: dict[str, MetricSpec]) -> None:
    exprs = dashboard_exprs(dashboard())
    assert len(exprs) >= 15
    bad = {e: p for e in exprs if (p := problems(e, exported))}
    assert not bad, json.dumps(bad, indent=2)


def test_every_alert_rule_names_exported_metrics_and_labels(exported: dict[str, MetricSpec]) -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 5
    bad = {e: p for e in exprs if (p := problems(e, exported))}
    assert not bad, json.dumps(bad, indent=2)


def test_the_checker_catches_a_wrong_name_a_wrong_label_and_a_wrong_grouping(
    exported: dict[str, MetricSpec],
) -> None:
    assert problems("nebula_credential_current_key_age_days > 80", exported) == []
    assert problems("nebula_credentail_current_key_age_days > 80", exported)  # typo
    assert problems("rate(nebula_credential_key_requests[5m])", exported)  # counter without _total
    assert problems('nebula_credential_reencryption_progress{scope="production"}', exported)
    assert problems("sum by (route) (nebula_credential_key_versions)", exported)
    assert problems("label_values(nebula_credential_active_versions, tenant)", exported)
    assert not problems('sum by (le) (rate(nebula_credential_http_request_duration_seconds_bucket'
                        '{route="/v1/secret"}[5m]))', exported)


def test_dashboard_covers_what_operators_asked_for() -> None:
    text = "\n".join(dashboard_exprs(dashboard()))
    for name in (
        "nebula_credential_current_key_age_days",  # key age vs limit
        "nebula_credential_key_versions",  # versions by status
        "nebula_credential_reencryption_progress",
        "nebula_credential_rotation_events_total",
        "nebula_credential_key_request_errors_total",  # error ratio
        "nebula_credential_audit_head_seq",
        "nebula_credential_http_requests_total",
        "nebula_credential_http_request_duration_seconds_bucket",
    ):
        assert name in text, f"no panel queries {name}"
    assert {m.name for m in SERVER_METRICS} == {
        "nebula_credential_http_requests_total",
        "nebula_credential_http_request_duration_seconds",
    }


def test_dashboard_is_importable_grafana_json() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and data["schemaVersion"] >= 36
    panels = list(all_panels(data["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and p["description"], p["title"]
    names = [v["name"] for v in data["templating"]["list"]]
    assert names == ["datasource", "keyring"]


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every query (as recording rules), so a typo in PromQL syntax fails here."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/ensure-system-deps.sh installs Debian's prometheus package"
    exprs = [e for e in dashboard_exprs(dashboard()) if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(e)} for i, e in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(exprs)} rules found" in res.stdout


def test_versions_by_status_and_the_age_limit_carry_the_stores_values(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    vault = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True)
    try:
        vault.keys.rotate()
        vault.keys.rotate()
        vault.keys.revoke(1)
        body, _ = MetricsExporter(vault).render()
    finally:
        vault.close()
    samples = {
        (s.name, s.labels.get("status")): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.labels.get("keyring") == "default"
    }
    statuses = {st: samples[("nebula_credential_key_versions", st)]
                for st in ("active", "valid", "grace", "revoked", "destroyed")}
    assert statuses == {"active": 1, "valid": 1, "grace": 0, "revoked": 1, "destroyed": 0}
    assert samples[("nebula_credential_max_key_age_days", None)] == 90
