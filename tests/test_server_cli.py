"""``token`` and ``policy`` commands for operators with store access (no server running)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import cli_env, run_cli


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    db = f"sqlite:///{tmp_path / 'store.db'}"

    def run(*args: str):  # type: ignore[no-untyped-def]
        return run_cli("--db", db, *args, cwd=tmp_path, env=env)

    assert run("init").returncode == 0
    return run


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return str(lines[0])


def test_token_create_list_revoke(cli) -> None:  # type: ignore[no-untyped-def]
    created = cli("token", "create", "--policy", "root", "--ttl", "24h")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()  # printed once, alone on stdout (the accessor goes to stderr)
    assert "accessor" in created.stderr and token not in created.stderr
    assert token.startswith("ncs.")
    listed = cli("--json", "token", "list")
    rows = json.loads(listed.stdout)["tokens"]
    assert len(rows) == 1 and rows[0]["policies"] == ["root"]
    assert token not in listed.stdout and token not in cli("token", "list").stdout
    assert cli("token", "revoke", rows[0]["accessor"]).returncode == 0
    assert json.loads(cli("--json", "token", "list").stdout)["tokens"] == []
    events = [json.loads(line) for line in cli("--json", "audit", "list").stdout.splitlines()]
    actions = {(e["action"], e["details"].get("accessor")) for e in events}
    assert {("server.token.create", rows[0]["accessor"]), ("server.token.revoke", rows[0]["accessor"])} <= actions
    assert token not in cli("--json", "audit", "list").stdout
    assert "no live token" in error_line(cli("token", "revoke", rows[0]["accessor"]))
    assert "invalid policy name" in error_line(cli("token", "create", "--policy", "Not A Name"))


def test_policy_commands(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "app.hcl"
    good.write_text('path "secret/data/app/*" { capabilities = ["read"] }\n')
    assert cli("policy", "write", "App", str(good)).returncode == 0  # names are lower-cased, as Vault does
    assert cli("policy", "read", "app").stdout.strip() == good.read_text().strip()
    assert json.loads(cli("--json", "policy", "list").stdout)["policies"] == ["app", "default", "root"]
    bad = tmp_path / "bad.hcl"
    bad.write_text('path "secret/*" { capabilities = ["read"] allowed_parameters = { "x" = [] } }\n')
    assert "unsupported setting" in error_line(cli("policy", "write", "bad", str(bad)))
    assert "built-in root" in error_line(cli("policy", "write", "root", str(good)))
    assert cli("policy", "delete", "app").returncode == 0
    actions = [json.loads(line)["action"] for line in cli("--json", "audit", "list").stdout.splitlines()]
    assert "server.policy.write" in actions and "server.policy.delete" in actions
    assert "no policy named app" in error_line(cli("policy", "read", "app"))
    assert "no policy named app" in error_line(cli("policy", "delete", "app"))
