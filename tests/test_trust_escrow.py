"""Escrow recovery checks before it writes (issue 31, item 4).

Attack: another store's escrow file, its JSON ``store_id`` edited to this
store's.  On the old code recovery said "recovered", overwrote every wrapped
key with the other store's DEKs, and the original root key no longer opened
the store.  Now it is refused with a typed error and nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.escrow import add_escrow, recover_from_escrow
from nebula_credential.exceptions import BackupError
from nebula_credential.providers.local import LocalKeyProvider

from .helpers import FakeClock, dump


@pytest.fixture
def two_stores(tmp_path: Path, key_file: Path, clock: FakeClock,  # type: ignore[no-untyped-def]
               monkeypatch: pytest.MonkeyPatch):
    """This store (master.key) and another (other.key), both escrowed under the same escrow root."""
    mine = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True, clock=clock)
    for i in range(3):
        mine.put(f"c{i}", {"i": i})
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(tmp_path / "other.key"))
    other = nc.open(f"sqlite:///{tmp_path / 'other.db'}", create=True, clock=clock)
    other.put("o", {"x": 1})
    escrow = LocalKeyProvider.create(tmp_path / "escrow.key")
    add_escrow(mine.store, mine.provider, mine.audit, escrow, tmp_path / "mine.json", clock.now)
    add_escrow(other.store, other.provider, other.audit, escrow, tmp_path / "theirs.json", clock.now)
    with mine.store.read() as tx:
        sid = tx.get_meta("store_id")
    doc = json.loads((tmp_path / "theirs.json").read_text())
    doc["store_id"] = sid
    (tmp_path / "forged.json").write_text(json.dumps(doc))
    doc.pop("mac", None)  # as an escrow file written before the MAC existed
    (tmp_path / "forged-nomac.json").write_text(json.dumps(doc))
    other.close()
    # recovery would make a new root here
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(tmp_path / "new.key"))
    yield mine, escrow
    mine.close()


@pytest.mark.parametrize("forged, reason", [("forged.json", "fails its MAC"),
                                            ("forged-nomac.json", "does not open this store's audit head")])
def test_another_stores_escrow_with_an_edited_id_changes_nothing(two_stores, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 clock: FakeClock, forged: str,
                                                                 reason: str) -> None:
    mine, escrow = two_stores
    before = dump(tmp_path / "s.db")
    with pytest.raises(BackupError, match=reason) as info:
        recover_from_escrow(mine.store, escrow, tmp_path / forged, KeyManagementConfig())
    assert "nothing was changed" in str(info.value)
    assert dump(tmp_path / "s.db") == before
    assert not (tmp_path / "new.key").exists()  # no new root made for nothing
    mine.close()
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    again = nc.open(f"sqlite:///{tmp_path / 's.db'}", clock=clock)  # the original root still opens it
    try:
        assert again.get("c2") == {"i": 2} and again.audit.verify().ok
    finally:
        again.close()


def test_escrowed_keys_that_do_not_decrypt_the_rows_are_refused(two_stores, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The audit key is this store's, but a DEK is swapped for the other store's: test-decryption catches it."""
    mine, escrow = two_stores
    doc = json.loads((tmp_path / "mine.json").read_text())
    theirs = json.loads((tmp_path / "theirs.json").read_text())
    doc["keys"][0]["wrapped"] = theirs["keys"][0]["wrapped"]
    doc.pop("mac", None)
    (tmp_path / "swapped.json").write_text(json.dumps(doc))
    before = dump(tmp_path / "s.db")
    with pytest.raises(BackupError, match=r"default/v1 do not decrypt this store's rows"):
        recover_from_escrow(mine.store, escrow, tmp_path / "swapped.json", KeyManagementConfig())
    assert dump(tmp_path / "s.db") == before


def test_the_real_escrow_still_recovers(two_stores, tmp_path: Path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    mine, escrow = two_stores
    assert "mac" in json.loads((tmp_path / "mine.json").read_text())
    result = recover_from_escrow(mine.store, escrow, tmp_path / "mine.json", KeyManagementConfig())
    assert result.rewrapped == ["default/v1"]
    mine.close()
    again = nc.open(f"sqlite:///{tmp_path / 's.db'}", clock=clock)  # under new.key now
    try:
        assert again.get("c1") == {"i": 1} and again.audit.verify().ok
    finally:
        again.close()
