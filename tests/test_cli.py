"""The CLI contract of DESIGN.md: commands, --json shapes, error lines and exit codes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from .helpers import cli_env, run_cli, store_runner


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    return store_runner(tmp_path)


def test_put_get_delete_list(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("put", "a", "--value", '{"token": "t1", "user": "u"}', "--scope", "production", "--metadata", '{"team": "x"}')
    (tmp_path / "v.json").write_text('{"token": "t2"}')
    cli("put", "b", "--file", "v.json", "--scope", "user")
    cli("put", "c", input='"just a string"')
    got = json.loads(cli("--json", "get", "a").stdout)
    assert got == {"id": "a", "scope": "production", "key_version": 1, "value": {"token": "t1", "user": "u"},
                   "metadata": {"team": "x"}}
    assert cli("get", "a", "--field", "token").stdout == "t1\n"
    assert json.loads(cli("--json", "get", "c").stdout)["value"] == "just a string"
    listed = json.loads(cli("--json", "list", "--scope", "user").stdout)["credentials"]
    assert [c["id"] for c in listed] == ["b"] and "value" not in listed[0]
    cli("delete", "b")
    res = cli("get", "b", ok=False)
    assert res.returncode == 1 and res.stderr == "error: no credential 'b' in keyring 'default'\n"


def test_keys_json_shapes(cli) -> None:  # type: ignore[no-untyped-def]
    cli("put", "a", "--value", "1")
    cli("keys", "rotate", "--reason", "test")
    data = json.loads(cli("--json", "keys", "list").stdout)
    assert set(data) == {"keyring", "versions"} and data["keyring"] == "default"
    for v in data["versions"]:
        assert set(v) == {"version", "status", "created_at", "expires_at", "credentials"}
        datetime.fromisoformat(v["created_at"])
    assert [(v["version"], v["status"], v["credentials"]) for v in data["versions"]] == [(1, "valid", 1), (2, "active", 0)]
    show = json.loads(cli("--json", "keys", "show", "2").stdout)
    assert show["reason"] == "test" and "wrapped_key" not in show
    assert json.loads(cli("--json", "list", "--key-version", "1").stdout)["credentials"][0]["id"] == "a"


def test_status_json_shape(cli) -> None:  # type: ignore[no-untyped-def]
    cli("put", "a", "--value", "1")
    cli("put", "b", "--value", "2")
    cli("keys", "rotate")
    s = json.loads(cli("--json", "status").stdout)
    assert set(s) >= {"keyring", "versions", "active_version", "reencryption", "alerts"}
    assert s["active_version"] == 2
    assert s["reencryption"] == {"pending": 2, "total": 2, "progress": 0.0}
    assert isinstance(s["alerts"], list)
    cli("reencrypt")
    assert json.loads(cli("--json", "status").stdout)["reencryption"] == {"pending": 0, "total": 2, "progress": 1.0}


def test_import_jsonl_streamed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 5000
    lines = "".join(json.dumps({"id": f"i{k}", "scope": ["production", "user"][k % 2], "value": {"k": k},
                                "metadata": {"n": k}}) + "\n" for k in range(n))
    (tmp_path / "in.jsonl").write_text(lines)
    out = json.loads(cli("--json", "import", "in.jsonl").stdout)
    assert out["imported"] == n
    print(f"import: {n / out['seconds']:,.0f} credentials/s")
    assert json.loads(cli("--json", "get", "i4999").stdout)["metadata"] == {"n": 4999}
    bad = cli("import", "-", input='{"id": "x"}\n', ok=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: -:1:")


def test_lifecycle_commands(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("put", "a", "--value", "1")
    cli("keys", "rotate")
    cli("keys", "revoke", "1")
    res = cli("get", "a", ok=False)
    assert res.returncode == 1 and "keys reinstate 1" in res.stderr
    cli("keys", "reinstate", "1")
    assert json.loads(cli("--json", "get", "a").stdout)["value"] == 1
    destroy = cli("keys", "destroy", "1", ok=False)
    assert destroy.returncode == 1 and "keys revoke 1" in destroy.stderr
    out = json.loads(cli("--json", "reencrypt").stdout)
    assert out["reencrypted"] == 1 and out["failed"] == 0
    cli("keys", "revoke", "1")
    early = cli("keys", "destroy", "1", "--force", "--yes-destroy-key-version", "1", ok=False)
    assert early.returncode == 1 and "floor" in early.stderr  # --force never lowers the floor
    unconfirmed = cli("keys", "destroy", "1", "--force", ok=False)
    assert unconfirmed.returncode == 2 and "--yes-destroy-key-version 1" in unconfirmed.stderr
    # a process configured with 0 s does not lower the floor the others announced (twice 5 s) ...
    (tmp_path / "fast.toml").write_text('[keys]\nrefresh_interval = "0s"\n')
    fast = cli("--config", "fast.toml", "keys", "destroy", "1", "--force", "--yes-destroy-key-version", "1", ok=False)
    assert fast.returncode == 1 and "floor" in fast.stderr
    # ... so the destroying process's clock moves past it (libfaketime, no sleep)
    later = _clock_ahead(tmp_path, "+11s")
    kept = run_cli("--config", "fast.toml", "keys", "destroy", "1", cwd=tmp_path, env=later)
    assert kept.returncode == 1 and "--force --yes-destroy-key-version 1" in kept.stderr  # 90 days' retention
    done = run_cli("--config", "fast.toml", "keys", "destroy", "1", "--force", "--yes-destroy-key-version", "1",
                   cwd=tmp_path, env=later)
    assert done.returncode == 0, done.stderr
    assert json.loads(cli("--json", "keys", "show", "1").stdout)["status"] == "destroyed"


def test_errors_are_one_line_and_usage_errors_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    for args, code in ((("get", "nope"), 1), (("keys", "show", "9"), 1), (("keys", "revoke", "1"), 1),
                       (("bogus",), 2), (("put",), 2), (("keys", "show", "x"), 2), (("put", "a", "--value", "{bad"), 1)):
        res = cli(*args, ok=False)
        assert res.returncode == code, (args, res.stderr)
        assert re.fullmatch(r"error: [^\n]+\n", res.stderr), (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_uninitialised_store(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'none.db'}")
    res = run_cli("get", "x", cwd=tmp_path, env=env)
    assert res.returncode == 1 and "nebula-credential init" in res.stderr


def test_keyrings_are_separate(cli) -> None:  # type: ignore[no-untyped-def]
    cli("--keyring", "acme", "init")
    cli("--keyring", "acme", "put", "a", "--value", '"acme"')
    cli("put", "a", "--value", '"default"')
    assert json.loads(cli("--keyring", "acme", "--json", "get", "a").stdout)["value"] == "acme"
    assert json.loads(cli("--json", "get", "a").stdout)["value"] == "default"


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _clock_ahead(tmp_path: Path, shift: str) -> dict[str, str]:
    """The store runner's environment for a process whose clock runs ``shift`` ahead (libfaketime)."""
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime not found: run scripts/ensure-system-deps.sh (Debian package faketime)")
    return cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}", LD_PRELOAD=str(LIBFAKETIME), FAKETIME=shift)
