"""Start-up of the command line: a command imports only what it uses (issue 27, target 6).

Checked by what a fresh interpreter has imported, never by a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from nebula_credential.cli import COMMANDS, cli
from nebula_credential.cli._lazy import LazyGroup

from .helpers import cli_env

#: Modules ``--help`` must not import: the store and providers (and with them
#: cryptography, sqlite3), rich's tables, the HTTP server, asyncio.
HEAVY = ("cryptography", "sqlite3", "rich", "rich.table", "asyncio", "nebula_credential.store",
         "nebula_credential.providers", "nebula_credential.server", "nebula_credential.vault",
         "nebula_credential.keys", "nebula_credential.maintenance", "nebula_credential.cli.credentials")

_PROBE = r"""
import json, sys
from nebula_credential.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
sys.stdout.flush()
print("\n" + json.dumps(sorted(sys.modules)), file=sys.stderr)
raise SystemExit(rc)
"""


def _imported(*argv: str, cwd: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [("--help",), ("keys", "--help"), ("--version",)])
def test_help_imports_nothing_heavy(argv: tuple[str, ...], tmp_path) -> None:  # type: ignore[no-untyped-def]
    modules = _imported(*argv, cwd=str(tmp_path))
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert not [m for m in modules if m.startswith("nebula_credential.server")]


def test_get_imports_neither_rich_nor_the_server_nor_asyncio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = cli_env()
    db = f"sqlite:///{tmp_path / 'nc.db'}"
    for args, stdin in ((["--db", db, "init"], None), (["--db", db, "put", "x"], '{"a": 1}')):
        proc = subprocess.run([sys.executable, "-m", "nebula_credential", *args], cwd=tmp_path, env=env,
                              input=stdin, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    modules = _imported("--db", db, "get", "x", cwd=str(tmp_path))
    assert "nebula_credential.cli.credentials" in modules
    for heavy in ("rich", "asyncio", "nebula_credential.server", "nebula_credential.maintenance",
                  "nebula_credential.cli.ops", "nebula_credential.transit"):
        assert heavy not in modules, heavy
    # what only a destroy, a re-encryption, a retry, a legacy read or a mistyped command needs
    for unused in ("greenlet", "nebula_credential._bridge", "socket", "difflib", "random",
                   "nebula_credential.destroy_guard", "nebula_credential.policies", "nebula_credential.holds",
                   "nebula_credential.reencrypt", "nebula_credential.lifecycle", "nebula_credential.legacy"):
        assert unused not in modules, unused


def _groups() -> list[tuple[str, LazyGroup]]:
    ctx = click.Context(cli)
    found: list[tuple[str, LazyGroup]] = [("", cli)]
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if isinstance(command, LazyGroup):
            found.append((name, command))
    return found


@pytest.mark.parametrize("limit", [30, 45, 60, 80, 200])
def test_listed_short_help_matches_each_command(limit: int) -> None:
    """The help kept beside each lazy name is the command's own (so --help reads as before)."""
    ctx = click.Context(cli)
    for path, group in _groups():
        for name, lazy in group.lazy.items():
            command = group.load(name)
            listed = click.Command(name, help=lazy.short_help).get_short_help_str(limit)
            assert listed == command.get_short_help_str(limit), \
                f"{path} {name}"
    assert set(COMMANDS) <= set(cli.list_commands(ctx))


def test_vault_maintain_works_without_the_package_importing_the_operations_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    probe = (
        "import sys\n"
        "from nebula_credential.opening import open\n"
        "assert 'nebula_credential.maintenance' not in sys.modules\n"
        f"v = open('sqlite:///{tmp_path / 'm.db'}', create=True)\n"
        "assert isinstance(v.status(), dict)\n"
        "v.maintain()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
