"""``demo``: the whole lifecycle on a throwaway SQLite store, in a few seconds."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from ..drill import copy_envelope
from ..exceptions import NebulaCredentialError
from ..opening import open as open_vault
from ..vault import Vault
from ._common import AppContext, console, is_tty, pass_app
from .keys import versions_table

SCOPES = ("production", "user", "development")
#: What a user runs after the demo: create a store, put a secret (from stdin, never argv), check it.
NEXT_COMMANDS = (
    "nebula-credential init                # ./nebula-credential.db and its root key ./master.key",
    "nebula-credential put github --scope production < github.json",
    "nebula-credential doctor              # then: keys rotate && reencrypt",
)


def _credentials(n: int) -> Iterator[tuple[str, Any, str, dict[str, Any] | None]]:
    rng = random.Random(7)  # noqa: S311 - demo data, not secrets
    for i in range(n):
        scope = SCOPES[i % 3]
        token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(40))
        yield f"{scope}/service-{i:05d}", {"token": f"tok_{token}", "user": f"svc{i}"}, scope, {"team": f"t{i % 7}"}


def _show(vault: Vault, title: str) -> None:
    km = vault.keys
    table = versions_table(km.keyring, km.list(), km.credential_counts())
    table.title = title
    console.print(table)


def _redact(value: str) -> str:
    return value[:4] + "…" if len(value) > 4 else "…"


def run_demo(folder: Path, count: int) -> None:
    url = f"sqlite:///{folder / 'demo.db'}"
    console.print("nebula-credential demo", style="bold")
    console.print(f"store: {url}\nroot key: {folder / 'master.key'} (mode 0600, local provider)")
    vault = open_vault(url, create=True)
    try:
        start = time.perf_counter()
        imported = vault.put_many(_credentials(count))
        seconds = time.perf_counter() - start
        console.print(f"imported {imported:,} credentials across {', '.join(SCOPES)} "
                      f"in {seconds:.2f}s ({imported / seconds:,.0f}/s)")
        _show(vault, "before rotation")

        old = vault.keys.active_version().version
        new = vault.keys.rotate(reason="demo")
        assert new is not None
        console.print(f"rotated: v{old} -> v{new.version}; v{old} keeps decrypting while credentials move")

        _, pending, _ = vault.pending()
        if is_tty():
            columns = (TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("reencrypt", total=pending)
                result = vault.reencrypt(progress=lambda scope, n: bar.advance(task, n))
        else:
            done = 0

            def line(scope: str, n: int) -> None:
                nonlocal done
                done += n
                if done % 2500 < n or done == pending:
                    console.print(f"re-encrypting: {done}/{pending} ({scope})")

            result = vault.reencrypt(progress=line)
        console.print(f"re-encrypted {result.reencrypted:,} credentials in {result.seconds:.2f}s "
                      f"({result.reencrypted / max(result.seconds, 1e-9):,.0f}/s), production first: "
                      f"{json.dumps(result.by_scope)}")
        _show(vault, "after re-encryption")

        record = vault.get_record("production/service-00000")
        console.print(f"read back {record.id}: scope {record.scope}, key v{record.key_version}, "
                      f"token {_redact(record.value['token'])}")

        # Tamper: copy one credential's envelope onto another row.
        copy_envelope(vault, "production/service-00000", "user/service-00001")
        try:
            vault.get("user/service-00001")
        except NebulaCredentialError as exc:
            console.print(Panel(Text.assemble((type(exc).__name__, "bold"), f": {exc}"),
                                title="tamper attempt refused", border_style="red", expand=False))
        else:  # pragma: no cover - would be a security bug
            raise NebulaCredentialError("tampered envelope was accepted")
        verdict = vault.audit.verify()
        console.print(f"audit chain: {'intact' if verdict.ok else 'BROKEN'} ({verdict.events} events)")
    finally:
        vault.close()
    console.print("\nnext, on a store of your own:")
    for command in NEXT_COMMANDS:
        console.print(f"  {command}")


@click.command()
@click.option("--count", default=10_000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="How many demo credentials to import.")
@click.option("--keep", is_flag=True, help="Keep the temp folder and print its path.")
@pass_app
def demo(app: AppContext, count: int, keep: bool) -> None:
    """The whole lifecycle on a throwaway SQLite store: import, rotate, re-encrypt, tamper."""
    folder = Path(tempfile.mkdtemp(prefix="nebula-demo-"))
    try:
        run_demo(folder, count)
    finally:
        if keep:
            console.print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
