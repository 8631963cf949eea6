"""Issue 31 item 2 (rest): the backup manifest is authenticated.

The finding: the "destroyed since this copy was made" check trusted the
copy's ``meta.store_id``, which nothing authenticated, and a missing
manifest was only a warning.  A copy of this store with another store id
and no manifest, restored with ``--replace``, brought a destroyed key
version back to ``active``.  Now the manifest carries a MAC under a key
derived from the root-wrapped audit key; a missing, unsigned or edited
manifest (or a copy whose store id differs from it) is refused unless the
operator passes ``--accept-unauthenticated`` -- and even then the
destroyed-since check runs whatever store id the copy claims.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.backups import create_sqlite_backup, forget_backup, manifest_path
from nebula_credential.exceptions import BackupError
from nebula_credential.models import KeyStatus
from nebula_credential.restore import restore_backup, verify_backup

from .helpers import FakeClock, cli_in_process

KEEP = timedelta(days=30)


@pytest.fixture
def live(tmp_path: Path, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 'live.db'}", create=True, clock=clock)
    for i in range(4):
        v.put(f"c{i}", {"i": i})
    yield v
    v.close()


def _destroy_v1(live: nc.Vault, clock: FakeClock, backup: str) -> None:
    forget_backup(live, backup)  # the operator dropped the hold: retention may destroy v1
    live.keys.rotate()
    live.reencrypt()
    clock.advance(minutes=5)
    live.keys.revoke(1)
    clock.advance(hours=1)
    live.keys.destroy(1, force_retention=True)


def _set_store_id(copy: Path, sid: str) -> None:
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'store_id'", (sid,))


def test_a_genuine_copy_is_authenticated(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    on_disk = json.loads(manifest_path(tmp_path / "b.db").read_text())
    assert len(on_disk["mac"]) == 64
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert report.ok and report.authenticated and report.warnings == [], report.problems
    assert report.to_json()["authenticated"] is True


def test_the_finding_another_store_id_and_no_manifest_cannot_bring_a_destroyed_key_back(
        live: nc.Vault, tmp_path: Path, clock: FakeClock) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    _destroy_v1(live, clock, "b.db")
    _set_store_id(tmp_path / "b.db", "00000000-0000-4000-8000-000000000000")
    manifest_path(tmp_path / "b.db").unlink()
    live_path = Path(live.store.path)
    with pytest.raises(BackupError, match="no manifest beside the copy.*--accept-unauthenticated"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", live=live.store, replace=True)
    # even when the operator accepts an unauthenticated copy, its claimed store id proves nothing
    with pytest.raises(BackupError, match="default/v1 were destroyed in the live store"):
        restore_backup(tmp_path / "b.db", f"sqlite:///{live_path}", live=live.store, replace=True,
                       accept_unauthenticated=True)
    again = nc.open(f"sqlite:///{live_path}")
    try:
        assert again.keys.version(1).status is KeyStatus.DESTROYED
        assert again.audit.verify().ok
    finally:
        again.close()


def test_an_edited_store_id_is_refused(live: nc.Vault, tmp_path: Path) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    _set_store_id(tmp_path / "b.db", "00000000-0000-4000-8000-000000000000")
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok and not report.authenticated
    assert any("the manifest names store" in p and "--accept-unauthenticated" in p for p in report.problems)
    # ... and editing the manifest to match breaks its MAC
    mpath = manifest_path(tmp_path / "b.db")
    doc = json.loads(mpath.read_text())
    doc["store_id"] = "00000000-0000-4000-8000-000000000000"
    mpath.write_text(json.dumps(doc))
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok and any("MAC does not check out" in p for p in report.problems), report.problems


@pytest.mark.parametrize("edit", ["expires_at", "location", "drop-mac", "other-mac"])
def test_an_edited_or_unsigned_manifest_is_refused_unless_accepted(live: nc.Vault, tmp_path: Path,
                                                                   edit: str) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    create_sqlite_backup(live, tmp_path / "other.db", keep=KEEP)
    mpath = manifest_path(tmp_path / "b.db")
    doc = json.loads(mpath.read_text())
    if edit == "drop-mac":
        del doc["mac"]
    elif edit == "other-mac":
        doc["mac"] = json.loads(manifest_path(tmp_path / "other.db").read_text())["mac"]
    else:
        doc[edit] = "2099-01-01T00:00:00+00:00" if edit == "expires_at" else "/elsewhere/b.db"
    mpath.write_text(json.dumps(doc))
    report = verify_backup(tmp_path / "b.db", live=live.store)
    assert not report.ok and not report.authenticated, report.problems
    assert all("--accept-unauthenticated" in p for p in report.problems)
    accepted = verify_backup(tmp_path / "b.db", live=live.store, accept_unauthenticated=True)
    assert accepted.ok and not accepted.authenticated
    assert any(w.startswith("accepted unauthenticated copy:") for w in accepted.warnings)


def test_the_cli_flag_says_what_is_given_up(live: nc.Vault, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    create_sqlite_backup(live, tmp_path / "b.db", keep=KEEP)
    manifest_path(tmp_path / "b.db").unlink()
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    monkeypatch.setenv("NEBULA_CREDENTIAL_DB", f"sqlite:///{live.store.path}")
    res = run("backup", "verify", str(tmp_path / "b.db"), ok=False)
    assert res.returncode == 1 and "no manifest beside the copy" in res.stderr
    res = run("--json", "backup", "verify", "--accept-unauthenticated", str(tmp_path / "b.db"), ok=True)
    assert json.loads(res.stdout)["authenticated"] is False
    res = run("backup", "verify", "--help", ok=True)
    assert "unproven" in res.stdout
