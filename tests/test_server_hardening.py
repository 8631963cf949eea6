"""Server hardening (issue 28): what an outside client could turn against the server.

Each test failed on the code before: ``/metrics`` labels taken from the
client (unbounded series), tokens kept in the audit trail when followed by
``;`` or embedded in a segment, 500s for deep JSON and huge integers,
NaN accepted on write, unauthenticated 404s audited in full without bound,
no free-space floor.  The tests that need a real ``serve`` (chunked framing,
``Expect: 100-continue``, two servers on one port) are in
``test_server_hardening_proc.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential import logredact
from nebula_credential.config import ConfigError, KeyManagementConfig, parse_free_space
from nebula_credential.server import _json
from nebula_credential.server._httpmetrics import HttpMetricsMiddleware
from nebula_credential.server._request import redact_path
from nebula_credential.server.app import create_app
from nebula_credential.server.ratelimit import FreeSpaceFloor, Guards, SourceBuckets


def _app(vault: nc.Vault, **guards: Any) -> Any:
    app = create_app(vault)
    server = replace(vault.config.server, **{k: v for k, v in guards.items() if k != "directory"})
    app.state.guards = Guards.from_config(server, guards.get("directory"))
    return app


@pytest.fixture
def served(vault: nc.Vault) -> Iterator[tuple[TestClient, str]]:
    app = _app(vault)
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        yield client, token


def _stored(vault: nc.Vault) -> str:
    with vault.store.read() as tx:
        return json.dumps([(r.action, r.details) for r in tx.audit_rows()], ensure_ascii=False)


def _server_events(vault: nc.Vault) -> list[dict[str, Any]]:
    with vault.store.read() as tx:
        return [json.loads(r.details) for r in tx.audit_rows() if r.action.startswith("server.")]


# --- item 2: bounded metrics ---------------------------------------------------------------

def _series(registry: Any) -> int:
    return sum(len(family.samples) for family in registry.collect())


def test_metrics_labels_come_from_fixed_sets(vault: nc.Vault) -> None:
    """5,000 requests with made-up methods and first path segments add no series per request."""
    from prometheus_client import CollectorRegistry

    from nebula_credential.metrics import register_server_metrics

    registry = CollectorRegistry()
    app = _app(vault)
    app.add_middleware(HttpMetricsMiddleware)
    app.state.http_metrics = register_server_metrics(SimpleNamespace(registry=registry))  # type: ignore[arg-type]
    with TestClient(app) as client:
        for _ in range(3):
            client.get("/v1/sys/health")
            client.get("/v1/secret/data/x")
        before = _series(registry)
        for i in range(5000):
            method = f"M{i}X" if i % 2 else "GET"
            path = f"/v1/made-up-{i}/x" if i % 3 else f"/made-up-{i}"
            client.request(method, path)
        after = _series(registry)
    labels = {(s.labels.get("method"), s.labels.get("route")) for f in registry.collect() for s in f.samples}
    print(f"/metrics series: {before} before, {after} after 5,000 made-up requests")
    assert {m for m, _ in labels} <= {"GET", "other"}
    assert {r for _, r in labels} <= {"/v1/sys", "/v1/secret", "other"}
    assert after <= before + 60, (before, after)


# --- item 6: redaction by value ------------------------------------------------------------

OURS = "ncs.Q2Fybm90LWEtcmVhbC10b2tlbi1qdXN0LWEtdGVzdA"
VAULTS = "hvs.CAESIJ1t0kenFr0mAnotherVault9x8y7z6w"


@pytest.mark.parametrize("after", [";", " ", "\x00", "\u00a0", "\u200b", ";x=1", "/more"])
@pytest.mark.parametrize("before", ["", "abc"])
def test_a_token_is_redacted_by_value(before: str, after: str) -> None:
    for token in (OURS, VAULTS):
        cleaned = redact_path(f"auth/token/lookup/{before}{token}{after}")
        assert token not in cleaned and "<redacted>" in cleaned
        assert token[4:20] not in logredact.redact(f"GET /v1/x/{before}{token}{after} 404")


def test_the_presented_token_is_redacted_whatever_it_looks_like() -> None:
    presented = "my-own-presented-value-77"
    assert presented not in redact_path(f"secret/data/pre{presented}post", presented)
    token = logredact.presented.set((presented,))
    try:
        assert presented not in logredact.redact(f"path x/{presented}%00 and query ?t={presented}")
    finally:
        logredact.presented.reset(token)


@pytest.mark.parametrize("suffix", [";", "%20", "%00", "%C2%A0", "%E2%80%8B", "x"])
def test_no_token_reaches_the_audit_trail(vault: nc.Vault, served: tuple[TestClient, str], suffix: str) -> None:
    client, token = served
    presented = "a-presented-value-that-is-no-token"
    client.get(f"/v1/auth/token/lookup/{token}{suffix}", headers={"X-Vault-Token": token})
    client.get(f"/v1/secret/data/pre{token}{suffix}", headers={"X-Vault-Token": token})
    client.get(f"/v1/nope/{VAULTS}{suffix}")
    client.get(f"/v1/nope/x{presented}{suffix}?q={presented}", headers={"X-Vault-Token": presented})
    stored = _stored(vault)
    for secret in (token, token[4:], VAULTS, presented):
        assert secret not in stored


# --- item 7: no 5xx for bad input -------------------------------------------------------------

def test_deep_json_is_a_400_not_a_500(served: tuple[TestClient, str]) -> None:
    client, token = served
    h = {"X-Vault-Token": token}
    for depth in (950, 3000, 100_000):
        body = '{"data": {"x": ' + "[" * depth + "]" * depth + "}}"
        response = client.post("/v1/secret/data/deep", content=body, headers=h)
        assert response.status_code == 400, response.text
        assert f"deeper than {_json.MAX_DEPTH}" in response.text
    body = '{"data": {"x": ' + "[" * 100 + "]" * 100 + "}}"
    assert client.post("/v1/secret/data/deep", content=body, headers=h).status_code == 200


def test_a_brace_inside_a_string_is_not_nesting() -> None:
    assert _json.nesting_depth(b'{"a": "[[[[{{{\\"[[["}') == 1
    assert _json.loads('{"a": "' + "[" * 5000 + '"}') == {"a": "[" * 5000}


def test_an_out_of_range_cas_is_refused_before_any_work(vault: nc.Vault, served: tuple[TestClient, str]) -> None:
    client, token = served
    response = client.post("/v1/secret/data/big", json={"options": {"cas": 10**26}, "data": {"a": "b"}},
                           headers={"X-Vault-Token": token})
    assert response.status_code == 400 and "options.cas" in response.text
    assert client.get("/v1/secret/data/big", headers={"X-Vault-Token": token}).status_code == 404


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_field(served: tuple[TestClient, str], literal: str) -> None:
    client, token = served
    response = client.post("/v1/secret/data/nan", content='{"data": {"x": ' + literal + "}}",
                           headers={"X-Vault-Token": token})
    assert response.status_code == 400 and "data.x" in response.text
    assert client.get("/v1/secret/data/nan", headers={"X-Vault-Token": token}).status_code == 404


def test_a_huge_integer_literal_gets_our_words(served: tuple[TestClient, str]) -> None:
    client, token = served
    for body in ('{"data": {"x": ' + "9" * 5000 + "}}", '{"options": {"cas": ' + "9" * 5000 + '}, "data": {}}'):
        response = client.post("/v1/secret/data/huge", content=body, headers={"X-Vault-Token": token})
        assert response.status_code == 400
        assert "sys." not in response.text and "digits" in response.text
    response = client.get("/v1/secret/data/huge?version=" + "9" * 5000, headers={"X-Vault-Token": token})
    assert response.status_code in (400, 404) and "sys." not in response.text


# --- item 1: audit that cannot be turned against the server -------------------------------------

def test_an_unauthenticated_path_is_audited_cut_with_a_digest(vault: nc.Vault, served: tuple[TestClient, str]) -> None:
    client, _ = served
    assert client.get("/v1/x/" + "a" * 65_000).status_code == 404
    event = _server_events(vault)[-1]
    assert len(event["path"]) < 400 and "sha256:" in event["path"] and "65002 chars" in event["path"]


def test_unauthenticated_requests_spend_a_per_source_budget(vault: nc.Vault) -> None:
    app = _app(vault, unauthenticated_rate=0.001, unauthenticated_burst=10)
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        audited_before = len(_server_events(vault))
        statuses = [client.get(f"/v1/x/{i}").status_code for i in range(30)]
        statuses += [client.get("/v1/secret/data/x", headers={"X-Vault-Token": "hvs.wrong"}).status_code]
        assert statuses[:10] == [404] * 10 and set(statuses[10:]) == {429}
        refused = client.get("/v1/x/again")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert len(_server_events(vault)) - audited_before == 10
        # refused before any work (path normalisation included), probes still answered
        assert client.get("/v1/a/../" + "b" * 65_000).status_code == 429
        assert client.get("/v1/sys/health").status_code == 200
        # an authorised client is not held back by the flood
        for _ in range(20):
            assert client.get("/v1/sys/mounts", headers={"X-Vault-Token": token}).status_code in (200, 404)


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    buckets = SourceBuckets(2.0, 3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b")  # another address has its own budget
    assert buckets.retry_after("a") == 1
    now[0] = 0.5
    assert buckets.take("a") and not buckets.take("a")


def test_under_the_free_space_floor_reads_answer_and_writes_are_refused(
    vault: nc.Vault, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(vault)
    token, _ = app.state.backend.tokens.create(["root"])
    h = {"X-Vault-Token": token}
    with TestClient(app) as client:
        assert client.post("/v1/secret/data/kept", json={"data": {"a": "b"}}, headers=h).status_code == 200
        app.state.guards.floor = FreeSpaceFloor(str(tmp_path), 2**62, 0.0)  # more than any disk has
        written = len(_server_events(vault))
        assert client.post("/v1/secret/data/new", json={"data": {"a": "b"}}, headers=h).status_code == 503
        assert client.get("/v1/x/unauthenticated").status_code == 503
        assert client.get("/v1/secret/data/kept").status_code == 503
        read = client.get("/v1/secret/data/kept", headers=h)
        assert read.status_code == 200 and read.json()["data"]["data"] == {"a": "b"}
        app.state.guards.floor = FreeSpaceFloor(str(tmp_path), 0, 0.0)
        assert client.get("/v1/secret/data/new", headers=h).status_code == 404  # the refused write left nothing
    events = _server_events(vault)[written:]
    assert any(e["status"] == 503 and e["method"] == "POST" for e in events)  # the refusal is audited
    assert "below the floor" in caplog.text


def test_the_free_space_setting_is_checked() -> None:
    assert parse_free_space("256MiB") == (256 * 2**20, 0.0)
    assert parse_free_space("5%") == (0, 0.05)
    assert parse_free_space("0") == (0, 0.0)
    cfg = KeyManagementConfig.from_dict({"server": {"min_free_space": "1GiB", "unauthenticated_rate": 5,
                                                    "unauthenticated_burst": 7}})
    assert cfg.server.unauthenticated_burst == 7
    for bad in ("lots", "150%", "-3MiB"):
        with pytest.raises(ConfigError, match="min_free_space"):
            KeyManagementConfig.from_dict({"server": {"min_free_space": bad}})
