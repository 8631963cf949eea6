"""``serve --dev``: one command to a working server, as ``bao server -dev``; nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .helpers import cli_env, free_port, stop_process


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    # what the user has configured must not be read: a config naming another root of trust, a key file
    (tmp_path / "nebula-credential.toml").write_text('[provider]\ntype = "vault-transit"\n')
    env = cli_env(TMPDIR=str(tmp), NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "mine.key"))
    out = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "nebula_credential", "serve", "--dev",
                             "--dev-listen-address", f"127.0.0.1:{port}", *extra],
                            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "out.log").read_text()
        try:
            if httpx.get(f"{url}/v1/sys/health", timeout=2).status_code == 200:
                return proc, url, tmp
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    pytest.fail("serve --dev did not answer: " + (tmp_path / "out.log").read_text())


def _root_token(tmp_path: Path) -> str:
    for line in (tmp_path / "out.log").read_text().splitlines():
        if line.startswith("Root Token: "):
            return line.removeprefix("Root Token: ").strip()
    raise AssertionError("no root token printed")


def test_dev_server_serves_kv_and_transit_with_the_printed_root_token(tmp_path: Path) -> None:
    import hvac

    proc, url, tmp = _start(tmp_path)
    try:
        [folder] = list(tmp.iterdir())
        assert folder.name.startswith("nebula-credential-dev-") and (folder.stat().st_mode & 0o077) == 0
        client = hvac.Client(url=url, token=_root_token(tmp_path))
        client.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "s3cret"})
        assert client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)[
            "data"]["data"] == {"password": "s3cret"}
        client.secrets.transit.create_key("k1")
        ct = client.secrets.transit.encrypt_data("k1", "aGVsbG8=")["data"]["ciphertext"]
        assert client.secrets.transit.decrypt_data("k1", ct)["data"]["plaintext"] == "aGVsbG8="
        assert "VAULT_ADDR='" + url in (tmp_path / "out.log").read_text()
    finally:
        stop_process(proc)
    assert proc.returncode == 0 or proc.returncode < 0
    assert list(tmp.iterdir()) == []  # the throwaway store and its key are gone
    assert not (tmp_path / "mine.key").exists()  # the user's key file variable was not used


def test_dev_root_token_id_fixes_the_token(tmp_path: Path) -> None:
    fixed = "ncs." + "devroot" * 6
    proc, url, _ = _start(tmp_path, "--dev-root-token-id", fixed)
    try:
        assert _root_token(tmp_path) == fixed
        with httpx.Client(base_url=url, headers={"X-Vault-Token": fixed}) as c:
            assert c.get("/v1/auth/token/lookup-self").json()["data"]["policies"] == ["root"]
    finally:
        stop_process(proc)


def test_dev_options_are_checked_before_anything_is_made(tmp_path: Path) -> None:
    from .helpers import run_cli

    bad = run_cli("serve", "--dev", "--dev-root-token-id", "root", cwd=tmp_path, env=cli_env(TMPDIR=str(tmp_path)))
    assert bad.returncode != 0 and "--dev-root-token-id" in bad.stderr
    alone = run_cli("serve", "--dev-listen-address", "127.0.0.1:1", cwd=tmp_path, env=cli_env())
    assert alone.returncode != 0 and "go with --dev" in alone.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("nebula-credential-dev-")]
