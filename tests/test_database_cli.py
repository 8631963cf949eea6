"""``nebula-credential db``: connections, static and dynamic roles, rotation and leases from the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from .fixtures_dbengine import DbTarget
from .helpers import cli_in_process


def test_db_commands(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, db_target: DbTarget) -> None:
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    monkeypatch.setattr("sys.stdin", io.StringIO(db_target.root_password + "\n"))
    run("db", "config", "write", "pg", "--connection-url", db_target.url, "--username", db_target.root,
        "--password-stdin", "--allowed-roles", "*")
    shown = json.loads(run("--json", "db", "config", "read", "pg").stdout)
    assert shown["connection_details"]["username"] == db_target.root
    assert db_target.root_password not in json.dumps(shown)
    run("db", "static-role", "write", "app", "--db-name", "pg", "--username", db_target.app_user,
        "--rotation-period", "1h", "--strategy", "alternating", "--grace-period", "5m")
    creds = json.loads(run("--json", "db", "static-role", "creds", "app").stdout)
    assert db_target.can_login(creds["username"], creds["password"])
    run("db", "rotate", "app")
    again = json.loads(run("--json", "db", "static-role", "creds", "app").stdout)
    assert again["username"] != creds["username"] and again["previous"]["username"] == creds["username"]
    listing = json.loads(run("--json", "db", "static-role", "list").stdout)
    assert listing[0]["name"] == "app" and listing[0]["strategy"] == "alternating" and listing[0]["next_rotation"]
    timeline = json.loads(run("--json", "db", "static-role", "timeline", "app").stdout)
    assert [t["state"] for t in timeline] == ["grace", "current"]
    run("db", "role", "write", "ro", "--db-name", "pg", "--default-ttl", "1h", "--creation-statement",
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'")
    made = json.loads(run("--json", "db", "creds", "ro").stdout)
    assert made["lease_duration"] == 3600 and made["lease_id"].startswith("database/creds/ro/")
    assert db_target.can_login(made["data"]["username"], made["data"]["password"])
    run("db", "leases", "revoke", made["lease_id"])
    assert not db_target.role_exists(made["data"]["username"])
    run("db", "rotate", "--root", "pg")
    assert not db_target.can_login(db_target.root, db_target.root_password)
    failed = run("db", "static-role", "read", "missing", ok=False)
    assert failed.returncode != 0 and "missing" in failed.stderr
    # read, list and delete of each kind of item (one factory makes them for all three)
    assert json.loads(run("--json", "db", "role", "list").stdout) == ["ro"]
    assert json.loads(run("--json", "db", "role", "read", "ro").stdout)["db_name"] == "pg"
    assert json.loads(run("--json", "db", "config", "list").stdout) == ["pg"]
    assert json.loads(run("--json", "db", "role", "delete", "ro").stdout) == {"deleted": "ro"}
    assert "static role app deleted" in run("db", "static-role", "delete", "app").stdout
    assert json.loads(run("--json", "db", "role", "list").stdout) == []
    assert run("db", "static-role", "read", "app", ok=False).returncode != 0
    # the maintain pass of the database keyring runs the engine's scheduler
    report = json.loads(run("--json", "--keyring", "database/database", "maintain").stdout)
    assert "database" in report["database"]
