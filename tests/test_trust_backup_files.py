"""Issue 31 item 3: backup and restore files are created safely in a folder another user can reach.

The finding: ``backup create`` made the file with O_EXCL, then SQLite
re-opened it *by path*; a second OS user who could write the backup folder
swapped the name for a symbolic link in between and another of the
operator's stores was overwritten (won 7 of 7 races).  Restore's working
file had the same gap.  Now the folder is checked and refused with the
reason, and even with that check bypassed the attacker never wins: the
copy is made in a private folder and linked into place through the
checked folder's descriptor.

The races run a real second OS user (created for the session, removed
after) with ``runuser``; they are skipped unless the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import create_sqlite_backup, manifest_path
from nebula_credential.exceptions import BackupError
from nebula_credential.restore import restore_backup

from .helpers import FakeClock

KEEP = timedelta(days=30)
RACES = 200
RESTORE_RACES = 40

#: The attacker: spins on the next expected name of each pattern; the moment it is a regular
#: file, swaps it for a link to a victim (alternately the other store and the planted name).
ATTACK = r"""
import os, stat, sys
folder, victim, planted, stop, *patterns = sys.argv[1:]
index = {p: 0 for p in patterns}
won = 0
spins = 0
while True:
    spins += 1
    if spins % 20000 == 0 and os.path.exists(stop):
        break
    for p in patterns:
        i = index[p]
        path = os.path.join(folder, p.format(i=i))
        try:
            st = os.lstat(path)
        except OSError:
            if os.path.lexists(os.path.join(folder, p.format(i=i + 1))):
                index[p] = i + 1  # missed that one: follow the operator
            continue
        index[p] = i + 1
        if not stat.S_ISREG(st.st_mode):
            continue
        try:
            os.unlink(path)
            os.symlink(victim if won % 2 == 0 else planted, path)
            won += 1
        except OSError:
            pass
print(won)
"""


@pytest.fixture(scope="session")
def attacker() -> Iterator[str]:
    """A throwaway second OS user, removed after the session."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root (to create a second OS user) and useradd/runuser")
    name = f"nc_attacker_{secrets.token_hex(4)}"
    subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def arena() -> Iterator[Path]:
    """A folder the second user can reach (the test's tmp_path is 0700 all the way up)."""
    base = Path(tempfile.mkdtemp(prefix="nc-race-", dir="/tmp"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def live(tmp_path: Path, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock)
    for i in range(3):
        v.put(f"c{i}", {"i": i})
    yield v
    v.close()


def _victims(arena: Path) -> tuple[Path, Path]:
    """Another store of the operator's (0600), and a name inside the operator's 0700 folder."""
    victim = arena / "other-store.db"
    conn = sqlite3.connect(victim)
    conn.execute("CREATE TABLE credentials (id TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO credentials VALUES ('theirs', 'their data')")
    conn.commit()
    conn.close()
    victim.chmod(0o600)
    private = arena / "private"
    private.mkdir(mode=0o700)
    return victim, private / "planted.db"


@pytest.fixture
def race(attacker: str, arena: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path, Path]]:
    """A 0777 folder with the second user racing in it; yields (folder, victim, planted).

    The names it watches are the test's indirect parameter.
    """
    patterns = [p.replace("{pid}", str(os.getpid())) for p in request.param]
    shared = arena / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim, planted = _victims(arena)
    script = arena / "attack.py"
    script.write_text(ATTACK)
    script.chmod(0o644)
    stop = arena / "stop"
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no system python3 the second user can run")
    proc = subprocess.Popen(
        ["runuser", "-u", attacker, "--", python, str(script), str(shared), str(victim), str(planted),
         str(stop), *patterns],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # the attacker is polling before the first race
    try:
        yield shared, victim, planted
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
    # the attacker really ran and swapped names (at least the finished files)
    assert out.strip().isdigit() and int(out) > 0, out


def test_a_folder_others_can_write_is_refused_with_the_reason(live: nc.Vault, tmp_path: Path) -> None:
    for mode, who in ((0o777, "group and others"), (0o770, "group"), (0o703, "others")):
        shared = tmp_path / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        with pytest.raises(BackupError, match=rf"{shared}: it is writable by {who} \(mode 0{mode:o}\)"):
            create_sqlite_backup(live, shared / "b.db", keep=KEEP)
        assert list(shared.iterdir()) == []
    # sticky and ours: others may create names but cannot rename or remove ours
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    create_sqlite_backup(live, sticky / "b.db", keep=KEEP)
    assert stat.S_IMODE((sticky / "b.db").stat().st_mode) == 0o600


def test_a_folder_owned_by_another_user_is_refused(live: nc.Vault, tmp_path: Path, attacker: str) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    shutil.chown(theirs, user=attacker)
    with pytest.raises(BackupError, match="owned by uid"):
        create_sqlite_backup(live, theirs / "b.db", keep=KEEP)


def test_a_link_at_the_destination_is_refused(live: nc.Vault, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    (tmp_path / "b.db").symlink_to(target)  # dangling: main created through it
    with pytest.raises(BackupError, match="already exists"):
        create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    assert not target.exists()
    manifest_path(tmp_path / "c.db").symlink_to(target)
    with pytest.raises(BackupError, match="already exists"):
        create_sqlite_backup(live, tmp_path / "c.db", keep=KEEP)
    assert not target.exists() and not (tmp_path / "c.db").exists()
    with live.store.read() as tx:
        assert tx.list_backups() == []


def test_restore_refuses_a_target_folder_others_can_write(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BackupError, match=r"restore target folder .*writable by group and others"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{shared / 'r.db'}", live=live.store)
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("race", [("b{i}.db", "b{i}.db.manifest.json")], indirect=True, ids=["create"])
def test_backup_create_never_writes_through_a_link_a_second_user_swaps_in(
        live: nc.Vault, race: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    shared, victim, planted = race
    before = victim.read_bytes()
    # the folder check alone would refuse this folder; bypass it to show the writes themselves are safe
    monkeypatch.setattr("nebula_credential.backups.folder_problem", lambda fd: None, raising=False)
    made = refused = 0
    for i in range(RACES):
        try:
            create_sqlite_backup(live, shared / f"b{i}.db", keep=KEEP)
            made += 1
        except BackupError:
            refused += 1  # the attacker replaced our finished file: noticed, refused
        assert victim.read_bytes() == before, f"race {i}: the other store was overwritten"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600
        assert not planted.exists(), f"race {i}: a file was created in the operator's private folder"
    assert made + refused == RACES


@pytest.mark.parametrize("race", [(".r{i}.db.restoring-{pid}", "r{i}.db")], indirect=True, ids=["restore"])
def test_restore_never_writes_its_working_copy_through_a_swapped_link(
        live: nc.Vault, tmp_path: Path, race: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    shared, victim, planted = race
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    before = victim.read_bytes()
    monkeypatch.setattr("nebula_credential.backups.folder_problem", lambda fd: None, raising=False)
    for i in range(RESTORE_RACES):
        # the attacker may get in the way of a restore: it fails, but writes nothing through a link
        with contextlib.suppress(BackupError, OSError):
            restore_backup(tmp_path / "b.db", f"sqlite:///{shared / f'r{i}.db'}", live=live.store)
        assert victim.read_bytes() == before, f"race {i}: the other store was overwritten"
        assert not planted.exists(), f"race {i}: a file was created in the operator's private folder"
