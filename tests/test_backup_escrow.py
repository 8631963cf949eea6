"""Root-of-trust escrow: lose the primary root key, recover every credential from the escrow."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.doctor import run as doctor_run
from nebula_credential.escrow import add_escrow, recover_from_escrow
from nebula_credential.exceptions import BackupError, ConfigError
from nebula_credential.providers import open_provider
from nebula_credential.providers.local import LocalKeyProvider
from nebula_credential.store import open_store

from .fixtures_hsm_kms import MotoKms
from .helpers import FakeClock, dump
from .test_backup_restore import cli as cli  # an initialised store driven through main()


def test_cli_lose_the_root_key_and_recover(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    values = {f"c{i}": {"token": f"t-{i}"} for i in range(5)}
    for cid in ("c0", "c1"):
        cli("put", cid, "--value", json.dumps(values[cid]))
    cli("keys", "rotate")
    for cid in ("c2", "c3", "c4"):
        cli("put", cid, "--value", json.dumps(values[cid]))
    (tmp_path / "offline").mkdir(mode=0o700)
    out = json.loads(cli("--json", "provider", "add-escrow", "--out", "escrow.json",
                         "--escrow-key-file", "offline/escrow.key").stdout)
    assert out["versions"] == ["default/v1", "default/v2"]
    for f in (tmp_path / "escrow.json", tmp_path / "offline" / "escrow.key"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    escrow_text = (tmp_path / "escrow.json").read_text()
    assert "t-0" not in escrow_text and (tmp_path / "master.key").read_text().split()[2] not in escrow_text

    (tmp_path / "master.key").unlink()  # the primary root is gone
    res = cli("get", "c0", ok=False)
    assert res.returncode == 1 and "master.key not found" in res.stderr
    res = cli("provider", "recover", "--from-escrow", "escrow.json", ok=False)
    assert res.returncode == 2 and "exactly one of" in res.stderr
    rec = json.loads(cli("--json", "provider", "recover", "--from-escrow", "escrow.json",
                         "--escrow-key-file", "offline/escrow.key").stdout)
    assert rec["rewrapped"] == ["default/v1", "default/v2"] and rec["lost"] == {}
    for cid, value in values.items():
        assert json.loads(cli("--json", "get", cid).stdout)["value"] == value
    assert json.loads(cli("--json", "audit", "verify").stdout)["ok"]
    actions = [json.loads(line)["action"] for line in cli("--json", "audit", "list").stdout.splitlines()]
    assert actions[-2:] == ["provider.escrow", "provider.recover"]


@pytest.fixture
def sq(tmp_path: Path, key_file: Path, clock: FakeClock):  # type: ignore[no-untyped-def]
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True, clock=clock)
    yield v
    v.close()


def test_versions_newer_than_the_escrow_are_named_and_refused(sq: nc.Vault, tmp_path: Path, key_file: Path,
                                                             clock: FakeClock) -> None:
    sq.put("old", {"v": 1})
    escrow = LocalKeyProvider.create(tmp_path / "escrow.key")
    add_escrow(sq.store, sq.provider, sq.audit, escrow, tmp_path / "e.json", clock.now)
    assert not [f for f in doctor_run(sq.store.url, clock=clock) if f.check == "escrow" and f.problem]
    sq.keys.rotate()
    sq.put("new1", {"v": 2})
    sq.put("new2", {"v": 3})
    stale = [f for f in doctor_run(sq.store.url, clock=clock) if f.check == "escrow"]
    assert stale[0].severity == "warning" and "lacks default/v2" in stale[0].message
    sq.close()
    key_file.unlink()
    db = Path(sq.store.path)
    before = dump(db)
    store = open_store(f"sqlite:///{db}")
    try:
        with pytest.raises(BackupError, match=r"lacks key version\(s\) default/v2 \(2 credential\(s\)\)"):
            recover_from_escrow(store, escrow, tmp_path / "e.json", KeyManagementConfig())
        assert dump(db) == before and not key_file.exists()  # refused before a new root key was made
        wrong = LocalKeyProvider.create(tmp_path / "wrong.key")
        with pytest.raises(BackupError, match="does not open this escrow"):
            recover_from_escrow(store, wrong, tmp_path / "e.json", KeyManagementConfig(), accept_loss=True)
        assert dump(db) == before
        result = recover_from_escrow(store, escrow, tmp_path / "e.json", KeyManagementConfig(), accept_loss=True)
        assert result.lost == {"default/v2": 2} and result.rewrapped == ["default/v1"]
    finally:
        store.close()
    with nc.open(f"sqlite:///{db}", clock=clock) as v:
        assert v.get("old") == {"v": 1}
        with pytest.raises(nc.NebulaCredentialError):
            v.get("new1")  # its key was never escrowed: lost with the primary, as the refusal said
        assert v.audit.verify().ok


def test_the_escrow_root_must_differ(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = cli("provider", "add-escrow", "--out", "e.json", "--escrow-key-file", "master.key", ok=False)
    assert res.returncode == 1 and "is the primary root" in res.stderr and not (tmp_path / "e.json").exists()


def test_recover_refuses_an_escrow_of_another_store(sq: nc.Vault, tmp_path: Path, clock: FakeClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(tmp_path / "other.key"))
    other = nc.open(f"sqlite:///{tmp_path / 'other.db'}", create=True, clock=clock)
    try:
        escrow = LocalKeyProvider.create(tmp_path / "escrow.key")
        add_escrow(other.store, other.provider, other.audit, escrow, tmp_path / "e.json", clock.now)
        sq.put("x", {"v": 1})
        with sq.store.transaction() as tx:
            tx.set_meta("store_id", "this-one")
        with pytest.raises(BackupError, match="is of store"):
            recover_from_escrow(sq.store, escrow, tmp_path / "e.json", KeyManagementConfig())
    finally:
        other.close()


@pytest.mark.services
def test_a_second_kms_key_as_escrow_root(moto_kms: MotoKms, tmp_path: Path, clock: FakeClock) -> None:
    """Primary: one KMS key.  Escrow: another KMS key.  The primary is lost; a new local root takes over."""
    primary_cfg = KeyManagementConfig.from_dict({"provider": moto_kms.settings()})
    db = tmp_path / "kms.db"
    v = nc.open(f"sqlite:///{db}", config=primary_cfg, create=True, clock=clock)
    try:
        for i in range(4):
            v.put(f"c{i}", {"i": i})
        escrow = open_provider(KeyManagementConfig.from_dict({"provider": moto_kms.settings()}).provider)
        add_escrow(v.store, v.provider, v.audit, escrow, tmp_path / "e.json", clock.now)
    finally:
        v.close()
    # the primary KMS key is treated as lost: recovery below never builds a provider for it
    new_cfg = KeyManagementConfig.from_dict({"provider": {"type": "local", "key_file": str(tmp_path / "new.key")}})
    with pytest.raises(ConfigError, match="root of trust is provider 'aws-kms'"):
        nc.open(f"sqlite:///{db}", config=new_cfg)
    store = open_store(f"sqlite:///{db}")
    try:
        result = recover_from_escrow(store, escrow, tmp_path / "e.json", new_cfg)
    finally:
        store.close()
    assert result.provider == "local" and result.rewrapped == ["default/v1"]
    with nc.open(f"sqlite:///{db}", config=new_cfg, clock=clock) as back:
        assert [back.get(f"c{i}") for i in range(4)] == [{"i": i} for i in range(4)]
        assert back.audit.verify().ok


def test_store_and_root_key_both_lost(sq: nc.Vault, tmp_path: Path, key_file: Path, clock: FakeClock) -> None:
    """The worst day: the live store and its root key are gone; a backup and the escrow remain."""
    import shutil

    from nebula_credential.backups import create_sqlite_backup

    values = {f"c{i}": {"i": i} for i in range(8)}
    for cid, value in values.items():
        sq.put(cid, value)
    escrow = LocalKeyProvider.create(tmp_path / "escrow.key")
    add_escrow(sq.store, sq.provider, sq.audit, escrow, tmp_path / "e.json", clock.now)
    create_sqlite_backup(sq, tmp_path / "nightly.db", keep=timedelta(days=30))
    sq.close()
    for f in (key_file, Path(sq.store.path)):
        f.unlink()
    with pytest.raises(nc.NebulaCredentialError):
        nc.open(f"sqlite:///{tmp_path / 'nightly.db'}", clock=clock)  # the copy is wrapped under the lost root
    (tmp_path / "new").mkdir()
    revived = tmp_path / "new" / "creds.db"
    shutil.copyfile(tmp_path / "nightly.db", revived)
    store = open_store(f"sqlite:///{revived}")
    try:
        result = recover_from_escrow(store, escrow, tmp_path / "e.json", KeyManagementConfig())
    finally:
        store.close()
    assert result.rewrapped == ["default/v1"] and key_file.exists()  # a new primary root was made
    with nc.open(f"sqlite:///{revived}", clock=clock) as back:
        assert {cid: back.get(cid) for cid in values} == values
        assert back.audit.verify().ok
