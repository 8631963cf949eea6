"""An unknown command names the nested commands it may mean (``rotate`` -> ``keys rotate``)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_cli


def test_rotate_suggests_keys_rotate(tmp_path: Path) -> None:
    proc = run_cli("rotate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "No such command 'rotate'. Did you mean 'keys rotate' or 'provider rotate'?" in proc.stderr
    assert proc.stdout == ""


def test_a_near_miss_of_a_nested_command_is_suggested(tmp_path: Path) -> None:
    proc = run_cli("--json", "cleanup", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Did you mean 'keys cleanup'?" in proc.stderr


def test_a_close_top_level_name_keeps_clicks_own_suggestion(tmp_path: Path) -> None:
    proc = run_cli("lst", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Did you mean 'list'?" in proc.stderr
    assert "keys list" not in proc.stderr


def test_nothing_close_is_a_plain_usage_error(tmp_path: Path) -> None:
    proc = run_cli("frobnicate", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: No such command 'frobnicate'."
