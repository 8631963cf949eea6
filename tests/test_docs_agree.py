"""What the docs say matches what the program does (issue 29, item 16)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from nebula_credential.cli._progress import PlainProgress
from nebula_credential.config import AlertsConfig, AuditConfig
from nebula_credential.console._access import security_headers
from tests.helpers import store_runner

ROOT = Path(__file__).resolve().parents[1]


def doc(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def test_the_documented_csp_is_the_one_sent() -> None:
    text = " ".join(doc("docs/operations/console.md").split())
    documented = re.search(r"Strict Content-Security-Policy\*\*: `([^`]+)`", text)
    assert documented is not None
    sent = dict(security_headers())[b"content-security-policy"].decode()
    assert documented.group(1) == sent


def test_make_test_installs_the_extras_the_readme_names() -> None:
    makefile = doc("Makefile")
    extras = re.search(r"\$\(VENV\)/\.test:.*?install -q -e '(\.\[[^\]]+\])'", makefile, flags=re.S)
    assert extras is not None
    for name in ("README.md", "docs/getting-started.md"):
        line = next(ln for ln in doc(name).splitlines() if ln.startswith("make test"))
        assert f"installs {extras.group(1)} " in line, (name, line)


def test_the_cli_reference_says_global_options_go_anywhere(tmp_path: Path) -> None:
    text = " ".join(doc("docs/reference/cli.md").split())
    assert "come before the command" not in text
    assert "before or after the command" in text
    run = store_runner(tmp_path)
    assert run("keys", "list", "--json").stdout == run("--json", "keys", "list").stdout


def test_the_documented_progress_lines_have_the_printed_shape() -> None:
    lines = [ln for ln in doc("docs/operations/reencryption.md").splitlines() if ln.startswith("reencrypt: ")]
    assert lines
    out = io.StringIO()
    progress = PlainProgress(out, {"production": 2, "user": 2}, interval=0)
    progress("production", 2)
    progress("user", 1)
    progress.finish()
    printed = out.getvalue().splitlines()

    def shape(line: str) -> str:
        return re.sub(r"\d[\d,.]*", "N", line.replace("production", "SCOPE").replace("user", "SCOPE"))

    assert {shape(ln) for ln in lines} <= {shape(ln) for ln in printed}


def test_the_access_error_alert_does_not_need_audited_reads() -> None:
    # the configuration reference is generated from these docstrings
    import inspect

    source = inspect.getsource(AuditConfig) + inspect.getsource(AlertsConfig)
    assert "needed for the access-error" not in source
    assert "from the audit trail" not in source
