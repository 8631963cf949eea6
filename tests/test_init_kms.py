"""``init`` on AWS KMS without ``key_id`` prints the key it created and says where it goes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from tests.fixtures_hsm_kms import AWS_TEST_ENV, MotoKms
from tests.helpers import cli_env, run_cli


def kms_config(path: Path, moto_kms: MotoKms, key_id: str | None = None) -> None:
    key = f'key_id = "{key_id}"\n' if key_id else ""
    path.write_text(
        '[store]\nurl = "sqlite:///c.db"\n\n[provider]\ntype = "aws-kms"\n'
        f'region = "{moto_kms.region}"\nendpoint_url = "{moto_kms.endpoint_url}"\n{key}', encoding="utf-8")


def test_init_prints_the_created_key_and_the_config_line(tmp_path: Path, moto_kms: MotoKms) -> None:
    env = cli_env(**AWS_TEST_ENV)
    kms_config(tmp_path / "kms.toml", moto_kms)
    proc = run_cli("--config", "kms.toml", "init", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    created = next(line for line in lines if line.startswith("created KMS key "))
    arn = created.removeprefix("created KMS key ")
    assert arn.startswith("arn:aws:kms:")
    assert "  [provider]" in lines and f'  key_id = "{arn}"' in lines
    # the printed lines, pasted into the config, are what every later command needs
    config_lines = "\n".join(line.strip() for line in lines[lines.index("  [provider]"):])
    assert tomllib.loads(config_lines)["provider"]["key_id"] == arn
    kms_config(tmp_path / "kms.toml", moto_kms, key_id=arn)
    again = run_cli("--config", "kms.toml", "keys", "list", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr


def test_init_json_names_the_created_key(tmp_path: Path, moto_kms: MotoKms) -> None:
    env = cli_env(**AWS_TEST_ENV)
    kms_config(tmp_path / "kms.toml", moto_kms)
    data = json.loads(run_cli("--json", "--config", "kms.toml", "init", cwd=tmp_path, env=env).stdout)
    assert data["created_key_id"] == data["provider"]["key_arn"]


def test_init_with_a_configured_key_prints_no_such_advice(tmp_path: Path, moto_kms: MotoKms) -> None:
    env = cli_env(**AWS_TEST_ENV)
    kms_config(tmp_path / "kms.toml", moto_kms, key_id=moto_kms.create_key())
    proc = run_cli("--config", "kms.toml", "init", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "created KMS key" not in proc.stdout


# ---- the key written into a config file init wrote ---------------------------------------------
OURS = """{marker}
# staging store, KMS in eu-west-1 (a comment the operator added)
[store]
url = "sqlite:///c.db"   # beside this file

[provider]   # the root of trust
type = "aws-kms"
region = "{region}"
endpoint_url = "{endpoint}"
# retry_attempts = 5

[keys]
max_key_age = "60d"
"""


def test_init_writes_the_created_key_into_a_config_file_init_wrote(tmp_path: Path, moto_kms: MotoKms) -> None:
    from nebula_credential.cli._configfile import MARKER

    env = cli_env(**AWS_TEST_ENV)
    config = tmp_path / "kms.toml"
    before = OURS.format(marker=MARKER, region=moto_kms.region, endpoint=moto_kms.endpoint_url)
    config.write_text(before, encoding="utf-8")
    config.chmod(0o640)
    proc = run_cli("--config", "kms.toml", "init", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    arn = next(line for line in proc.stdout.splitlines() if line.startswith("created KMS key ")).split()[-1]
    assert "wrote it to kms.toml as [provider] key_id" in proc.stdout
    assert "put it in the config" not in proc.stdout
    after = config.read_text(encoding="utf-8")
    # one line added under [provider]; every other line and comment as it was
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == [f'key_id = "{arn}"'], added
    assert after.replace(f'key_id = "{arn}"\n', "") == before
    assert tomllib.loads(after)["provider"]["key_id"] == arn
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kms.toml")] == []  # no temporary left
    again = run_cli("--config", "kms.toml", "keys", "list", cwd=tmp_path, env=env)  # no edit needed
    assert again.returncode == 0, again.stderr


def test_init_leaves_a_config_file_the_operator_wrote_alone(tmp_path: Path, moto_kms: MotoKms) -> None:
    env = cli_env(**AWS_TEST_ENV)
    kms_config(tmp_path / "kms.toml", moto_kms)
    before = (tmp_path / "kms.toml").read_bytes()
    data = json.loads(run_cli("--json", "--config", "kms.toml", "init", cwd=tmp_path, env=env).stdout)
    assert data["created_key_id"].startswith("arn:aws:kms:") and "key_id_written_to" not in data
    assert (tmp_path / "kms.toml").read_bytes() == before


def test_init_write_config_writes_a_config_that_later_commands_use(tmp_path: Path, moto_kms: MotoKms) -> None:
    from nebula_credential.cli._configfile import MARKER

    env = cli_env(**AWS_TEST_ENV)
    kms_config(tmp_path / "kms.toml", moto_kms)
    before = (tmp_path / "kms.toml").read_bytes()
    (tmp_path / "etc").mkdir()
    data = json.loads(run_cli("--json", "--config", "kms.toml", "init", "--write-config", "etc/app.toml",
                              cwd=tmp_path, env=env).stdout)
    written = tmp_path / "etc" / "app.toml"
    assert data["config_written"] == "etc/app.toml"
    text = written.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MARKER
    cfg = tomllib.loads(text)
    assert cfg["provider"] == {"type": "aws-kms", "region": moto_kms.region, "endpoint_url": moto_kms.endpoint_url,
                               "key_id": data["created_key_id"]}
    assert cfg["store"]["url"] == f"sqlite:///{(tmp_path / 'c.db').resolve()}"  # absolute: read from any folder
    assert written.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "kms.toml").read_bytes() == before
    elsewhere = tmp_path / "etc"
    again = run_cli("--config", "app.toml", "keys", "list", cwd=elsewhere, env=env)
    assert again.returncode == 0, again.stderr
    # an existing file is refused before anything is created
    refused = run_cli("--db", "sqlite:///other.db", "init", "--write-config", "etc/app.toml", cwd=tmp_path, env=env)
    assert refused.returncode != 0 and "exists" in refused.stderr
    assert not (tmp_path / "other.db").exists()
    assert written.read_text(encoding="utf-8") == text
