"""Issue 14: what a new user trips on, through the real CLI (stdout is not a terminal here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
import pytest

import nebula_credential as nc
from nebula_credential.cli import cli as root_command

from .helpers import cli_env, dump, free_port, run_cli, store_runner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An initialised store named by the environment, and a runner."""
    return store_runner(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))


# ---- 1. global options anywhere -------------------------------------------------
def test_global_options_are_accepted_before_or_after_the_command(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store("put", "a", "--scope", "production", input='{"k": 1}')
    before = json.loads(store("--json", "keys", "list").stdout)
    after = json.loads(store("keys", "list", "--json").stdout)
    middle = json.loads(store("keys", "--json", "list").stdout)
    assert before == after == middle and before["keyring"] == "default"
    (tmp_path / "o").mkdir()
    other = tmp_path / "o" / "other.db"  # its own folder: a key file is never shared silently
    run_cli("init", "--db", f"sqlite:///{other}", cwd=tmp_path, env=cli_env())
    assert other.exists()
    listed = json.loads(store("list", f"--db=sqlite:///{other}", "--json").stdout)
    assert listed == {"credentials": []}
    (tmp_path / "typo.toml").write_text("[keys]\ngrace = '1h'\n")
    res = store("status", "--config", "typo.toml", ok=False)  # the config after the command is read
    assert res.returncode == 1 and "keys.grace" in res.stderr
    res = store("get", "a", "--keyring", "tenant-b", ok=False)
    assert res.returncode == 1 and "tenant-b" in res.stderr
    # after "--" nothing is taken as a global option: this stores an id "--json"
    assert store("put", "--", "--json", input="1").stdout.startswith("stored --json ")


# ---- 2. reads never create a file; no store configured; config discovery -----------
@pytest.mark.parametrize("command", [("get", "x"), ("keys", "list"), ("status",), ("list",)])
def test_a_read_with_nothing_configured_creates_nothing_and_says_how_to_name_a_store(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    env = cli_env(XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    res = run_cli(*command, cwd=tmp_path, env=env)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: no store configured")
    for hint in ("--db", "NEBULA_CREDENTIAL_DB", "nebula-credential.toml", "config.toml"):
        assert hint in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_doctor_with_no_store_reports_it_as_a_finding_and_creates_nothing(tmp_path: Path) -> None:
    res = run_cli("--json", "doctor", cwd=tmp_path, env=cli_env(XDG_CONFIG_HOME=str(tmp_path / "xdg")))
    finding = json.loads(res.stdout)[0]
    assert res.returncode == 1 and finding["check"] == "store" and "no store configured" in finding["message"]
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_db_path_is_an_error_and_creates_no_file(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = store("--db", f"sqlite:///{tmp_path / 'typo.db'}", "get", "x", ok=False)
    assert res.returncode == 1 and "no store at" in res.stderr and "typo.db" in res.stderr
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(nc.StoreError, match="does not exist"):
        nc.open(f"sqlite:///{tmp_path / 'typo2.db'}")
    assert not (tmp_path / "typo2.db").exists()


def test_config_is_discovered_in_the_usual_places_in_order(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "nebula-credential").mkdir(parents=True)
    env = cli_env(XDG_CONFIG_HOME=str(xdg))
    (xdg / "nebula-credential" / "config.toml").write_text(f'[store]\nurl = "sqlite:///{tmp_path / "x.db"}"\n')
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "x.db").exists() and not (tmp_path / "nebula-credential.db").exists()
    (tmp_path / "l").mkdir()
    local = tmp_path / "l" / "local.db"
    (tmp_path / "nebula-credential.toml").write_text(f'[store]\nurl = "sqlite:///{local}"\n')
    res = run_cli("keys", "list", cwd=tmp_path, env=env)  # ./nebula-credential.toml wins over XDG
    assert res.returncode == 1 and "local.db" in res.stderr
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0 and local.exists()


# ---- 3. init on an initialised store; a missing key file -------------------------------
def test_init_twice_says_already_initialised_and_changes_nothing(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store("put", "a", input="1")
    rows, key = dump(tmp_path / "c.db"), (tmp_path / "master.key").read_bytes()
    res = store("init")
    assert "already initialised" in res.stdout and "nothing changed" in res.stdout
    assert dump(tmp_path / "c.db") == rows and (tmp_path / "master.key").read_bytes() == key
    assert json.loads(store("--json", "init").stdout)["already_initialised"] is True


def test_missing_key_file_names_where_it_was_expected_and_does_not_suggest_init(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "master.key").rename(tmp_path / "elsewhere.key")
    res = store("get", "a", ok=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "is missing" in res.stderr and str(tmp_path / "master.key") in res.stderr
    assert "run `nebula-credential init`" not in res.stderr


# ---- 4. daemon without the metrics extra ------------------------------------------
def test_daemon_runs_without_the_metrics_extra_and_says_so_once(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "prometheus_client.py").write_text("raise ImportError('prometheus_client blocked for this test')\n")
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{env['PYTHONPATH']}"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nebula_credential", "daemon", "--interval", "1h",
                             "--metrics-addr", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = None
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                if health["passes"] >= 1:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        assert health is not None and health["status"] == "ok" and health["passes"] >= 1
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert err.value.code == 501 and "nebula-credential[metrics]" in err.value.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stderr.count("/metrics is disabled") == 1
    serving = [line for line in stderr.splitlines() if "serving " in line]
    assert serving and all("/metrics" not in line for line in serving), serving  # not claimed as served


# ---- 5. streamed list with paging ---------------------------------------------------
def test_list_streams_plain_lines_in_id_order_with_limit_and_after(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines = "".join(json.dumps({"id": f"svc-{i:04d}", "scope": "user", "value": {"t": i}}) + "\n" for i in range(2500))
    (tmp_path / "in.jsonl").write_text(lines)
    store("import", "in.jsonl")
    out = store("list").stdout.splitlines()
    assert len(out) == 2500 and out[0].split("\t")[:3] == ["svc-0000", "user", "v1"]
    assert not any(ch in store("list").stdout for ch in "┃│┏")  # no table off a terminal
    page = store("list", "--limit", "3", "--after", "svc-0997").stdout.splitlines()
    assert [line.split("\t")[0] for line in page] == ["svc-0998", "svc-0999", "svc-1000"]
    data = json.loads(store("list", "--json", "--after", "svc-2497").stdout)
    assert [c["id"] for c in data["credentials"]] == ["svc-2498", "svc-2499"]


# ---- 6. import: --on-existing, progress, counts -------------------------------------------
def test_import_defaults_to_fail_before_writing_and_counts_skip_and_overwrite(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store("put", "b", input='{"old": true}')
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"id": i, "value": {"v": i}}) + "\n" for i in ("a", "b", "c")))
    rows = dump(tmp_path / "c.db")
    res = store("import", "in.jsonl", ok=False)
    assert res.returncode == 1 and "in.jsonl:2" in res.stderr and "already exists" in res.stderr
    assert dump(tmp_path / "c.db") == rows
    skipped = json.loads(store("--json", "import", "in.jsonl", "--on-existing", "skip").stdout)
    assert (skipped["created"], skipped["overwritten"], skipped["skipped"]) == (2, 0, 1)
    assert json.loads(store("--json", "get", "b").stdout)["value"] == {"old": True}
    over = store("import", "in.jsonl", "--on-existing", "overwrite")
    assert "0 new, 3 overwritten, 0 skipped" in over.stdout
    assert re.search(r"^import: 3/3 \(100\.0%\)", over.stderr, re.M)  # progress on stderr
    assert json.loads(store("--json", "get", "b").stdout)["value"] == {"v": "b"}


# ---- 7. no wrapping or truncation off a terminal ------------------------------------------
def test_long_lines_are_never_wrapped_or_cut_when_not_a_terminal(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long_id = "team-" + "x" * 150 + "/token"
    out = store("put", long_id, "--scope", "production", input="1").stdout
    assert out == f"stored {long_id} (scope production, revision 1)\n"
    assert store("list").stdout.startswith(long_id + "\t")
    (tmp_path / "master.key").chmod(0o644)
    doctor = store("doctor", ok=False).stdout
    assert f"fix: chmod 600 {tmp_path / 'master.key'}\n" in doctor


# ---- 8. doctor's checks agree -----------------------------------------------------------------
def test_doctor_with_a_wrong_root_key_reports_one_error_first(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store("put", "a", input="1")
    other = tmp_path / "other"
    other.mkdir()
    assert run_cli("init", cwd=other, env=cli_env()).returncode == 0
    (tmp_path / "master.key").write_bytes((other / "master.key").read_bytes())
    res = store("--json", "doctor", ok=False)
    findings = json.loads(res.stdout)
    assert res.returncode == 1 and findings[0]["check"] == "root-key" and findings[0]["severity"] == "error"
    assert "another root key" in findings[0]["message"] and findings[0]["fix"]
    assert not [f for f in findings if f["check"] in ("key-versions", "provider") and f["severity"] == "ok"]


# ---- 9. URLs, not reprs ---------------------------------------------------------------------
def test_messages_print_the_store_url_not_a_repr(tmp_path: Path) -> None:
    res = run_cli("init", "--db", f"sqlite:///{tmp_path / 'r.db'}", cwd=tmp_path, env=cli_env())
    assert f"sqlite:///{tmp_path / 'r.db'}" in res.stdout and "<SqliteStore" not in res.stdout


# ---- 10. help ------------------------------------------------------------------------------------
def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = [(prefix or "nebula-credential", group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, f"{prefix} {name}".strip())
        else:
            out.append((f"{prefix} {name}".strip(), command))
    return out


def test_every_option_has_help_text() -> None:
    missing = [f"{path} {param.opts[0]}" for path, command in _commands(root_command)
               for param in command.params if isinstance(param, click.Option) and not param.help]
    assert missing == []


def test_help_states_exit_codes_examples_and_completion(tmp_path: Path) -> None:
    env = cli_env()
    top = run_cli("--help", cwd=tmp_path, env=env).stdout
    assert "Examples:" in top and "_NEBULA_CREDENTIAL_COMPLETE=bash_source nebula-credential" in top
    assert "Exit status" in run_cli("doctor", "--help", cwd=tmp_path, env=env).stdout
    assert "Exit status" in run_cli("audit", "verify", "--help", cwd=tmp_path, env=env).stdout
    assert "Example" in run_cli("list", "--help", cwd=tmp_path, env=env).stdout


# ---- 11. keys list shows retired versions' dates; the demo's last lines -------------------------
def test_keys_list_shows_expiry_and_retirement_of_retired_versions(store) -> None:  # type: ignore[no-untyped-def]
    store("keys", "rotate")
    store("keys", "revoke", "1")
    row = next(line for line in store("keys", "list").stdout.splitlines() if re.match(r"\W*1\W", line))
    assert "revoked" in row and re.search(r"\d{4}-\d\d-\d\d .*revoked \d{4}-\d\d-\d\d", row)


def test_demo_ends_with_the_three_commands_to_run_next(tmp_path: Path) -> None:
    res = run_cli("demo", "--count", "30", cwd=tmp_path, env=cli_env())
    assert res.returncode == 0, res.stderr
    tail = res.stdout.rstrip("\n").splitlines()[-4:]
    assert tail[0] == "next, on a store of your own:"
    assert [line.split()[1] for line in tail[1:]] == ["init", "put", "doctor"]
    assert "--value" not in res.stdout


# ---- 12. packaging ------------------------------------------------------------------------------------
def test_license_classifiers_urls_and_one_version_source() -> None:
    import tomllib

    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert any(c.startswith("Topic :: Security") for c in project["classifiers"])
    assert {"Homepage", "Source", "Issues"} <= set(project["urls"])
    res = run_cli("--version", cwd=ROOT, env=cli_env())
    assert res.stdout.strip().endswith(nc.__version__)


@pytest.mark.slow
def test_the_wheel_carries_the_license(tmp_path: Path) -> None:
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nebula_credential-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_readme_tour_runs_top_to_bottom(tmp_path: Path) -> None:
    """Every command of the README's CLI tour, in order, from an empty folder (daemon and adopt aside)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    block = text.split("## CLI tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    env = cli_env()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the tour's inputs, as in a clone
    ran = []
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].strip()
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = value
            continue
        if not line.startswith("nebula-credential ") or line.split()[1] in ("daemon", "adopt"):
            continue
        words = [w.replace("/backups/", f"{tmp_path}/backups/") for w in shlex.split(line)]
        (tmp_path / "backups").mkdir(exist_ok=True)
        stdin = None
        if "<" in words:
            stdin = (tmp_path / words[words.index("<") + 1]).read_text()
            words = words[:words.index("<")]
        res = run_cli(*words[1:], cwd=tmp_path, env=env, input=stdin)
        assert res.returncode == 0, f"{line}: {res.stderr}"
        ran.append(words[1])
    assert {"init", "put", "get", "import", "list", "keys", "reencrypt", "doctor"} <= set(ran)


# ---- issue 29, 11: a scope that differs from a configured one only by case is refused ----------
def test_a_scope_differing_from_a_priority_scope_only_by_case_is_refused_naming_it(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = store("put", "a", "--value", '{"k": 1}', "--scope", "Production", ok=False)
    assert res.returncode == 1 and "did you mean 'production'?" in res.stderr, res.stderr
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "b", "scope": "USER", "value": {"k": 1}}) + "\n")
    res = store("import", "in.jsonl", ok=False)
    assert res.returncode == 1 and "did you mean 'user'?" in res.stderr, res.stderr
    store("put", "c", "--value", '{"k": 1}', "--scope", "Staging")  # not a configured scope: any case is a name
    assert json.loads(store("--json", "list").stdout)["credentials"][0]["id"] == "c"
