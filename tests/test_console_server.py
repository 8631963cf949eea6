"""The console on a real ``nebula-credential serve``: its tokens and HCL policies decide."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "console-serve") as s:
        yield s


def session(server: Server, token: str) -> tuple[httpx.Client, str]:
    """Log in through the form; the cookie is passed by hand (plain http on loopback in tests)."""
    c = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    r = c.post("/ui/login", data={"token": token})
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    match = re.search(r"nc_console=([^;]+)", cookie)
    assert match and match.group(1) != token  # the cookie holds a session, never the token
    c.headers["cookie"] = f"nc_console={match.group(1)}"
    page = c.get("/ui/keyrings/default")
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match
    return c, match.group(1)


def test_serve_has_the_console_under_its_tokens_and_policies(server: Server, tmp_path: Path) -> None:
    login = httpx.get(f"{server.url}/ui/login", timeout=30)
    assert login.status_code == 200 and "script-src 'self'" in login.headers["content-security-policy"]
    assert httpx.post(f"{server.url}/ui/login", data={"token": "ncs.nope"}, timeout=30).status_code == 403

    hcl = tmp_path / "auditor.hcl"
    hcl.write_text('path "sys/nebula/keyrings/*" { capabilities = ["read"] }\n')
    assert server.cli("policy", "write", "auditor", str(hcl)).returncode == 0
    root, auditor = server.token("root"), server.token("auditor")

    reader, reader_csrf = session(server, auditor)
    page = reader.get("/ui/keyrings/default").text
    assert "confirm?action=" not in page
    r = reader.post("/ui/keyrings/default/actions/rotate", data={"csrf": reader_csrf, "confirm": "default"})
    assert r.status_code == 403
    assert reader.get("/ui/health").status_code == 403

    admin, csrf = session(server, root)
    assert "confirm?action=rotate" in admin.get("/ui/keyrings/default").text
    r = admin.post("/ui/keyrings/default/actions/rotate", data={"csrf": csrf, "confirm": "default"})
    assert r.status_code == 303, r.text
    keys = json.loads(server.cli("--json", "keys", "list").stdout)
    assert [v["status"] for v in keys["versions"]][-1] == "active" and len(keys["versions"]) == 2
    assert "Audit chain intact" in admin.get("/ui/health").text



def test_health_and_audit_names_the_token_of_each_request_and_token_create_names_its_maker(
        server: Server) -> None:
    import getpass

    made = json.loads(server.cli("--json", "token", "create", "--policy", "root").stdout)
    assert made["display_name"] == f"cli-{getpass.getuser()}"  # not the shared "cli" any more
    bot = json.loads(server.cli("--json", "token", "create", "--policy", "root", "--display-name", "deploy-bot").stdout)
    with server.http(bot["token"]) as http:
        assert http.post("/v1/secret/data/who", json={"data": {"k": "v"}}).status_code == 200
    admin, _ = session(server, made["token"])
    page = admin.get("/ui/health").text
    assert f"deploy-bot ({bot['accessor']})" in page, page  # not the server's OS user
    assert "Audit chain intact" in page  # the event carries the name; the chain still verifies


def test_serve_exports_request_count_and_latency_by_route(server: Server) -> None:
    """The dashboard's server panels: SERVER_METRICS on /metrics, routes as mounts, never paths."""
    from prometheus_client.parser import text_string_to_metric_families

    root = server.token("root")
    with server.http(root) as http:
        assert http.get("/v1/sys/health").status_code == 200
        assert http.post("/v1/secret/data/team/db", json={"data": {"pw": "x"}}).status_code == 200
        assert http.get("/v1/secret/data/team/missing").status_code == 404
        body = http.get("/metrics").text
    samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
    counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
              for s in samples if s.name == "nebula_credential_http_requests_total"}
    assert counts[("GET", "/v1/sys", "200")] >= 1
    assert counts[("POST", "/v1/secret", "200")] >= 1
    assert counts[("GET", "/v1/secret", "404")] >= 1
    assert not any("team" in route for _, route, _ in counts)  # credential ids never become labels
    latency = [s for s in samples if s.name == "nebula_credential_http_request_duration_seconds_count"
               and s.labels["route"] == "/v1/secret"]
    assert latency and sum(s.value for s in latency) >= 2


def test_daemon_ui_serves_the_console_on_loopback_only(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from .helpers import cli_env, free_port, run_cli

    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'd.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    refused = run_cli("daemon", "--once", "--ui", "0.0.0.0:8201", cwd=tmp_path, env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("error:") and "--ui" in refused.stderr
    out = run_cli("--json", "token", "create", "--policy", "root", cwd=tmp_path, env=env)
    token = json.loads(out.stdout)["token"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nebula_credential", "daemon", "--interval", "1h",
                             "--metrics-addr", f"127.0.0.1:{free_port()}", "--ui", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}/ui"
        for _ in range(600):  # wait for it to listen
            try:
                if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        r = httpx.post(f"{base}/login", data={"token": token}, timeout=10)
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        cookie = re.search(r"nc_console=([^;]+)", r.headers["set-cookie"])
        assert cookie
        page = httpx.get(f"{base}/", headers={"cookie": f"nc_console={cookie.group(1)}"}, timeout=10)
        assert page.status_code == 200 and 'data-keyring="default"' in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
