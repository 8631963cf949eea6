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


# ---- item 17: the guidance pages' settings load, the troubleshooting row quotes the real error ----------
def toml_blocks(name: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", doc(name), flags=re.M | re.S)


def test_the_recommended_settings_are_accepted() -> None:
    import tomllib

    from nebula_credential.config import KeyManagementConfig

    blocks = toml_blocks("docs/operations/rotation.md") + toml_blocks("docs/operations/retention.md")
    assert len(blocks) >= 4
    for block in blocks:
        KeyManagementConfig.from_dict(tomllib.loads(block))
    rotation = " ".join(doc("docs/operations/rotation.md").split())
    for interval in ("30 days", "90 days", "180 days", "manual"):
        assert interval in rotation


def test_troubleshooting_quotes_the_key_not_found_error(tmp_path: Path) -> None:
    run = store_runner(tmp_path)
    err = run("keys", "show", "9", ok=False).stderr.strip().removeprefix("error: ")
    assert err == "keyring 'default' has no key version 9"
    assert "has no key version N" in doc("docs/troubleshooting.md")
    assert "which keyring 'K' does not have (wrong keyring or store?)" in doc("docs/troubleshooting.md")
