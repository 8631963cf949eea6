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
