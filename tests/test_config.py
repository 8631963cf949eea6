"""Config loading: defaults from the seed; a bad value names the field and what is allowed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.durations import parse_duration


def test_defaults_from_the_seed() -> None:
    cfg = nc.KeyManagementConfig()
    assert cfg.keys.grace_period == timedelta(hours=24)
    assert cfg.keys.max_key_age == timedelta(days=90)
    assert cfg.keys.auto_rotation is True
    assert cfg.rotation.max_encryptions == 2**30


def test_full_file_loads(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[store]\nurl = "sqlite:///x.db"\n[keys]\ngrace_period = "30s"\nmax_key_age = "90d"\n'
        '[rotation]\nstrategy = "scheduled"\ncron = "0 2 * * SUN"\n[retention]\npolicy = "version-based"\n'
        'max_versions = 3\n[reencryption]\nbatch_size = 100\npriority = ["production"]\n'
        '[provider]\ntype = "local"\nkey_file = "k.key"\n[audit]\ncredentials = true\n[metrics]\naddr = "127.0.0.1:9000"\n'
    )
    cfg = nc.KeyManagementConfig.load(p)
    assert cfg.keys.grace_period == timedelta(seconds=30)
    assert cfg.rotation.strategy == "scheduled" and cfg.retention.max_versions == 3
    assert cfg.reencryption.priority == ("production",) and cfg.audit.credentials
    # a relative path in a config file is relative to that file's folder
    assert cfg.provider.explicit and cfg.provider.get("key_file") == str(tmp_path / "k.key")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rotation": {"strategy": "hourly"}}, "rotation.strategy"),
        ({"keys": {"grace_period": "-5m"}}, "keys.grace_period"),
        ({"rotation": {"cron": "0 0 0 2 * * SUN"}}, "rotation.cron"),
        ({"retention": {"max_versions": 0}}, "retention.max_versions"),
        ({"retention": {"policy": "forever"}}, "retention.policy"),
        ({"rotation": {"interval": "ninety days"}}, "rotation.interval"),
        ({"rotation": {"max_encryptions": 2**33}}, "rotation.max_encryptions"),
        ({"keys": {"auto_rotation": "yes"}}, "keys.auto_rotation"),
        ({"provider": {"type": "local", "pin": "1234"}}, "provider.pin"),
        ({"provider": {"type": "gcp-kms"}}, "provider.type"),
        ({"metrics": {"addr": "nowhere"}}, "metrics.addr"),
        ({"bogus": {}}, "bogus"),
        ({"keys": {"grace": "1h"}}, "keys.grace"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(nc.ConfigError) as err:
        nc.KeyManagementConfig.from_dict(data)
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[keys\n")
    with pytest.raises(nc.ConfigError, match="not valid TOML"):
        nc.KeyManagementConfig.load(bad)
    with pytest.raises(nc.ConfigError, match="not found"):
        nc.KeyManagementConfig.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), ("90d", 7776000)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_cli_reports_bad_config_in_one_line(tmp_path: Path) -> None:
    from .helpers import run_cli

    (tmp_path / "c.toml").write_text('[rotation]\nstrategy = "hourly"\n')
    res = run_cli("--config", "c.toml", "status", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith("error: rotation.strategy") and res.stderr.count("\n") == 1
