"""Test utilities shared across the suite (no mocks of the thing under test)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nebula_credential.config import KeyManagementConfig

SRC = Path(__file__).resolve().parents[1] / "src"


#: ``[retention] keep_versions = 1``: for tests about something else that destroy v1
#: right after one rotation (the previous-version rule has its own tests in
#: test_operator_policies.py).
KEEP_ONE = KeyManagementConfig.from_dict({"retention": {"keep_versions": 1}})


class FakeClock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**kwargs)
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class BackgroundHttpServer:
    """A real HTTP server on a free loopback port, served from a thread until :meth:`close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler],
                 server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> None:
        self.server = server_class(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NEBULA_CREDENTIAL_DB", None)
    env.pop("NEBULA_CREDENTIAL_CONFIG", None)
    env.pop("NEBULA_CREDENTIAL_MASTER_KEY_FILE", None)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (``python -m nebula_credential``)."""
    return subprocess.run(
        [sys.executable, "-m", "nebula_credential", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
    )


def store_runner(tmp_path: Path, **extra_env: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(*args, input=None, ok=True)`` for the CLI on an initialised SQLite store ``c.db`` in ``tmp_path``.

    ``ok=True`` asserts exit status 0 (showing stderr otherwise).
    """
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}", **extra_env)

    def run(*args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = run_cli(*args, cwd=tmp_path, env=env, input=input)
        if ok:
            assert res.returncode == 0, res.stderr
        return res

    run("init")
    return run


def cli_in_process(cwd: Path, capsys: Any, monkeypatch: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(*args, ok=True)``: ``main(argv)`` in this process on a store ``c.db`` in ``cwd``.

    The same code path as :func:`run_cli` without an interpreter start per
    command, for tests that run many commands; ``ok`` asserts exit 0."""
    from nebula_credential.cli import main

    monkeypatch.chdir(cwd)
    for name, value in cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{cwd / 'c.db'}").items():
        if name.startswith("NEBULA_CREDENTIAL_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", raising=False)
    monkeypatch.delenv("NEBULA_CREDENTIAL_CONFIG", raising=False)

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        if ok:
            assert rc == 0, err
        return subprocess.CompletedProcess(list(args), rc, out, err)

    return run


def dump(db: Path) -> list[str]:
    """Every row of a SQLite store, for 'nothing was written' checks."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()  # an open reader would hold locks a later step of the test needs


def provider_config(settings: dict[str, Any]) -> KeyManagementConfig:
    """A config whose only section is ``[provider]``."""
    return KeyManagementConfig.from_dict({"provider": dict(settings)})
