"""TLS and the listen checks of ``serve``."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .azure_server import make_tls
from .helpers import cli_env, free_port, run_cli, stop_process
from .server_proc import init_store, serve


def test_verifying_client_works_and_plain_http_fails_cleanly(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    with serve(tmp_path, db, "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
               scheme="https", verify=str(tls.ca_cert)) as server:
        client = server.hvac(server.token("root"))
        client.secrets.kv.v2.create_or_update_secret("tls/one", secret={"a": "b"})
        assert client.secrets.kv.v2.read_secret_version(
            "tls/one", raise_on_deleted_version=True)["data"]["data"] == {"a": "b"}
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(plain + "/v1/sys/health", timeout=10)
        with pytest.raises(httpx.ConnectError):  # and an unverified certificate is not trusted
            httpx.get(server.url + "/v1/sys/health", timeout=10)
        with server.http() as trusted:
            assert trusted.get("/v1/sys/health").status_code == 200
        assert "Traceback" not in server.log()


def test_tls_1_2_is_accepted_and_1_3_used_by_default(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    with serve(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", "--tls-cert", str(tls.cert), "--tls-key",
               str(tls.key), scheme="https", verify=str(tls.ca_cert)) as server:
        host, port = server.url.removeprefix("https://").split(":")
        for highest, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
            ctx.maximum_version = highest
            with socket.create_connection((host, int(port)), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname=host) as conn:
                assert conn.version() == expected


def _serve_fails(tmp_path: Path, *args: str) -> str:
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    db = f"sqlite:///{tmp_path / 'store.db'}"
    init_store(tmp_path, db, env)
    out = run_cli("--db", db, "serve", *args, cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in out.stderr
    return lines[-1]


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    tls.key.chmod(0o644)
    message = _serve_fails(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(tls.cert),
                           "--tls-key", str(tls.key))
    assert "readable by group or others" in message and "chmod 600" in message


def test_non_loopback_without_tls_is_refused(tmp_path: Path) -> None:
    message = _serve_fails(tmp_path, "--listen", f"0.0.0.0:{free_port()}")
    assert "not a loopback address" in message and "--insecure-no-tls" in message


def test_insecure_no_tls_starts_with_a_warning(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    db = f"sqlite:///{tmp_path / 'store.db'}"
    init_store(tmp_path, db, env)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nebula_credential", "--db", db, "serve", "--listen",
                                 f"0.0.0.0:{port}", "--insecure-no-tls"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/sys/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            assert httpx.get(f"http://127.0.0.1:{port}/v1/sys/health").status_code == 200
        finally:
            stop_process(proc)
    assert "WARNING" in log.read_text() and "--insecure-no-tls" in log.read_text()
