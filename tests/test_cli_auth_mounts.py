"""``nebula-credential auth enable|list|disable`` against a running ``serve`` on the same store.

The CLI runs the operation ``sys/auth`` runs (``mounts.enable_mount`` and
``disable_mount``): a method it enables is routed by the server within the
mount table's refresh bound, one the server enabled is listed by the CLI, a
disable removes the method's roles and users, and each change is audited.
Errors are one ``error:`` line and exit code 1; ``--json`` gives one document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "cli-auth-mounts") as s:
        s.root = s.token("root")
        yield s


def _json(server: Server, *args: str) -> dict:  # type: ignore[type-arg]
    out = server.cli("--json", *args)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def _routed(server: Server, path: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with server.http() as anon:
            status = anon.post(f"/v1/auth/{path}/login/nobody", json={"password": "x"}).status_code
        if status != 404 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_enable_from_the_cli_is_routed_by_the_server(server: Server) -> None:
    made = _json(server, "auth", "enable", "userpass", "--path", "people", "--description", "staff")
    assert made["path"] == "people/" and made["type"] == "userpass" and made["accessor"].startswith("auth_userpass_")
    assert _routed(server, "people") == 400  # a userpass login route now: refused credentials, not 404
    with server.http(server.root) as http:
        listed = http.get("/v1/sys/auth").json()["data"]
        assert listed["people/"]["type"] == "userpass" and listed["people/"]["description"] == "staff"
        assert listed["people/"]["accessor"] == made["accessor"]
        r = http.post("/v1/auth/people/users/dana", json={"password": "pw", "token_policies": ["default"]})
        assert r.status_code == 204
    rows = {r["path"]: r for r in _json(server, "auth", "list")["auth"]}
    assert rows["people/"]["entries"] == 1 and rows["token/"]["entries"] is None
    events = [json.loads(line) for line in server.cli("--json", "audit", "list", "--all-keyrings", "--action",
                                                      "auth.enable").stdout.splitlines() if line.strip()]
    assert any(e["details"]["mount"] == "auth/people" and e["details"]["type"] == "userpass" for e in events)


def test_the_cli_lists_what_the_server_enabled_and_disables_it_with_its_data(server: Server) -> None:
    with server.http(server.root) as http:
        assert http.post("/v1/sys/auth/machines", json={"type": "approle"}).status_code == 204
        assert http.post("/v1/auth/machines/role/web", json={"token_policies": ["default"]}).status_code == 204
    rows = {r["path"]: r for r in _json(server, "auth", "list")["auth"]}
    assert rows["machines/"]["type"] == "approle" and rows["machines/"]["entries"] == 1
    human = server.cli("auth", "list")
    assert human.returncode == 0 and "machines/" in human.stdout and "1 role" in human.stdout
    gone = _json(server, "auth", "disable", "machines")
    assert gone == {"path": "machines/", "disabled": True, "type": "approle"}
    assert _json(server, "auth", "disable", "machines")["disabled"] is False  # as Vault: nothing to disable is fine
    with server.http(server.root) as http:
        assert "machines/" not in http.get("/v1/sys/auth").json()["data"]
        assert http.post("/v1/sys/auth/machines", json={"type": "approle"}).status_code == 204
        assert http.get("/v1/auth/machines/role/web").status_code == 404  # the old role went with the mount


@pytest.mark.parametrize(("args", "message"), [
    (("auth", "enable", "ldap"), "plugin not found in the catalog: ldap"),
    (("auth", "enable", "approle", "--path", "bad path"), "mount path 'bad path' is not allowed"),
    (("auth", "disable", "token"), "token credential backend cannot be disabled"),
])
def test_errors_are_one_line_and_exit_1(server: Server, args: tuple[str, ...], message: str) -> None:
    out = server.cli(*args)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_enabling_a_taken_path_is_refused(server: Server) -> None:
    assert server.cli("auth", "enable", "jwt", "--path", "ci").returncode == 0
    out = server.cli("auth", "enable", "userpass", "--path", "ci")
    assert out.returncode == 1 and "path is already in use at auth/ci/" in out.stderr


def test_auth_has_enable_list_and_disable() -> None:
    from nebula_credential.cli.auth import auth

    assert {"enable", "disable", "list"} <= set(auth.commands)


def test_roles_and_users_go_to_an_enabled_mount_of_the_right_type(server: Server) -> None:
    assert server.cli("auth", "enable", "userpass", "--path", "staff").returncode == 0
    assert server.cli("auth", "enable", "approle", "--path", "apps").returncode == 0
    user = server.cli("userpass", "user", "write", "ivy", "--policy", "reader", "--mount", "staff", input="ivy-pw\n")
    assert user.returncode == 0, user.stderr
    role = _json(server, "approle", "role", "write", "svc", "--policy", "reader", "--mount", "apps")
    assert _json(server, "approle", "role", "read", "svc", "--mount", "apps")["role_id"] == role["role_id"]
    secret = server.cli("approle", "secret-id", "svc", "--mount", "apps")
    assert secret.returncode == 0, secret.stderr
    with server.http() as anon:
        assert anon.post("/v1/auth/staff/login/ivy", json={"password": "ivy-pw"}).status_code == 200
        r = anon.post("/v1/auth/apps/login", json={"role_id": role["role_id"], "secret_id": secret.stdout.strip()})
        assert r.status_code == 200, r.text
    # a mount that is not enabled, or of another type: refused, nothing written
    for args in (("userpass", "user", "write", "ivy", "--policy", "reader", "--mount", "nowhere"),
                 ("approle", "role", "write", "svc", "--policy", "reader", "--mount", "staff")):
        out = server.cli(*args, input="pw\n")
        assert out.returncode == 1 and "enable it first with `nebula-credential auth enable" in out.stderr, out.stderr
