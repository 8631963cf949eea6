"""KV v2 semantics over HTTP (version history, delete/undelete/destroy, scope), errors,
request audit and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .server_proc import Server, serve, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-kv", "--maintain", "--interval", "1h",
                      "--max-request-size", "65536") as s:
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> Iterator[httpx.Client]:
    with server.http(server.token("root")) as c:
        yield c


def test_vault_envelope_and_versions(root: httpx.Client) -> None:
    first = root.post("/v1/secret/data/v/one", json={"data": {"a": "1"}}).json()
    assert set(first) >= {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings",
                          "auth"}
    assert first["data"]["version"] == 1
    assert root.put("/v1/secret/data/v/one", json={"data": {"a": "2"}}).json()["data"]["version"] == 2
    assert root.get("/v1/secret/data/v/one").json()["data"]["data"] == {"a": "2"}
    assert root.get("/v1/secret/data/v/one?version=2").status_code == 200
    old = root.get("/v1/secret/data/v/one?version=1")  # every version is kept, as Vault keeps them
    assert old.status_code == 200 and old.json()["data"]["data"] == {"a": "1"}
    assert old.json()["data"]["metadata"]["version"] == 1
    assert root.get("/v1/secret/data/v/one?version=3").status_code == 404
    assert root.get("/v1/secret/config").json()["data"]["max_versions"] == 0  # 0: Vault's default of 10


def test_delete_undelete_destroy(root: httpx.Client) -> None:
    version = root.post("/v1/secret/data/v/two", json={"data": {"b": "x"}}).json()["data"]["version"]
    assert root.delete("/v1/secret/data/v/two").status_code == 204
    gone = root.get("/v1/secret/data/v/two")
    assert gone.status_code == 404 and gone.json()["data"]["metadata"]["deletion_time"]
    version = root.get("/v1/secret/metadata/v/two").json()["data"]["current_version"]
    assert root.post("/v1/secret/undelete/v/two", json={"versions": [version]}).status_code == 204
    assert root.get("/v1/secret/data/v/two").json()["data"]["data"] == {"b": "x"}
    version = root.get("/v1/secret/metadata/v/two").json()["data"]["current_version"]
    assert root.post("/v1/secret/destroy/v/two", json={"versions": [version]}).status_code == 204
    destroyed = root.get("/v1/secret/data/v/two")
    assert destroyed.status_code == 404 and destroyed.json()["data"]["metadata"]["destroyed"] is True
    assert root.post("/v1/secret/undelete/v/two", json={"versions": [99]}).status_code == 204
    assert root.get("/v1/secret/data/v/two").status_code == 404  # destroyed stays destroyed


def test_scope_from_custom_metadata(root: httpx.Client, server: Server) -> None:
    assert root.post("/v1/secret/metadata/scoped/db",
                     json={"custom_metadata": {"scope": "production", "owner": "team-a"}}).status_code == 204
    assert root.get("/v1/secret/data/scoped/db").status_code == 404  # metadata alone is no secret
    root.post("/v1/secret/data/scoped/db", json={"data": {"password": "p"}})
    out = server.cli("--json", "get", "scoped/db")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scope"] == "production"
    meta = root.get("/v1/secret/metadata/scoped/db").json()["data"]
    assert meta["custom_metadata"] == {"scope": "production", "owner": "team-a"}
    assert root.post("/v1/secret/metadata/scoped/db", json={"custom_metadata": {"scope": "../x"}}).status_code == 400


@pytest.mark.parametrize("scope", ["abc\n", "prod\n", "a" * 65, "-x"])
def test_scope_is_the_one_name_rule(root: httpx.Client, scope: str) -> None:
    """``custom_metadata.scope`` follows ``names.check_scope`` (fullmatch): a trailing newline is refused
    with the same 400 as any other bad scope, and nothing is written."""
    answer = root.post("/v1/secret/metadata/nl/db", json={"custom_metadata": {"scope": scope}})
    assert answer.status_code == 400, answer.text
    assert "custom_metadata.scope" in answer.text
    assert root.get("/v1/secret/metadata/nl/db").status_code == 404


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/v1/secret/data/e", {"data": "not-an-object"}, 400),
    ("POST", "/v1/secret/data/e", {"data": {}, "options": {"cas": -1}}, 400),
    ("POST", "/v1/secret/data/e", {"data": {}, "options": {"cas": "x"}}, 400),
    ("GET", "/v1/secret/data/e?version=x", None, 400),
    ("POST", "/v1/secret/destroy/e", {}, 400),
    ("POST", "/v1/secret/metadata/e", {"max_versions": "five"}, 400),
    ("GET", "/v1/secret/nothing-here", None, 404),
    ("GET", "/v1/nomount/data/x", None, 404),
    ("DELETE", "/v1/secret/config", None, 405),
    ("PUT", "/v1/sys/policies/acl/root", {"policy": 'path "*" { capabilities = ["read"] }'}, 400),
    ("PUT", "/v1/sys/policies/acl/x", {"policy": "path {"}, 400),
    ("POST", "/v1/auth/token/create", {"policies": "nope-not-held", "ttl": "forever"}, 400),
])
def test_errors_are_vault_shaped(root: httpx.Client, method: str, path: str, body: object, status: int) -> None:
    response = root.request(method, path, json=body)
    assert response.status_code == status
    assert isinstance(response.json()["errors"], list)


def test_not_json_and_too_large(root: httpx.Client) -> None:
    response = root.post("/v1/secret/data/e", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    big = json.dumps({"data": {"k": "x" * 70_000}}).encode()  # under the 1 MiB default, over --max-request-size
    assert root.post("/v1/secret/data/e", content=big).status_code == 413
    chunked = iter([b'{"data": {"k": "', b"x" * 70_000, b'"}}'])  # no Content-Length: counted as it arrives
    assert root.post("/v1/secret/data/e", content=chunked).status_code == 413
    assert root.get("/v1/secret/data/e").status_code == 404  # nothing written


def test_every_request_audited_without_data_or_token(root: httpx.Client, server: Server) -> None:
    root.post("/v1/secret/data/audited", json={"data": {"password": "do-not-log-me"}})
    root.get("/v1/secret/data/audited")
    with server.http("ncs.wrong-token-0000000000000000000000000000000000") as stranger:
        assert stranger.get("/v1/secret/data/audited").status_code == 403
    out = server.cli("--json", "audit", "list", "--limit", "10")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = [(e["action"], e["details"].get("operation"), e["details"].get("path")) for e in events]
    assert ("server.request", "create", "secret/data/audited") in kinds
    assert ("server.request", "read", "secret/data/audited") in kinds
    assert ("server.denied", "get", "secret/data/audited") in kinds
    token = root.headers["X-Vault-Token"]
    assert "do-not-log-me" not in out.stdout and token not in out.stdout and token not in server.log()
    assert server.cli("audit", "verify").returncode == 0


def test_token_lifecycle_is_audited_by_accessor(root: httpx.Client, server: Server) -> None:
    created = root.post("/v1/auth/token/create", json={"policies": ["root"], "ttl": "1h"}).json()["auth"]
    assert root.post("/v1/auth/token/revoke-accessor", json={"accessor": created["accessor"]}).status_code == 204
    out = server.cli("--json", "audit", "list", "--limit", "5")
    details = [json.loads(line)["details"] for line in out.stdout.splitlines()]
    assert any(d.get("created_accessor") == created["accessor"] for d in details)
    assert any(d.get("target_accessor") == created["accessor"] for d in details)
    assert created["client_token"] not in out.stdout


def test_concurrent_requests_each_get_an_event(root: httpx.Client, server: Server) -> None:
    # events are group-committed: concurrent requests share a transaction, none is dropped
    root.post("/v1/secret/data/busy", json={"data": {"k": "v"}})
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: root.get("/v1/secret/data/busy").status_code, range(36)))
    assert statuses == [200] * 36
    out = server.cli("--json", "audit", "list", "--limit", "60")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    reads = [e for e in events if e["details"].get("path") == "secret/data/busy" and e["details"]["operation"] == "read"]
    assert len(reads) == 36
    assert server.cli("audit", "verify").returncode == 0


def test_metrics_and_healthz(server: Server, root: httpx.Client) -> None:
    with server.http() as anon:
        assert anon.get("/healthz").json()["status"] == "ok"  # --maintain: the daemon's answer
        metrics = anon.get("/metrics").text
    assert "nebula_credential_key_access_errors" in metrics
    errors = [line for line in metrics.splitlines() if line.startswith("nebula_credential_key_access_errors")]
    assert any(float(line.rsplit(" ", 1)[1]) >= 1 for line in errors)  # the denied request above


def test_reads_unaudited_when_configured(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("serve-quiet")
    config = folder / "c.toml"
    config.write_text("[audit]\nrequests = false\n")
    from .helpers import cli_env

    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(folder / "master.key"), NEBULA_CREDENTIAL_CONFIG=str(config))
    with serve(folder, f"sqlite:///{folder / 'store.db'}", env=env) as s, s.http(s.token("root")) as c:
        c.post("/v1/secret/data/q", json={"data": {"k": "v"}})
        for _ in range(3):
            c.get("/v1/secret/data/q")
        events = [json.loads(line) for line in s.cli("--json", "audit", "list", "--limit", "20").stdout.splitlines()]
    ops = [e["details"].get("operation") for e in events if e["action"] == "server.request"]
    assert "create" in ops and "read" not in ops


def test_bearer_header_and_list_query(root: httpx.Client, server: Server) -> None:
    token = root.headers["X-Vault-Token"]
    with server.http() as anon:
        assert anon.get("/v1/auth/token/lookup-self").status_code == 403
        me = anon.get("/v1/auth/token/lookup-self", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["data"]["policies"] == ["root"]
    root.post("/v1/secret/data/listed/a", json={"data": {"k": "v"}})
    assert root.get("/v1/secret/metadata/listed?list=true").json()["data"]["keys"] == ["a"]
    assert root.request("LIST", "/v1/secret/metadata/listed").json()["data"]["keys"] == ["a"]
