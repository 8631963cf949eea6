"""Every path in a config file is relative to that file's folder; flags and env stay relative to the cwd."""

from __future__ import annotations

from pathlib import Path

import nebula_credential as nc
from nebula_credential.config import anchor_paths
from tests.helpers import cli_env, run_cli

CONFIG = """
[store]
url = "sqlite:///data/creds.db"

[provider]
type = "local"
key_file = "keys/master.key"
"""


def layout(tmp_path: Path) -> tuple[Path, Path]:
    etc = tmp_path / "etc"
    (etc / "data").mkdir(parents=True)
    (etc / "keys").mkdir()
    (etc / "nc.toml").write_text(CONFIG, encoding="utf-8")
    elsewhere = tmp_path / "cron"
    elsewhere.mkdir()
    return etc, elsewhere


def test_the_cli_from_another_folder_uses_the_config_files_folder(tmp_path: Path) -> None:
    etc, cron = layout(tmp_path)
    made = run_cli("--config", "../etc/nc.toml", "init", cwd=cron)
    assert made.returncode == 0, made.stderr
    assert (etc / "data" / "creds.db").exists()
    assert (etc / "keys" / "master.key").exists()
    assert list(cron.iterdir()) == []
    put = run_cli("--config", "../etc/nc.toml", "put", "svc", "--value", '{"t": 1}', cwd=cron)
    assert put.returncode == 0, put.stderr
    # another working directory, the same store and key
    got = run_cli("--config", str(etc / "nc.toml"), "get", "svc", "--field", "t", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "1"
    assert not (tmp_path / "data").exists() and not (tmp_path / "keys").exists()


def test_the_env_config_is_anchored_too(tmp_path: Path) -> None:
    etc, cron = layout(tmp_path)
    env = cli_env(NEBULA_CREDENTIAL_CONFIG="../etc/nc.toml")
    assert run_cli("init", cwd=cron, env=env).returncode == 0
    assert (etc / "data" / "creds.db").exists()


def test_a_db_flag_stays_relative_to_the_working_directory(tmp_path: Path) -> None:
    etc, cron = layout(tmp_path)
    made = run_cli("--config", "../etc/nc.toml", "--db", "sqlite:///here.db", "init", cwd=cron)
    assert made.returncode == 0, made.stderr
    assert (cron / "here.db").exists()
    assert not (etc / "data" / "creds.db").exists()
    assert (etc / "keys" / "master.key").exists()  # the key file still comes from the config


def test_every_path_setting_is_anchored(tmp_path: Path) -> None:
    data = {
        "store": {"url": "sqlite:///./creds.db"},
        "provider": {"type": "vault-transit", "token_file": "t", "ca_cert": "tls/ca.pem",
                     "client_cert": "tls/c.pem", "client_key": "tls/c.key", "url": "https://vault:8200"},
        "server": {"tls_cert_file": "tls/s.pem", "tls_key_file": "/abs/s.key", "listen": "127.0.0.1:8200"},
    }
    out = anchor_paths(data, tmp_path)
    assert out["store"]["url"] == f"sqlite:///{tmp_path}/creds.db"
    assert out["provider"]["token_file"] == str(tmp_path / "t")
    assert out["provider"]["ca_cert"] == str(tmp_path / "tls/ca.pem")
    assert out["provider"]["client_key"] == str(tmp_path / "tls/c.key")
    assert out["provider"]["url"] == "https://vault:8200"
    assert out["server"]["tls_cert_file"] == str(tmp_path / "tls/s.pem")
    assert out["server"]["tls_key_file"] == "/abs/s.key"
    assert out["server"]["listen"] == "127.0.0.1:8200"
    assert data["store"]["url"] == "sqlite:///./creds.db"  # the input is not changed


def test_what_is_not_a_relative_path_is_left_alone(tmp_path: Path) -> None:
    out = anchor_paths({"store": {"url": "sqlite:///:memory:"},
                        "provider": {"type": "pkcs11", "library": "libsofthsm2.so", "pin_file": "pin",
                                     "pin_env": "PIN"}}, tmp_path)
    assert out["store"]["url"] == "sqlite:///:memory:"
    assert out["provider"]["library"] == "libsofthsm2.so"  # a name the loader searches for
    assert out["provider"]["pin_file"] == str(tmp_path / "pin")
    assert out["provider"]["pin_env"] == "PIN"
    pg = "postgresql://app@db/creds"
    assert anchor_paths({"store": {"url": pg}}, tmp_path)["store"]["url"] == pg


def test_from_dict_is_not_anchored() -> None:
    cfg = nc.KeyManagementConfig.from_dict({"provider": {"type": "local", "key_file": "k.key"}})
    assert cfg.provider.get("key_file") == "k.key"
