"""One external service per test session, shared by every pytest-xdist worker.

Starting PostgreSQL, moto or OpenBao once per worker cost each worker the start-up
and ran as many copies as there are cores.  Now the first worker that needs a
service starts it under a file lock and writes how to reach it to a JSON file in
the session's services folder; every other worker reads that file.  The services
folder is made by the controlling process in ``pytest_configure`` (workers inherit
its path through the environment) and that same process stops every service listed
there in ``pytest_unconfigure``, after the last worker is gone: no worker has to
know whether it is the last one, and a worker that crashes leaves nothing running.
Without xdist the single process plays both parts.

A service is started detached (its own session, output to a log file), so it
outlives the worker that happened to start it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

ENV = "NEBULA_TEST_SERVICES_DIR"

#: ``kind`` of a record -> how the controller stops it (from the record alone)
Stopper = Callable[[dict[str, Any]], None]
_STOPPERS: dict[str, Stopper] = {}


def register_stopper(kind: str, stop: Stopper) -> None:
    _STOPPERS[kind] = stop


def services_dir() -> Path:
    """The session's services folder (made by :func:`open_session` in the controller)."""
    folder = os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"{ENV} is not set: tests/conftest.py's pytest_configure makes it")
    return Path(folder)


def shared(name: str, start: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The record of service ``name``, started by ``start(folder)`` if no worker did yet.

    ``start`` returns a JSON-able record with a ``kind`` naming a registered stopper.
    A start that fails leaves no record, so the next worker tries again (and fails
    its tests with the reason, like the first).
    """
    root = services_dir()
    record_file = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if record_file.exists():
            return dict(json.loads(record_file.read_text()))
        folder = root / name
        folder.mkdir(exist_ok=True)
        record = start(folder)
        tmp = record_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(record_file)
        return record


def open_session() -> Path:
    """Controller side: make the services folder and publish it to the workers."""
    folder = Path(tempfile.mkdtemp(prefix="nebula-services-"))
    os.environ[ENV] = str(folder)
    return folder


def close_session() -> None:
    """Controller side: stop every service a worker started, then remove the folder."""
    folder = os.environ.pop(ENV, None)
    if not folder:
        return
    root = Path(folder)
    for record_file in sorted(root.glob("*.json")):
        record = json.loads(record_file.read_text())
        stop = _STOPPERS.get(record.get("kind", ""), stop_pid)
        try:
            stop(record)
        except Exception:  # one stuck service must not keep the others running
            stop_pid(record)
    shutil.rmtree(root, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        # our own child (no xdist): reap it, or it stays a zombie that answers kill(0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pid(record: dict[str, Any], timeout: float = 10.0) -> None:
    """SIGTERM the record's ``pid``, SIGKILL after ``timeout``."""
    pid = record.get("pid")
    if not isinstance(pid, int) or _gone(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def detached(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a service that outlives this worker: own session, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **kwargs,
        )
