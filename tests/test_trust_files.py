"""Trust boundary, issue 13 section 4 (files): key and store files are what they claim.

Every check runs the real CLI in a subprocess; the FIFO case has a timeout
because today's code blocks forever opening one.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nebula_credential.providers.local import LocalKeyProvider

from .helpers import cli_env, run_cli


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "home"
    folder.mkdir()
    folder.chmod(0o700)
    return folder, cli_env(NEBULA_CREDENTIAL_DB="sqlite:///c.db")


def _init_and_put(folder: Path, env: dict[str, str]) -> None:
    res = run_cli("init", cwd=folder, env=env)
    assert res.returncode == 0, res.stderr
    assert run_cli("put", "a", "--value", '{"v": 1}', cwd=folder, env=env).returncode == 0


def _error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1 and res.stderr.startswith("error:") and "Traceback" not in res.stderr, res.stderr
    return res.stderr


def test_a_fifo_in_place_of_the_key_file_is_refused_at_once(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    _init_and_put(folder, env)
    (folder / "master.key").unlink()
    os.mkfifo(folder / "master.key", 0o600)
    for args in (("get", "a"), ("list",), ("doctor",)):
        res = run_cli(*args, cwd=folder, env=env, timeout=60)  # today: blocks forever in open()
        assert "not a regular file" in (res.stdout + res.stderr), (args, res.stdout, res.stderr)
    # and init never writes into or adopts it
    (folder / "c.db").unlink()
    assert "already exists" in _error(run_cli("init", cwd=folder, env=env, timeout=60))
    assert "not a regular file" in _error(
        run_cli("init", "--key-file", "master.key", cwd=folder, env=env, timeout=60))


def test_a_device_behind_a_symlink_is_refused(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    _init_and_put(folder, env)
    (folder / "master.key").unlink()
    (folder / "master.key").symlink_to("/dev/zero")
    assert "not a regular file" in _error(run_cli("get", "a", cwd=folder, env=env, timeout=60))


@pytest.mark.parametrize(("mode", "ok"), [(0o600, True), (0o400, True), (0o640, False), (0o604, False),
                                          (0o700, False), (0o660, False)])
def test_key_file_mode(home: tuple[Path, dict[str, str]], mode: int, ok: bool) -> None:
    folder, env = home
    _init_and_put(folder, env)
    (folder / "master.key").chmod(mode)
    res = run_cli("get", "a", cwd=folder, env=env)
    if ok:
        assert res.returncode == 0, res.stderr
    else:
        assert f"{mode:04o}" in _error(res) and "chmod 600" in res.stderr


@pytest.mark.parametrize(("dir_mode", "ok"), [(0o700, True), (0o755, True), (0o770, False), (0o777, False),
                                              (0o1777, True), (0o1770, True)])
def test_key_file_folder_others_can_write(home: tuple[Path, dict[str, str]], dir_mode: int, ok: bool) -> None:
    folder, env = home
    _init_and_put(folder, env)
    folder.chmod(dir_mode)
    res = run_cli("get", "a", cwd=folder, env=env)
    if ok:  # private, or sticky and ours: nobody else can replace the file
        assert res.returncode == 0, res.stderr
    else:
        assert "writable by group or others" in _error(res)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_key_file_of_another_user_is_refused(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    _init_and_put(folder, env)
    os.chown(folder / "master.key", 65534, 65534)
    assert "belongs to another user" in _error(run_cli("get", "a", cwd=folder, env=env))


def test_init_never_adopts_an_existing_key_file_unless_named(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    planted = LocalKeyProvider.create(folder / "master.key")  # e.g. left by someone, or by an old store
    before = (folder / "master.key").read_bytes()
    err = _error(run_cli("init", cwd=folder, env=env))
    assert "already exists" in err and "--key-file" in err
    assert not (folder / "c.db").exists() or run_cli("get", "a", cwd=folder, env=env).returncode == 1
    assert (folder / "master.key").read_bytes() == before
    # naming it adopts it, after the same checks
    (folder / "master.key").chmod(0o644)
    assert "0644" in _error(run_cli("init", "--key-file", "master.key", cwd=folder, env=env))
    (folder / "master.key").chmod(0o600)
    res = run_cli("--json", "init", "--key-file", "master.key", cwd=folder, env=env)
    assert res.returncode == 0, res.stderr
    assert planted.root_key_id() in res.stdout
    assert run_cli("put", "a", "--value", "1", cwd=folder, env=env).returncode == 0
    # a new path named with --key-file is created there, exclusively
    other = folder / "second"
    other.mkdir(mode=0o700)
    env2 = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{other / 'd.db'}")
    assert run_cli("init", "--key-file", str(other / "k.key"), cwd=folder, env=env2).returncode == 0
    assert stat.S_IMODE((other / "k.key").stat().st_mode) == 0o600


HOLDER = """
import sys
import nebula_credential as nc
with nc.open("sqlite:///c.db", create=True) as v:
    v.put("a", 1)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_store_and_key_files_are_private_whatever_the_umask(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    # a process with umask 0 creates the store and holds it open (the -wal and -shm exist meanwhile)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=folder, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.umask(0))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    finally:
        proc.communicate("\n", timeout=60)
    assert set(modes) == {"c.db", "c.db-wal", "c.db-shm", "master.key"}, modes
    assert all(m == 0o600 for m in modes.values()), modes


SECRET_READER = """
import sys
from nebula_credential.config import secret_from
from nebula_credential.exceptions import ConfigError
from nebula_credential.legacy import read_key_material
for read in (lambda: secret_from({"token_file": sys.argv[1]}, "token"),
             lambda: read_key_material(key_file=sys.argv[1])):
    try:
        read()
    except ConfigError as exc:
        print(exc)
"""


def test_a_fifo_named_as_a_secret_or_legacy_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    res = subprocess.run([sys.executable, "-c", SECRET_READER, str(fifo)], env=cli_env(),
                         capture_output=True, text=True, timeout=60)  # today: blocks forever
    token, legacy = res.stdout.splitlines()
    assert token.startswith("provider.token_file:") and "not a regular file" in token, res.stderr
    assert legacy.startswith("--key-file:") and "not a regular file" in legacy


STARTER = """
import sys
import nebula_credential as nc
sys.stdin.readline()
with nc.open("sqlite:///c.db", create=True) as v:
    print(v.provider.root_key_id())
"""


def test_processes_starting_on_a_new_store_at_once_share_one_new_key(home: tuple[Path, dict[str, str]]) -> None:
    """Exclusive key-file creation must not break N workers of one app opening a new store together."""
    folder, env = home
    for round_ in range(3):
        for p in folder.iterdir():
            p.unlink()
        procs = [subprocess.Popen([sys.executable, "-c", STARTER], cwd=folder, env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(6)]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), (round_, [o[1][-500:] for o in outs])
        assert len({o[0] for o in outs}) == 1  # one root key, the one in master.key
        with sqlite3.connect(folder / "c.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM audit_events WHERE action = 'store.init'").fetchone()[0] == 1
