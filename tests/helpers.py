"""Test utilities shared across the suite (no mocks of the thing under test)."""

from __future__ import annotations

import contextlib
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
    """Run the real CLI in a process of its own.

    The process is forked from an interpreter that has already imported the
    CLI (:class:`CliForkServer`) when it can be, else started with
    ``python -m nebula_credential`` (NEBULA_TEST_CLI_FORK=0: always)."""
    env = env or cli_env()
    forked = CliForkServer.shared_run(args, cwd=cwd, input=input, env=env, timeout=timeout)
    if forked is not None:
        return forked
    return interpreter_cli(*args, cwd=cwd, input=input, env=env, timeout=timeout)


def interpreter_cli(*args: str, cwd: Path | str, input: str | None = None, env: dict[str, str] | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a new interpreter (``python -m nebula_credential``)."""
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


#: The fork server's program (``python -c``): import the CLI as ``python -m nebula_credential`` does, then
#: fork once per command read from stdin (one JSON line each), answering ``pid N`` then the exit status.
_FORK_SERVER = r"""
import atexit, gc, json, os, sys, threading, traceback
from nebula_credential.cli import main, preload
preload()  # the commands load lazily (start-up); a fork server imports them once for all its children

def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path, flags in ((0, req["stdin"], os.O_RDONLY), (1, req["stdout"], os.O_WRONLY),
                            (2, req["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    sys.argv = ["nebula-credential", *req["argv"]]
    if "random" in sys.modules:  # seeded once per interpreter: each command gets its own sequence
        sys.modules["random"].seed()
    try:
        rc = main(req["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    threading._shutdown()  # what interpreter shutdown does: wait for non-daemon threads, then atexit,
    atexit._run_exitfuncs()
    gc.collect()  # then a collection: finalizers and their "Exception ignored" reports still reach stderr
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)

for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child(req)
        finally:
            os._exit(70)
    print("pid", pid, flush=True)
    status = os.waitpid(pid, 0)[1]
    print(os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status), flush=True)
"""

#: Environment read when an interpreter starts (sys.path, locale, preloads, the time zone, OpenSSL's
#: config): a command whose value differs from the fork server's gets an interpreter of its own.
_STARTUP_ENV = ("PYTHON", "LD_", "DYLD_", "FAKETIME", "LC_", "LANG", "TZ", "HOME", "OPENSSL_", "SSL_CERT")


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_ENV)}


class CliForkServer:
    """Runs CLI commands each in its own process, forked from one interpreter that has imported the CLI.

    An interpreter start and the CLI's imports cost ~0.35 s of CPU per
    command, most commands a fraction of that, and the suite runs about a
    thousand.  Each command still runs in a fresh process (its own
    environment, working directory, stdin/stdout/stderr files, sockets and
    loaded libraries), forked at the point ``python -m nebula_credential``
    reaches before ``main()`` reads its arguments, so nothing a command does
    is seen by the next.  Not used (the caller starts an interpreter) when
    the command's start-up environment differs from the server's (see
    :data:`_STARTUP_ENV`), when another thread is using the server (commands
    meant to run at once still do), or with ``NEBULA_TEST_CLI_FORK=0``.
    A command ends as an interpreter does up to its final module teardown
    (threads joined, atexit, a full collection); that teardown is skipped
    (a third of the time again), so a leak only it would report is caught
    by the tests that start real interpreters (daemons, faults) and by
    ``NEBULA_TEST_CLI_FORK=0``.
    """

    _shared: CliForkServer | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        import tempfile

        self.env = cli_env()
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="nebula-cli-fork-"))
        self._buffer = b""
        # its own stderr is a file, never pytest's: the CLI's consoles decide at import time whether
        # they write to a terminal (and wrap lines), and a command's stderr must not depend on `pytest -s`
        with open(self._dir / "server.log", "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=self._dir, env=self.env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0)

    @classmethod
    def shared_run(cls, args: tuple[str, ...], *, cwd: Path | str, input: str | None, env: dict[str, str],
                   timeout: float) -> subprocess.CompletedProcess[str] | None:
        """The command's result through this process's shared server, or None if it should not be forked."""
        if os.environ.get("NEBULA_TEST_CLI_FORK", "1") == "0":
            return None
        with cls._shared_lock:
            server = cls._shared
            if server is None or server.owner != os.getpid() or server._proc.poll() is not None:
                server = cls._shared = CliForkServer()
                import atexit

                atexit.register(server.close)
        if _startup_env(env) != _startup_env(server.env) or not server.lock.acquire(blocking=False):
            return None
        try:
            return server.run(*args, cwd=cwd, input=input, env=env, timeout=timeout)
        finally:
            server.lock.release()

    def _line(self, timeout: float | None) -> str | None:
        import select

        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select(): a pytest process may hold descriptors past 1024
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            if not poller.poll(None if timeout is None else timeout * 1000):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the CLI fork server exited ({self._proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def run(self, *args: str, cwd: Path | str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        import json
        import signal

        assert self._proc.stdin is not None
        files = {name: self._dir / name for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_text(input or "")
        files["stdout"].write_bytes(b"")
        files["stderr"].write_bytes(b"")
        request = {"argv": list(args), "cwd": str(cwd), "env": env or cli_env(),
                   **{name: str(path) for name, path in files.items()}}
        pid = 0
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            pid = int(str(self._line(None)).split()[1])
            answer = self._line(timeout)
            if answer is None:
                os.kill(pid, signal.SIGKILL)
                self._line(None)
                raise subprocess.TimeoutExpired(list(args), timeout)
        except subprocess.TimeoutExpired:
            raise
        except BaseException:  # interrupted mid-command (pytest-timeout, ^C): the answers are out of step
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._proc.kill()
            self._proc.wait()
            raise
        return subprocess.CompletedProcess(list(args), int(answer), files["stdout"].read_text(),
                                           files["stderr"].read_text())

    def close(self) -> None:
        import shutil

        if self._proc.poll() is None and self._proc.stdin is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
