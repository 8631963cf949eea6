"""AppRole, userpass, response wrapping and cubbyhole, driven by hvac unmodified against ``serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hvac
import pytest
from hvac import exceptions

from .server_proc import Server, sqlite_serve

APP_POLICY = 'path "secret/data/app/*" { capabilities = ["read", "create", "update"] }'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-auth") as s:
        s.enable_auth("approle", "userpass", "jwt")  # as in Vault: enabled before first use
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> hvac.Client:
    client = server.hvac(server.token("root"))
    client.sys.create_or_update_policy("app", APP_POLICY)
    return client


def audit_events(server: Server, action: str) -> list[dict[str, object]]:
    out = server.cli("--json", "audit", "list", "--limit", "100000")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    events = json.loads(text) if text.strip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                    if line.strip()]
    return [e for e in events if e.get("action") == action]


def test_approle_flow(root: hvac.Client, server: Server) -> None:
    approle = root.auth.approle
    approle.create_or_update_approle("app", token_policies=["app"], token_ttl="10m", token_max_ttl="1h",
                                     secret_id_num_uses=0, secret_id_ttl="1h")
    role = approle.read_role("app")["data"]
    assert role["token_policies"] == ["app"] and role["token_ttl"] == 600 and role["token_max_ttl"] == 3600
    assert role["bind_secret_id"] is True
    assert approle.list_roles()["data"]["keys"] == ["app"]
    role_id = approle.read_role_id("app")["data"]["role_id"]
    generated = approle.generate_secret_id("app", metadata={"host": "web-1"})["data"]
    assert generated["secret_id"] and generated["secret_id_accessor"]
    assert generated["secret_id_accessor"] in approle.list_secret_id_accessors("app")["data"]["keys"]
    looked = approle.read_secret_id("app", generated["secret_id"])["data"]
    assert looked["secret_id_accessor"] == generated["secret_id_accessor"] and looked["metadata"] == {"host": "web-1"}

    client = server.hvac()
    answer = client.auth.approle.login(role_id=role_id, secret_id=generated["secret_id"])
    auth = answer["auth"]
    assert auth["policies"] == ["app", "default"] and auth["metadata"]["role_name"] == "app"
    assert auth["lease_duration"] == 600 and auth["renewable"] is True
    client.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "pw"})
    with pytest.raises(exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version("other/db", raise_on_deleted_version=True)

    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.approle.login(role_id=role_id, secret_id="not-the-secret")
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.approle.login(role_id="no-such-role-id", secret_id=generated["secret_id"])

    approle.destroy_secret_id_accessor("app", generated["secret_id_accessor"])
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.approle.login(role_id=role_id, secret_id=generated["secret_id"])

    custom = approle.create_custom_secret_id("app", secret_id="my-custom-secret-id-123")["data"]
    assert custom["secret_id"] == "my-custom-secret-id-123"
    assert server.hvac().auth.approle.login(role_id=role_id, secret_id="my-custom-secret-id-123")["auth"]
    approle.destroy_secret_id("app", "my-custom-secret-id-123")
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.approle.login(role_id=role_id, secret_id="my-custom-secret-id-123")

    events = audit_events(server, "auth.login")
    text = json.dumps(events)
    assert generated["secret_id"] not in text and "not-the-secret" not in text and "my-custom-secret-id" not in text
    outcomes = {(e["details"]["method"], e["outcome"]) for e in events}  # type: ignore[index]
    assert ("approle", "ok") in outcomes and ("approle", "error") in outcomes


def test_single_use_secret_id_under_concurrency(root: hvac.Client, server: Server) -> None:
    root.auth.approle.create_or_update_approle("once", token_policies=["app"], secret_id_num_uses=1)
    role_id = root.auth.approle.read_role_id("once")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("once")["data"]["secret_id"]

    def login(_: int) -> int:
        with server.http() as http:
            return http.post("/v1/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(login, range(16)))
    assert codes.count(200) == 1 and codes.count(400) == 15, codes


def test_userpass(root: hvac.Client, server: Server) -> None:
    userpass = root.auth.userpass
    userpass.create_or_update_user("alice", password="correct horse", policies=["app"])
    assert "alice" in userpass.list_user()["data"]["keys"]
    assert userpass.read_user("alice")["data"]["token_policies"] == ["app"]
    auth = server.hvac().auth.userpass.login("alice", "correct horse")["auth"]
    assert auth["metadata"] == {"username": "alice"} and "app" in auth["policies"]
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.userpass.login("alice", "wrong")
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.userpass.login("nobody", "wrong")
    userpass.update_password_on_user("alice", "battery staple")
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.userpass.login("alice", "correct horse")
    assert server.hvac().auth.userpass.login("alice", "battery staple")["auth"]["client_token"]
    events = json.dumps(audit_events(server, "auth.login"))
    assert "correct horse" not in events and "battery staple" not in events


def test_userpass_failures_are_rate_limited(root: hvac.Client, server: Server) -> None:
    root.auth.userpass.create_or_update_user("bob", password="pw-bob", policies=["app"])
    codes = []
    with server.http() as http:
        for _ in range(14):
            codes.append(http.post("/v1/auth/userpass/login/bob", json={"password": "guess"}).status_code)
    assert codes[0] == 400 and codes[-1] == 429
    limited = [e for e in audit_events(server, "auth.login") if e["outcome"] == "limited"]
    assert limited


def test_wrapping_single_use_and_audited(root: hvac.Client, server: Server) -> None:
    root.auth.approle.create_or_update_approle("wrapped", token_policies=["app"])
    wrapped = root.auth.approle.generate_secret_id("wrapped", wrap_ttl="5m")
    info = wrapped["wrap_info"]
    assert info["creation_path"] == "auth/approle/role/wrapped/secret-id" and info["ttl"] == 300
    assert wrapped["data"] is None
    with server.http() as http:
        looked = http.post("/v1/sys/wrapping/lookup", json={"token": info["token"]}).json()["data"]
    assert looked["creation_path"] == info["creation_path"] and looked["creation_ttl"] == 300
    unwrapped = server.hvac(info["token"]).sys.unwrap()
    secret_id = unwrapped["data"]["secret_id"]
    role_id = root.auth.approle.read_role_id("wrapped")["data"]["role_id"]
    assert server.hvac().auth.approle.login(role_id=role_id, secret_id=secret_id)["auth"]["client_token"]
    with server.http() as http:
        again = http.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]})
    assert again.status_code == 400 and again.json()["errors"] == ["wrapping token is not valid or does not exist"]
    failed = [e for e in audit_events(server, "auth.login")
              if e["details"]["method"] == "wrapping" and e["outcome"] == "error"]  # type: ignore[index]
    assert failed


def test_sixteen_unwraps_one_answer(root: hvac.Client, server: Server) -> None:
    root.secrets.kv.v2.create_or_update_secret("app/wrapme", secret={"k": "v"})
    with server.http(root.token) as http:
        answer = http.get("/v1/secret/data/app/wrapme", headers={"X-Vault-Wrap-TTL": "60"}).json()
    info = answer["wrap_info"]
    assert answer["data"] is None and info["token"]

    def unwrap(_: int) -> int:
        with server.http() as http:
            return http.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(unwrap, range(16)))
    assert codes.count(200) == 1 and codes.count(400) == 15, codes


def test_wrap_and_rewrap(root: hvac.Client, server: Server) -> None:
    with server.http(root.token) as http:
        first = http.post("/v1/sys/wrapping/wrap", json={"a": "b"}, headers={"X-Vault-Wrap-TTL": "2m"}).json()
        assert first["wrap_info"]["creation_path"] == "sys/wrapping/wrap"
        token = first["wrap_info"]["token"]
        second = http.post("/v1/sys/wrapping/rewrap", json={"token": token}).json()["wrap_info"]
        assert http.post("/v1/sys/wrapping/unwrap", json={"token": token}).status_code == 400
        data = http.post("/v1/sys/wrapping/unwrap", json={"token": second["token"]}).json()
    assert data["data"] == {"a": "b"}


def test_cubbyhole_is_per_token(root: hvac.Client, server: Server) -> None:
    mine = server.hvac(server.token("app"))
    other = server.hvac(server.token("app"))
    mine.write("cubbyhole/notes/x", value="private")
    assert mine.read("cubbyhole/notes/x")["data"] == {"value": "private"}
    assert mine.list("cubbyhole/notes")["data"]["keys"] == ["x"]
    assert mine.list("cubbyhole")["data"]["keys"] == ["notes/"]
    assert other.read("cubbyhole/notes/x") is None
    mine.delete("cubbyhole/notes/x")
    assert mine.read("cubbyhole/notes/x") is None


def test_cli_approle_and_userpass(server: Server) -> None:
    written = server.cli("--json", "approle", "role", "write", "cli-role", "--policy", "app", "--token-ttl", "5m",
                         "--secret-id-num-uses", "1")
    assert written.returncode == 0, written.stderr
    role_id = json.loads(written.stdout)["role_id"]
    read = server.cli("--json", "approle", "role", "read", "cli-role")
    assert json.loads(read.stdout)["token_ttl"] == 300 and json.loads(read.stdout)["role_id"] == role_id
    made = server.cli("approle", "secret-id", "cli-role")
    assert made.returncode == 0, made.stderr
    secret_id = made.stdout.strip()
    assert secret_id not in server.cli("--json", "audit", "list", "--limit", "100000").stdout
    auth = server.hvac().auth.approle.login(role_id=role_id, secret_id=secret_id)["auth"]
    assert auth["lease_duration"] == 300 and auth["metadata"]["role_name"] == "cli-role"

    user = server.cli("userpass", "user", "write", "dave", "--policy", "app", input="s3cret-pw\n")
    assert user.returncode == 0, user.stderr
    assert server.hvac().auth.userpass.login("dave", "s3cret-pw")["auth"]["client_token"]
    listed = json.loads(server.cli("--json", "auth", "list").stdout)["auth"]
    assert {r["type"] for r in listed} == {"token", "approle", "userpass", "jwt"}


def test_the_table_holds_no_secret_in_the_clear(root: hvac.Client, server: Server) -> None:
    import sqlite3

    root.auth.approle.create_or_update_approle("stored", token_policies=["app"])
    secret_id = root.auth.approle.generate_secret_id("stored")["data"]["secret_id"]
    root.auth.userpass.create_or_update_user("erin", password="erins-password", policies=["app"])
    holder = server.hvac(server.token("app"))
    holder.write("cubbyhole/k", value="cubby-secret-value")
    wrapped = root.auth.approle.generate_secret_id("stored", wrap_ttl="1m")["wrap_info"]["token"]
    with sqlite3.connect(server.db.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT kind, name, body FROM auth_items").fetchall()
    text = json.dumps(rows)
    for secret in (secret_id, "erins-password", "cubby-secret-value", wrapped):
        assert secret not in text
    users = [json.loads(body) for kind, name, body in rows if kind == "user" and name == "erin"]
    assert users[0]["hash"].startswith("$argon2id$")


def test_secret_id_cidrs_and_ttl(root: hvac.Client, server: Server) -> None:
    import time

    root.auth.approle.create_or_update_approle("fenced", token_policies=["app"], secret_id_bound_cidrs=["10.0.0.0/8"])
    role_id = root.auth.approle.read_role_id("fenced")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("fenced")["data"]["secret_id"]
    with pytest.raises(exceptions.InvalidRequest):  # we log in from 127.0.0.1
        server.hvac().auth.approle.login(role_id=role_id, secret_id=secret_id)
    root.auth.approle.create_or_update_approle("brief", token_policies=["app"], secret_id_ttl="1s")
    role_id = root.auth.approle.read_role_id("brief")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("brief")["data"]["secret_id"]
    time.sleep(1.5)
    with pytest.raises(exceptions.InvalidRequest):
        server.hvac().auth.approle.login(role_id=role_id, secret_id=secret_id)



def test_login_limiter_per_user_and_per_source() -> None:
    from nebula_credential.server.authcommon import LoginLimiter

    limiter = LoginLimiter()
    for _ in range(10):
        assert limiter.spent("10.0.0.1", "alice") == 0
        limiter.failed("10.0.0.1", "alice")
    assert limiter.spent("10.0.0.1", "alice") > 0  # that user, from anywhere
    assert limiter.spent("10.0.0.2", "alice") > 0
    assert limiter.spent("10.0.0.1", "bob") == 0  # another user from the same address still may
    for i in range(40):
        limiter.failed("10.0.0.1", f"user{i}")  # a spray over many names
    assert limiter.spent("10.0.0.1", "carol") > 0
    assert limiter.spent("10.0.0.3", "carol") == 0
