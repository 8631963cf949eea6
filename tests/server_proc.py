"""A real ``nebula-credential serve`` process for the server tests (granian on a free port)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .helpers import cli_env, free_port, run_cli, stop_process


@dataclass
class Server:
    url: str
    db: str
    folder: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    verify: str | bool = False
    #: a root token, for fixtures that set one up
    root: str = ""

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("--db", self.db, *args, cwd=self.folder, env=self.env, input=input)

    def token(self, *policies: str, ttl: str | None = None) -> str:
        args = ["--json", "token", "create"]
        for p in policies:
            args += ["--policy", p]
        if ttl:
            args += ["--ttl", ttl]
        out = self.cli(*args)
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["token"])

    def hvac(self, token: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.url, token=token, verify=self.verify)

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"X-Vault-Token": token} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=tls_verify(self.verify), timeout=30)

    def enable_auth(self, *kinds: str) -> None:
        """Enable auth methods at their default paths, as a Vault operator does before first use."""
        client = self.hvac(self.root or self.token("root"))
        for kind in kinds:
            client.sys.enable_auth_method(kind)

    def log(self) -> str:
        return (self.folder / "serve.log").read_text(errors="replace")


def tls_verify(verify: str | bool) -> ssl.SSLContext | bool:
    """httpx wants a context for a CA file."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def init_store(folder: Path, db: str, env: dict[str, str]) -> None:
    out = run_cli("--db", db, "init", cwd=folder, env=env)
    assert out.returncode == 0, out.stderr


@contextmanager
def serve(folder: Path, db: str, *extra: str, env: dict[str, str] | None = None, init: bool = True,
          scheme: str = "http", verify: str | bool = False, port: int | None = None) -> Iterator[Server]:
    """Start ``serve`` on a free loopback port and wait for /v1/sys/health; stop it afterwards."""
    env = env or cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(folder / "master.key"))
    if init and not (folder / "initialised").exists():
        init_store(folder, db, env)
        (folder / "initialised").touch()
    port = port or free_port()
    log = (folder / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nebula_credential", "--db", db, "serve", "--listen", f"127.0.0.1:{port}", *extra],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    server = Server(f"{scheme}://127.0.0.1:{port}", db, folder, env, proc, verify)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}: {server.log()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/v1/sys/health", verify=tls_verify(verify), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready: {server.log()[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)
        log.close()


@contextmanager
def sqlite_serve(tmp_path_factory: Any, name: str, *extra: str) -> Iterator[Server]:
    """``serve`` on a fresh SQLite store in its own temp folder (module-scoped fixtures use it)."""
    folder = tmp_path_factory.mktemp(name)
    with serve(folder, f"sqlite:///{folder / 'store.db'}", *extra) as server:
        yield server
