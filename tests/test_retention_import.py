"""A custom retention callable must be importable; the error names the module and how to fix it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import cli_env, run_cli

CONFIG = """
[store]
url = "sqlite:///c.db"

[retention]
policy = "custom"
callable = "site_retention:allow"
"""

MODULE = '''
def allow(version, context):
    return "site rule"
'''


def test_an_unimportable_module_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "nc.toml").write_text(CONFIG, encoding="utf-8")
    assert run_cli("--config", "nc.toml", "init", cwd=tmp_path).returncode == 0
    proc = run_cli("--config", "nc.toml", "keys", "cleanup", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 1
    assert "module 'site_retention' is not importable" in proc.stderr
    assert "PYTHONPATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_on_pythonpath_it_loads(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site_retention.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "nc.toml").write_text(CONFIG, encoding="utf-8")
    env = cli_env()
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{site}"
    assert run_cli("--config", "nc.toml", "init", cwd=tmp_path, env=env).returncode == 0
    proc = run_cli("--config", "nc.toml", "keys", "cleanup", "--dry-run", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "custom:site_retention:allow" in proc.stdout
