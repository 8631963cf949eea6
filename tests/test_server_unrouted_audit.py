"""404 (no such path) and 405 (no such method) answers are audited like every other refused request.

Before, the router's own 404 and 405 left no audit event, while a 400, 403
or 412 did: probing for endpoints was invisible in the audit trail.  The
event holds what docs/server.md lists for a request (accessor, operation,
normalised path, method, status), never the token and never the body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.server.app import create_app

BODY_SECRET = "body-secret-7f3a9c"


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Routing and the audit of unrouted answers do not depend on the store.

    SQLite only: the two-store matrix runs in the store tests.
    """
    return sqlite_url


@pytest.fixture
def served(vault: nc.Vault) -> Iterator[tuple[TestClient, str, str]]:
    """A client of the real app, a root token and its accessor."""
    app = create_app(vault)
    token, row = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        yield client, token, row.accessor


def _events(vault: nc.Vault) -> list[dict[str, Any]]:
    with vault.store.read() as tx:
        rows = tx.audit_rows()
    return [{"action": r.action, "outcome": r.outcome, "keyring": r.keyring, **json.loads(r.details)}
            for r in rows if r.action.startswith("server.")]


def _last(vault: nc.Vault) -> dict[str, Any]:
    events = _events(vault)
    assert events, "no server event was audited"
    return events[-1]


@pytest.mark.parametrize(("method", "path", "status", "vpath"), [
    ("GET", "/v1/no/such/engine", 404, "no/such/engine"),
    ("GET", "/v1/secret/bogus/x", 404, "secret/bogus/x"),
    ("POST", "/v1//secret/%62ogus/", 404, "secret/bogus"),  # the normalised path is what is recorded
    ("DELETE", "/v1/sys/health", 405, "sys/health"),
    ("PATCH", "/v1/secret/config", 405, "secret/config"),
    ("GET", "/not-the-api", 404, "/not-the-api"),
])
@pytest.mark.parametrize("who", ["root", "anonymous", "bad token"])
def test_unrouted_answers_are_audited(
    vault: nc.Vault, served: tuple[TestClient, str, str], method: str, path: str, status: int, vpath: str,
    who: str,
) -> None:
    client, token, accessor = served
    sent = {"root": token, "anonymous": None, "bad token": "hvs.not-a-token-9d2e"}[who]
    headers = {"X-Vault-Token": sent} if sent else {}
    before = len(_events(vault))
    response = client.request(method, path, headers=headers, content=json.dumps({"data": {"pw": BODY_SECRET}}))
    assert response.status_code == status, response.text
    assert "errors" in response.json()
    events = _events(vault)
    assert len(events) == before + 1
    event = events[-1]
    assert event["action"] == "server.request" and event["outcome"] == "error"
    assert event["status"] == status and event["method"] == method and event["path"] == vpath
    assert event["operation"] == method.lower()
    assert event["accessor"] == (accessor if who == "root" else None)
    with vault.store.read() as tx:
        stored = json.dumps([(r.action, r.details) for r in tx.audit_rows()])
    assert BODY_SECRET not in stored and token not in stored and "not-a-token" not in stored
    assert vault.audit.verify().ok


def test_a_denied_request_is_still_server_denied(vault: nc.Vault, served: tuple[TestClient, str, str]) -> None:
    client, _, _ = served
    assert client.get("/v1/secret/data/x").status_code == 403
    assert _last(vault)["action"] == "server.denied"


@pytest.mark.parametrize(("path", "headers", "content", "status"), [
    ("/v1/secret/data/a/%2e%2e/b", {}, b"", 400),  # a path the middleware refuses before routing
    ("/v1/secret/data/%00x", {}, b"", 400),
    ("/v1/secret/data/big", {}, b"x" * (2 * 1024 * 1024), 413),  # declared length over max_request_size (1 MiB)
])
def test_refusals_before_routing_are_audited(
    vault: nc.Vault, served: tuple[TestClient, str, str], path: str, headers: dict[str, str], content: bytes,
    status: int,
) -> None:
    client, token, accessor = served
    before = len(_events(vault))
    body = content or json.dumps({"data": {"pw": BODY_SECRET}}).encode()
    response = client.post(path, headers={"X-Vault-Token": token, **headers}, content=body)
    assert response.status_code == status, response.text
    assert response.json()["errors"]
    events = _events(vault)
    assert len(events) == before + 1
    event = events[-1]
    assert event["outcome"] == "error" and event["status"] == status and event["accessor"] == accessor
    with vault.store.read() as tx:
        stored = json.dumps([(r.action, r.details) for r in tx.audit_rows()])
    assert BODY_SECRET not in stored and token not in stored
    assert vault.audit.verify().ok


@pytest.mark.parametrize("endpoint", ["auth/token/lookup", "auth/token/renew", "auth/token/revoke"])
def test_a_token_in_an_unrouted_path_is_not_audited(
    vault: nc.Vault, served: tuple[TestClient, str, str], endpoint: str
) -> None:
    """Vault's legacy endpoints take the token in the path; we route none of them, so the
    404/405 event must not keep it (found in review: the whole path was stored)."""
    client, token, _ = served
    vault_style = "hvs.CAESIJ1t0kenFr0mAnotherVault9x8y7z6w"
    for secret in (token, vault_style):
        response = client.post(f"/v1/{endpoint}/{secret}", headers={"X-Vault-Token": token})
        assert response.status_code in (404, 405)
        assert _last(vault)["path"] == f"{endpoint}/<redacted>"
    with vault.store.read() as tx:
        stored = json.dumps([(r.action, r.details) for r in tx.audit_rows()])
    assert token not in stored and vault_style not in stored


def test_an_allowed_token_s_errors_cost_the_audit_trail_a_bounded_path(vault: nc.Vault) -> None:
    """A token allowed to read that reads missing secrets at 60,000-character paths got
    404s audited with the whole path (~60 KB an event, no budget: an insider could fill the disk);
    an error answer's path is now cut as a refused request's is, with its length and digest."""
    app = create_app(vault)
    token, _ = app.state.backend.tokens.create(["root"])  # allowed everything: nothing is refused
    long = "a" * 60_000
    with TestClient(app) as client:
        r = client.get(f"/v1/secret/data/{long}", headers={"X-Vault-Token": token})
    assert 400 <= r.status_code < 500
    event = _last(vault)
    assert event["status"] == r.status_code
    assert len(event["path"]) < 400 and "60012 chars, sha256:" in event["path"], event["path"][:120]
