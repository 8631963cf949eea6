"""The one change the CLI makes to a config file it wrote: a setting added under [provider], nothing else."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nebula_credential.cli._configfile import (
    MARKER,
    is_ours,
    new_config,
    url_has_password,
    with_provider_setting,
    write_atomically,
)

TEXT = f"""{MARKER}
# a comment
[store]
url = "sqlite:///c.db"

[provider] # trailing comment
type = "aws-kms"
region = "eu-west-1"

[keys]
max_key_age = "60d"
"""


def test_the_setting_goes_under_the_provider_header_and_nothing_else_changes() -> None:
    out = with_provider_setting(TEXT, "key_id", "arn:aws:kms:eu-west-1:1:key/x", "aws-kms")
    assert out == TEXT.replace("[provider] # trailing comment\n",
                               '[provider] # trailing comment\nkey_id = "arn:aws:kms:eu-west-1:1:key/x"\n')


def test_windows_line_ends_stay() -> None:
    crlf = TEXT.replace("\n", "\r\n")
    out = with_provider_setting(crlf, "key_id", "k", "aws-kms")
    assert out is not None and '\r\nkey_id = "k"\r\n' in out and "\n" not in out.replace("\r\n", "")


@pytest.mark.parametrize("text", [
    TEXT.replace('type = "aws-kms"', 'type = "local"'),  # another provider
    TEXT.replace('region = "eu-west-1"', 'key_id = "already"'),  # already set
    'provider.type = "aws-kms"\n',  # dotted keys: no header to add under
    'provider = { type = "aws-kms" }\n',  # inline table
    "[provider\n",  # not TOML
    '[store]\nurl = "x"\n',  # no provider at all
])
def test_anything_but_a_one_line_change_is_refused(text: str) -> None:
    assert with_provider_setting(text, "key_id", "k", "aws-kms") is None


def test_a_value_is_written_as_a_toml_string_whatever_it_holds() -> None:
    value = 'a"b\\c\nd'
    out = with_provider_setting(TEXT, "key_id", value, "aws-kms")
    assert out is not None and tomllib.loads(out)["provider"]["key_id"] == value


def test_new_config_parses_and_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    write_atomically(path, new_config("sqlite:////srv/c.db", "aws-kms", {"region": "eu-west-1", "max_attempts": 3}),
                     exclusive=True)
    assert is_ours(path) and path.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(path.read_text())["provider"] == {"type": "aws-kms", "region": "eu-west-1", "max_attempts": 3}
    with pytest.raises(FileExistsError):
        write_atomically(path, "x", exclusive=True)
    (tmp_path / "mine.toml").write_text("# my config\n[provider]\n")
    assert not is_ours(tmp_path / "mine.toml") and not is_ours(tmp_path / "missing.toml")


def test_replacing_keeps_the_mode_and_follows_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    write_atomically(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n" and real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.toml", "real.toml"]


def test_a_password_in_the_url_is_seen() -> None:
    assert url_has_password("postgresql://app:s3cret@db/creds")
    assert not url_has_password("postgresql://app@db/creds") and not url_has_password("sqlite:///c.db")


def test_init_write_config_for_the_local_provider_opens_from_any_folder(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    (tmp_path / "etc").mkdir()
    proc = run_cli("--db", "sqlite:///data.db", "init", "--key-file", "root.key", "--write-config", "etc/c.toml",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote the config file etc/c.toml; use it with --config etc/c.toml" in proc.stdout
    cfg = tomllib.loads((tmp_path / "etc" / "c.toml").read_text())
    assert cfg == {"store": {"url": f"sqlite:///{(tmp_path / 'data.db').resolve()}"},
                   "provider": {"type": "local", "key_file": str((tmp_path / "root.key").resolve())}}
    listed = run_cli("--config", "c.toml", "keys", "list", cwd=tmp_path / "etc")
    assert listed.returncode == 0 and "active" in listed.stdout, listed.stderr
    # on a store already initialised it still writes the file asked for
    again = run_cli("--db", "sqlite:///data.db", "init", "--key-file", "root.key", "--write-config", "etc/d.toml",
                    cwd=tmp_path)
    assert again.returncode == 0 and "already initialised" in again.stdout, again.stderr
    assert tomllib.loads((tmp_path / "etc" / "d.toml").read_text()) == cfg


def test_init_write_config_refuses_a_store_url_with_a_password(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    proc = run_cli("--db", "postgresql://app:s3cret@127.0.0.1:1/x", "init", "--write-config", "c.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "password" in proc.stderr and "s3cret" not in proc.stderr
    assert not (tmp_path / "c.toml").exists()
