"""The mount table in process: the store slice on each backend, the engine registry (an auth method
registered the way AppRole and the others will be), the disable guard, and dispatch speed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.mounttables import MountRow
from nebula_credential.server import mounts
from nebula_credential.server.app import create_app


@pytest.fixture
def served(vault: nc.Vault) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(vault)
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        yield client, {"X-Vault-Token": token}


def _row(path: str, kind: str = "secret") -> MountRow:
    return MountRow(path=path, kind=kind, type="kv", description="", accessor=f"kv_{path}_{kind}", uuid="u",
                    options={"version": "1"}, config={}, keyring=f"{path}/kv_x", created_at=1.0)


def test_store_slice_and_generation(vault: nc.Vault) -> None:
    tables = vault.mount_tables()
    with tables.read() as tx:
        start = tx.mount_generation()
        assert tx.mount_list() == []
    tables.run(lambda tx: tx.mount_insert(_row("a")))
    tables.run(lambda tx: tx.mount_insert(_row("a", "auth")))  # same path, other kind: another mount
    with tables.read() as tx:
        assert [(r.kind, r.path) for r in tx.mount_list()] == [("auth", "a"), ("secret", "a")]
        assert tx.mount_get("secret", "a") == _row("a")
        assert tx.mount_generation() == start + 2
    changed = replace(_row("a"), description="d", options=None)
    assert tables.run(lambda tx: tx.mount_update(changed))
    with tables.read() as tx:
        got = tx.mount_get("secret", "a")
        assert got is not None and got.description == "d" and got.options is None
    assert tables.run(lambda tx: tx.mount_delete("secret", "a"))
    assert not tables.run(lambda tx: tx.mount_delete("secret", "a"))
    with tables.read() as tx:
        assert tx.mount_get("secret", "a") is None and tx.mount_generation() == start + 4


def test_a_registered_auth_method_is_enabled_routed_and_disabled(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, root = served
    seen: list[str] = []

    def factory(entry: mounts.MountEntry) -> list[BaseRoute]:
        async def login(request: Request) -> Response:
            return JSONResponse({"auth": {"mount": entry.path, "config": entry.config}})

        seen.append(entry.path)
        return [Route("/login", login, methods=["POST"])]

    mounts.register_auth_method("dummy", mounts.EngineType(factory, description="a test method"))
    try:
        assert client.post("/v1/sys/auth/dum", json={"type": "dummy"}, headers=root).status_code == 204
        listed = client.get("/v1/sys/auth", headers=root).json()["data"]
        assert listed["dum/"]["type"] == "dummy" and listed["dum/"]["description"] == "a test method"
        assert listed["dum/"]["accessor"].startswith("auth_dummy_")
        answer = client.post("/v1/auth/dum/login", json={})
        assert answer.status_code == 200 and answer.json()["auth"]["mount"] == "dum"
        assert seen == ["dum"]
        # a secrets engine path and an auth path do not collide
        assert client.post("/v1/sys/mounts/dum", json={"type": "kv"}, headers=root).status_code == 204
        assert client.delete("/v1/sys/auth/dum", headers=root).status_code == 204
        assert client.post("/v1/auth/dum/login", json={}).status_code == 404
        assert "dum/" in client.get("/v1/sys/mounts", headers=root).json()["data"]
    finally:
        del mounts.AUTH_METHODS["dummy"]


def test_sys_auth_needs_sudo(served: tuple[TestClient, dict[str, str]], vault: nc.Vault) -> None:
    client, root = served
    policy = 'path "sys/auth/*" { capabilities = ["create", "update", "delete", "read"] }'
    assert client.put("/v1/sys/policies/acl/authadmin", json={"policy": policy}, headers=root).status_code == 204
    app_state = client.app.state  # type: ignore[attr-defined]
    token, _ = app_state.backend.tokens.create(["authadmin"])
    answer = client.post("/v1/sys/auth/x", json={"type": "token"}, headers={"X-Vault-Token": token})
    assert answer.status_code == 403


def test_disable_deletes_the_data_and_audits_it(served: tuple[TestClient, dict[str, str]], vault: nc.Vault) -> None:
    client, root = served
    assert client.post("/v1/sys/mounts/gone", json={"type": "kv"}, headers=root).status_code == 204
    for i in range(3):
        assert client.put(f"/v1/gone/s{i}", json={"v": i}, headers=root).status_code == 204
    keyring = next(k for k in vault.keyring_names() if k.startswith("gone/"))
    assert len(vault.keyring(keyring).ids_under("")) == 3
    assert client.delete("/v1/sys/mounts/gone", headers=root).status_code == 204
    assert vault.keyring(keyring).ids_under("") == []
    purges = [e for e in vault.audit_events(limit=50, action="keyring.purge")]
    assert purges and purges[0].keyring == keyring  # type: ignore[attr-defined]


def test_disable_refuses_a_transit_key_that_protects_credentials(
    served: tuple[TestClient, dict[str, str]], vault: nc.Vault,
) -> None:
    client, root = served
    assert client.post("/v1/sys/mounts/tk", json={"type": "transit"}, headers=root).status_code == 204
    assert client.post("/v1/tk/keys/k", json={}, headers=root).status_code in (200, 204)
    keyring = next(k for k in vault.keyring_names() if k.startswith("tk/"))
    vault.keyring(keyring).put("held", {"x": 1})  # a credential under the key's keyring
    answer = client.delete("/v1/sys/mounts/tk", headers=root)
    assert answer.status_code == 400
    message = answer.json()["errors"][0]
    assert "tk/" in message and "credential" in message and "'k'" in message
    assert "tk/" in client.get("/v1/sys/mounts", headers=root).json()["data"]  # the mount stays


def test_dispatch_is_a_lookup_not_a_route_scan(served: tuple[TestClient, dict[str, str]]) -> None:
    """The mount is found by one dictionary lookup per path segment, whatever the number of mounts,
    and each mount's router is built once, not per request."""
    client, root = served
    assert client.post("/v1/sys/mounts/first", json={"type": "kv"}, headers=root).status_code == 204
    assert client.put("/v1/first/x", json={"a": "b"}, headers=root).status_code == 204
    table: mounts.MountTable = client.app.state.mounts  # type: ignore[attr-defined]
    entry = table.find("first/x")
    assert entry is not None
    router = table.router(entry)

    def per_lookup() -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(2000):
                table.find("first/a/b/c/d/e")
            best = min(best, time.perf_counter() - started)
        return best / 2000

    few = per_lookup()
    table._install([*table.entries("secret"), *table.entries("auth"), *(
        mounts.MountEntry("secret", f"m{i}/n{i}", "kv", options={"version": "1"}, keyring=f"m{i}/k", uuid=str(i))
        for i in range(1000))])
    table.checked_at = time.monotonic() + 3600  # route from the table as installed
    many = per_lookup()
    print(f"mount lookup: {few * 1e6:.2f} us with {len(table.entries('secret')) - 1000} mounts, "
          f"{many * 1e6:.2f} us with 1000 more")
    assert many < few * 3 + 2e-6, (few, many)
    for _ in range(3):
        assert client.get("/v1/first/x", headers=root).json()["data"] == {"a": "b"}
    assert table.router(entry) is router


def test_a_stored_mount_cannot_name_another_keyring(served: tuple[TestClient, dict[str, str]], vault: nc.Vault) -> None:
    """A row written into the database by hand, pointing a KV v1 mount at the ``default`` keyring,
    is not routed: a database writer cannot read a value through a mount of its own making."""
    client, root = served
    vault.put("db-password", {"v": "s3cret"})
    forged = replace(_row("peek"), keyring="default", accessor="kv_peek")
    vault.mount_tables().run(lambda tx: tx.mount_insert(forged))
    answer = client.get("/v1/peek/db-password", headers=root)
    assert answer.status_code == 404 and "s3cret" not in answer.text
    assert "peek/" not in client.get("/v1/sys/mounts", headers=root).json()["data"]
