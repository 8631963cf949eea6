"""Mounts and auth items are authenticated rows: a database writer cannot add a login or a mount.

The finding (issue 31): with write access to the database, one could edit an
AppRole role's ``token_policies`` to ``["root"]``, insert a userpass user with
a known argon2 hash and root policies, or insert a ``server_mounts`` row, and
the running server honoured each.  Now every ``auth_items`` and
``server_mounts`` row carries a MAC under the root-wrapped row key: a row that
fails does not exist for login or routing, and is audited as
``server.row_rejected.<table>`` and named by ``doctor``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher

from .server_proc import Server, sqlite_serve

CACHE_BOUND = 2.5  # [server] cache_ttl (2 s) and the mount table's refresh, plus margin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "rowmacauth") as s:
        s.root = s.token("root")
        s.enable_auth("approle", "userpass")
        root = s.hvac(s.root)
        root.sys.create_or_update_acl_policy("app", 'path "secret/data/app/*" { capabilities = ["read"] }')
        yield s


def _sql(server: Server, statement: str, *args: object) -> list[Any]:
    conn = sqlite3.connect(server.folder / "store.db", timeout=30)
    try:
        with conn:
            return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


def _rejected(server: Server, table: str) -> list[dict[str, Any]]:
    out = server.cli("--json", "audit", "list", "--limit", "200")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    return [e for e in events if e["action"] == f"server.row_rejected.{table}"]


def _doctor_rows(server: Server) -> str:
    out = server.cli("--json", "doctor")
    return " ".join(f["message"] for f in json.loads(out.stdout) if f["check"] == "rows")


def _login_policies(server: Server, path: str, body: dict[str, str]) -> tuple[int, list[str]]:
    with server.http() as c:
        answer = c.post(f"/v1/auth/{path}", json=body)
    if answer.status_code != 200:
        return answer.status_code, []
    return 200, list(answer.json()["auth"]["policies"])


def test_approle_role_edited_to_root_is_refused(server: Server) -> None:
    approle = server.hvac(server.root).auth.approle
    approle.create_or_update_approle("web", token_policies=["app"])
    role_id = approle.read_role_id("web")["data"]["role_id"]
    secret_id = approle.generate_secret_id("web")["data"]["secret_id"]
    login = {"role_id": role_id, "secret_id": secret_id}
    status, policies = _login_policies(server, "approle/login", login)
    assert status == 200 and "app" in policies and "root" not in policies
    [(body,)] = _sql(server, "SELECT body FROM auth_items WHERE mount = 'auth/approle' AND kind = 'role' "
                             "AND name = 'web'")
    role = json.loads(body)
    role["token_policies"] = ["root"]
    _sql(server, "UPDATE auth_items SET body = ? WHERE mount = 'auth/approle' AND kind = 'role' AND name = 'web'",
         json.dumps(role))
    status, policies = _login_policies(server, "approle/login", login)
    assert "root" not in policies  # was a root token before auth items were MAC'd
    assert status == 400  # the role does not exist for login
    rejected = _rejected(server, "auth_items")
    assert any(e["details"]["row"] == "auth/approle role web" and e["outcome"] == "refused" for e in rejected)
    assert "auth_items auth/approle role 'web'" in _doctor_rows(server)


def test_secret_id_uses_cannot_be_raised_or_made_unlimited(server: Server) -> None:
    approle = server.hvac(server.root).auth.approle
    approle.create_or_update_approle("once", token_policies=["app"], secret_id_num_uses=2)
    role_id = approle.read_role_id("once")["data"]["role_id"]
    secret_id = approle.generate_secret_id("once")["data"]["secret_id"]
    login = {"role_id": role_id, "secret_id": secret_id}
    assert _login_policies(server, "approle/login", login)[0] == 200
    # giving back a spent use is a rollback (allowed by the threat model); more than the item had is not
    _sql(server, "UPDATE auth_items SET uses_left = 2 WHERE mount = 'auth/approle' AND kind = 'sid/once'")
    assert _login_policies(server, "approle/login", login)[0] == 200
    _sql(server, "UPDATE auth_items SET uses_left = NULL WHERE mount = 'auth/approle' AND kind = 'sid/once'")
    assert _login_policies(server, "approle/login", login)[0] == 400


def test_userpass_user_inserted_in_the_database_is_refused(server: Server) -> None:
    server.hvac(server.root).auth.userpass.create_or_update_user("alice", password="alice-pw", policies=["app"])
    [(body,)] = _sql(server, "SELECT body FROM auth_items WHERE mount = 'auth/userpass' AND kind = 'user' "
                             "AND name = 'alice'")
    user = json.loads(body)
    assert "hash" in user
    user["hash"] = PasswordHasher().hash("known-pw")
    user["token_policies"] = ["root"]
    _sql(server, "INSERT INTO auth_items (mount, kind, name, body, created_at) VALUES (?, ?, ?, ?, ?)",
         "auth/userpass", "user", "mallory", json.dumps(user), time.time())
    status, policies = _login_policies(server, "userpass/login/mallory", {"password": "known-pw"})
    assert status == 400 and policies == []  # was a root token before auth items were MAC'd
    assert _login_policies(server, "userpass/login/alice", {"password": "alice-pw"})[0] == 200
    listed = server.hvac(server.root).auth.userpass.list_user()["data"]["keys"]
    assert "mallory" not in listed and "alice" in listed
    rejected = _rejected(server, "auth_items")
    assert any(e["details"]["row"] == "auth/userpass user mallory" for e in rejected)
    assert "auth_items auth/userpass user 'mallory'" in _doctor_rows(server)


def test_mount_inserted_in_the_database_is_not_routed(server: Server) -> None:
    root = server.hvac(server.root)
    root.sys.enable_secrets_engine("kv", path="good", options={"version": "2"})
    [row] = _sql(server, "SELECT type, uuid, options, config FROM server_mounts WHERE path = 'good'")
    accessor = "kv_deadbeef"
    _sql(server, "INSERT INTO server_mounts (kind, path, type, description, accessor, uuid, options, config, "
                 "keyring, created_at) VALUES ('secret', 'evil', ?, '', ?, ?, ?, ?, ?, ?)",
         row[0], accessor, row[1] + "x", row[2], row[3], f"evil/{accessor}", time.time())
    _sql(server, "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'server.mounts.generation'")
    time.sleep(CACHE_BOUND)
    with server.http(server.root) as c:
        listed = c.get("/v1/sys/mounts").json()["data"]
        written = c.post("/v1/evil/data/x", json={"data": {"v": "1"}}).status_code
        good = c.post("/v1/good/data/x", json={"data": {"v": "1"}}).status_code
    assert "good/" in listed and "evil/" not in listed  # the inserted mount was routed before
    assert written == 404 and good == 200
    rejected = _rejected(server, "server_mounts")
    assert any(e["details"]["row"] == "secret evil" for e in rejected)
    assert "server_mounts secret 'evil'" in _doctor_rows(server)


def test_tuned_mount_keeps_a_valid_mac(server: Server) -> None:
    root = server.hvac(server.root)
    root.sys.enable_secrets_engine("kv", path="tuned", options={"version": "2"})
    root.sys.tune_mount_configuration("tuned", description="changed", default_lease_ttl="1h")
    with server.http(server.root) as c:
        assert c.get("/v1/sys/mounts").json()["data"]["tuned/"]["description"] == "changed"
        assert c.post("/v1/tuned/data/x", json={"data": {"v": "1"}}).status_code == 200
    assert "server_mounts secret 'tuned'" not in _doctor_rows(server)
