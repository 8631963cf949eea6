"""Optional extras: a backend or command without its extra names the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from nebula_credential._extras import extra, require
from nebula_credential.exceptions import MissingDependencyError

from .helpers import cli_in_process


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "granian", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'nebula-credential\[server\]'") as info:
        require("granian", "server")
    assert "'granian'" in str(info.value)
    assert isinstance(info.value, ImportError)  # code catching ImportError still does


def test_extra_block_names_the_missing_module_or_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    with pytest.raises(MissingDependencyError, match=r"'psycopg_pool'.*\[postgres\]"), extra("postgres"):
        import psycopg_pool
    with pytest.raises(MissingDependencyError, match=r"'python-pkcs11'.*\[pkcs11\]"), \
            extra("pkcs11", "python-pkcs11"):
        import psycopg_pool  # noqa: F401
    assert require("json", "none").dumps([]) == "[]"


@pytest.mark.parametrize(("args", "blocked"), [
    (("serve",), "granian"),
    (("serve",), "starlette"),
    (("daemon", "--once", "--ui", "127.0.0.1:0"), "granian"),  # the console on the same stack as serve
    (("daemon", "--once", "--ui", "127.0.0.1:0"), "starlette"),
])
def test_command_without_server_extra_names_it(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch,
                                               args: tuple[str, ...], blocked: str) -> None:
    """``serve`` and ``daemon --ui`` without ``[server]``: the extra's name, not ModuleNotFoundError."""
    run = cli_in_process(tmp_path, capsys, monkeypatch)
    run("init")
    monkeypatch.setitem(sys.modules, blocked, None)
    res = run(*args, ok=False)
    assert res.returncode != 0
    assert "pip install 'nebula-credential[server]'" in res.stderr, res.stderr
    assert f"'{blocked}'" in res.stderr
    assert "ModuleNotFoundError" not in res.stderr + res.stdout
