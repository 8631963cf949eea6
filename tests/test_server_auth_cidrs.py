"""Tokens issued by AppRole, userpass, JWT logins and token roles keep their ``token_bound_cidrs``.

A token used from outside its blocks is refused with 403, as Vault refuses it
(the differential steps are in test_diff_auth.py).  The blocks are part of the
token row's MAC: a database writer who clears or widens them makes the token
useless instead of usable from anywhere.  The server is reached from 127.0.0.1,
so ``10.0.0.0/8`` is "elsewhere".
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import pytest

from .server_proc import Server, sqlite_serve

CACHE_BOUND = 2.5  # [server] cache_ttl (2 s) plus margin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "auth-cidrs") as s:
        s.root = s.token("root")
        s.enable_auth("approle", "userpass")
        root = s.hvac(s.root)
        root.sys.create_or_update_acl_policy("app", 'path "secret/data/app/*" { capabilities = ["read"] }')
        yield s


def _approle_token(server: Server, role: str, blocks: list[str]) -> str:
    with server.http(server.root) as http:
        assert http.post(f"/v1/auth/approle/role/{role}",
                         json={"token_policies": ["app"], "token_bound_cidrs": blocks}).status_code == 204
        role_id = http.get(f"/v1/auth/approle/role/{role}/role-id").json()["data"]["role_id"]
        secret_id = http.post(f"/v1/auth/approle/role/{role}/secret-id").json()["data"]["secret_id"]
    with server.http() as anon:
        r = anon.post("/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id})
        assert r.status_code == 200, r.text
        return str(r.json()["auth"]["client_token"])


def _lookup_self(server: Server, token: str) -> int:
    with server.http(token) as http:
        return http.get("/v1/auth/token/lookup-self").status_code


def _sql(server: Server, statement: str, *args: object) -> int:
    conn = sqlite3.connect(server.folder / "store.db", timeout=30)
    try:
        with conn:
            return conn.execute(statement, args).rowcount
    finally:
        conn.close()


def test_an_approle_token_bound_elsewhere_is_refused_here(server: Server) -> None:
    far = _approle_token(server, "far", ["10.0.0.0/8"])
    near = _approle_token(server, "near", ["127.0.0.0/8"])
    with server.http(far) as http:
        r = http.get("/v1/auth/token/lookup-self")
        assert r.status_code == 403 and r.json() == {"errors": ["permission denied"]}
    assert _lookup_self(server, near) == 200
    with server.http(server.root) as http:
        found = http.post("/v1/auth/token/lookup", json={"token": far}).json()["data"]
    assert found["bound_cidrs"] == ["10.0.0.0/8"]


def test_a_refused_use_spends_no_use_of_a_limited_token(server: Server) -> None:
    with server.http(server.root) as http:
        assert http.post("/v1/auth/approle/role/limited", json={
            "token_policies": ["app"], "token_bound_cidrs": ["10.0.0.0/8"], "token_num_uses": 2}).status_code == 204
        role_id = http.get("/v1/auth/approle/role/limited/role-id").json()["data"]["role_id"]
        secret_id = http.post("/v1/auth/approle/role/limited/secret-id").json()["data"]["secret_id"]
    with server.http() as anon:
        token = anon.post("/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id}).json()
    client_token = token["auth"]["client_token"]
    for _ in range(3):
        assert _lookup_self(server, client_token) == 403
    with server.http(server.root) as http:
        assert http.post("/v1/auth/token/lookup", json={"token": client_token}).json()["data"]["num_uses"] == 2


def test_clearing_or_widening_the_blocks_in_the_database_breaks_the_token(server: Server) -> None:
    far = _approle_token(server, "far2", ["10.0.0.0/8"])
    cleared = _approle_token(server, "far3", ["10.0.0.0/8"])
    near = _approle_token(server, "near2", ["127.0.0.1/32"])
    with server.http(server.root) as http:
        accessors = {t: http.post("/v1/auth/token/lookup", json={"token": t}).json()["data"]["accessor"]
                     for t in (far, cleared, near)}
    assert _sql(server, "UPDATE server_tokens SET bound_cidrs = ? WHERE accessor = ?",
                json.dumps(["0.0.0.0/0"]), accessors[far]) == 1
    assert _sql(server, "UPDATE server_tokens SET bound_cidrs = '[]' WHERE accessor = ?", accessors[cleared]) == 1
    assert _sql(server, "UPDATE server_tokens SET bound_cidrs = '[]' WHERE accessor = ?", accessors[near]) == 1
    time.sleep(CACHE_BOUND)
    assert _lookup_self(server, far) == 403
    assert _lookup_self(server, cleared) == 403
    assert _lookup_self(server, near) == 403  # a row that was bound here, unbound by hand: refused too
    with server.http(server.root) as http:  # the refusals are reported as MAC failures
        assert http.post("/v1/auth/token/lookup", json={"token": near}).status_code == 403


def test_userpass_and_token_roles_bind_their_tokens(server: Server) -> None:
    with server.http(server.root) as http:
        assert http.post("/v1/auth/userpass/users/bob", json={
            "password": "pw", "token_policies": ["app"], "token_bound_cidrs": "10.0.0.0/8"}).status_code == 204
        assert http.post("/v1/auth/userpass/users/carol", json={
            "password": "pw", "token_policies": ["app"], "token_bound_cidrs": "127.0.0.1/32"}).status_code == 204
        assert http.get("/v1/auth/userpass/users/carol").json()["data"]["token_bound_cidrs"] == ["127.0.0.1"]
        assert http.post("/v1/auth/token/roles/bound", json={
            "allowed_policies": ["app"], "token_bound_cidrs": ["10.0.0.0/8"]}).status_code == 204
        assert http.get("/v1/auth/token/roles/bound").json()["data"]["token_bound_cidrs"] == ["10.0.0.0/8"]
        made = http.post("/v1/auth/token/create/bound", json={}).json()["auth"]["client_token"]
        assert http.post("/v1/auth/token/roles/bad", json={"token_bound_cidrs": ["nope"]}).status_code == 400
    with server.http() as anon:
        r = anon.post("/v1/auth/userpass/login/bob", json={"password": "pw"})
        assert r.status_code == 403, r.text  # refused at login, as Vault
        assert anon.post("/v1/auth/userpass/login/bob", json={"password": "wrong"}).status_code == 400
        carol = anon.post("/v1/auth/userpass/login/carol", json={"password": "pw"}).json()["auth"]["client_token"]
    assert _lookup_self(server, carol) == 200
    assert _lookup_self(server, made) == 403


def test_a_child_of_a_bound_token_keeps_the_blocks(server: Server) -> None:
    with server.http(server.root) as http:
        http.put("/v1/sys/policies/acl/maker", json={"policy": 'path "auth/token/create" { capabilities = ["update"] }'})
        assert http.post("/v1/auth/token/roles/near-maker", json={
            "allowed_policies": ["app", "maker"], "token_bound_cidrs": ["127.0.0.0/8"]}).status_code == 204
        parent = http.post("/v1/auth/token/create/near-maker", json={"policies": ["app", "maker"]}).json()
    with server.http(parent["auth"]["client_token"]) as http:
        child = http.post("/v1/auth/token/create", json={"policies": ["app"]}).json()["auth"]["client_token"]
    with server.http(server.root) as http:
        assert http.post("/v1/auth/token/lookup", json={"token": child}).json()["data"]["bound_cidrs"] == ["127.0.0.0/8"]
