"""The low findings of issue 31: audit verify --against, escaped labels, adopt validates first."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import nebula_credential as nc
from nebula_credential.adopt import LegacyRecord, adopt, records_from_jsonl
from nebula_credential.backups import create_sqlite_backup
from nebula_credential.exceptions import BackupError, ConfigError, CredentialNotFoundError, InvalidInputError
from nebula_credential.legacy import LegacyKeySet

from .helpers import FakeClock, cli_in_process


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    run("put", "a", "--value", "1")
    run("keys", "rotate")
    return run


# ---- audit verify --against ---------------------------------------------------------
def test_against_an_empty_or_short_export_fails_unless_partial(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    export = cli("audit", "export").stdout.splitlines()
    assert len(export) >= 3
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "one.jsonl").write_text(export[0] + "\n")
    (tmp_path / "all.jsonl").write_text("\n".join(export) + "\n")
    for name, compared in (("empty.jsonl", 0), ("one.jsonl", 1)):
        res = cli("--json", "audit", "verify", "--against", name, ok=False)
        out = json.loads(res.stdout)
        assert res.returncode == 1 and out["ok"] is False and out["compared"] == compared
        assert "pass --partial" in out["unexplained"][0]
        human = cli("audit", "verify", "--against", name, ok=False).stdout
        assert f"{compared} compared with {name}" in human
        res = cli("--json", "audit", "verify", "--against", name, "--partial")
        assert json.loads(res.stdout) == {"ok": True, "events": len(export), "first_bad_seq": None,
                                          "compared": compared}
    human = cli("audit", "verify", "--against", "all.jsonl").stdout
    assert f"audit chain intact: {len(export)} events; {len(export)} compared with all.jsonl" in human
    assert cli("audit", "verify", "--partial", ok=False).returncode == 2


def test_against_refuses_a_boolean_seq(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = json.loads(cli("audit", "export").stdout.splitlines()[0])
    first["seq"] = True  # bool is an int in Python: must not read as event 1
    (tmp_path / "bool.jsonl").write_text(json.dumps(first) + "\n")
    res = cli("audit", "verify", "--against", "bool.jsonl", "--partial", ok=False)
    assert res.returncode == 1 and "integer seq" in res.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_against_refuses_a_fifo_instead_of_hanging(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    os.mkfifo(tmp_path / "pipe")
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(
        cli("audit", "verify", "--against", "pipe", ok=False).returncode), daemon=True)
    worker.start()
    worker.join(20)
    if not done:  # unblock the hung reader so the test run can go on
        with open(tmp_path / "pipe", "w"):
            pass
        worker.join(5)
    assert done == [1]


# ---- labels and ids escaped -----------------------------------------------------------
ESC = "\x1b]0;pwned\x07\x1b[2J"


def test_backup_names_with_control_characters_are_refused(tmp_path: Path, key_file: Path,
                                                           clock: FakeClock) -> None:
    v = nc.open(f"sqlite:///{tmp_path / 'l.db'}", create=True, clock=clock)
    try:
        with pytest.raises(BackupError, match="printable"):
            create_sqlite_backup(v, tmp_path / "b.db", keep=timedelta(days=1), name="x" + ESC)
    finally:
        v.close()


def test_backup_list_escapes_a_label_a_database_writer_planted(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    cli("backup", "register", "--label", "plain")
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("UPDATE backups SET name = ?", ("evil" + ESC,))
    out = cli("backup", "list").stdout
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b]0;pwned\\x07" in out


def test_audit_list_escapes_control_characters(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("UPDATE audit_events SET actor = ? WHERE seq = 1", ("m" + ESC,))
    out = cli("audit", "list").stdout
    assert "\x1b" not in out and "m\\x1b" in out


# ---- adopt validates before writing --------------------------------------------------------
@pytest.fixture
def legacy() -> tuple[LegacyKeySet, Fernet]:
    key = Fernet.generate_key()
    return LegacyKeySet.fernet_keys(key.decode()), Fernet(key)


def _token(f: Fernet, value: object) -> str:
    return f.encrypt(json.dumps(value).encode()).decode()


def test_adopt_checks_the_whole_file_before_writing(vault: nc.Vault, tmp_path: Path,
                                                    legacy: tuple[LegacyKeySet, Fernet]) -> None:
    keys, f = legacy
    rows = [{"id": "a", "token": _token(f, 1)}, {"id": "b", "token": _token(f, 2)},
            {"id": {"x": 1}, "token": _token(f, 3)}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidInputError, match=r"in.jsonl:3: id"):
        adopt(vault, records_from_jsonl(path), keys)
    assert vault.list() == [] or not list(vault.list())
    for bad in ({"id": "c", "token": 5}, {"id": "c", "token": "t", "metadata": [1]}, {"id": "c", "token": "t",
                                                                                       "scope": 7}):
        path.write_text(json.dumps({"id": "a", "token": _token(f, 1)}) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(InvalidInputError, match=r"in.jsonl:2"):
            adopt(vault, records_from_jsonl(path), keys)
    assert not list(vault.list())


def test_adopt_audits_what_it_adopted_when_a_record_stops_it(vault: nc.Vault,
                                                             legacy: tuple[LegacyKeySet, Fernet]) -> None:
    keys, f = legacy

    def stream() -> Iterator[LegacyRecord]:  # not a sequence: checked one by one
        yield LegacyRecord("a", _token(f, 1))
        yield LegacyRecord({"x": 1}, _token(f, 2))  # type: ignore[arg-type]

    with pytest.raises(InvalidInputError):
        adopt(vault, stream(), keys)
    assert vault.get("a") == 1
    events = [r for r in vault.audit.rows() if r.action == "legacy.adopt"]
    assert len(events) == 1 and json.loads(events[0].details)["adopted"] == 1
    with pytest.raises(InvalidInputError):  # a sequence is checked whole: nothing is written
        adopt(vault, [LegacyRecord("b", _token(f, 1)), LegacyRecord("c", _token(f, 1), scope="no such/scope")],
              keys)
    with pytest.raises(CredentialNotFoundError):
        vault.get("b")


def test_a_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        list(records_from_jsonl(tmp_path / "nope.jsonl"))
