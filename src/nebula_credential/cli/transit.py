"""transit rewrap-file: move a file of stored Transit ciphertexts to the key's latest version."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from ..exceptions import ConfigError, NebulaCredentialError
from ..transit import DEFAULT_MOUNT, Transit, b64decode
from ._common import AppContext, emit, pass_app
from ._progress import PlainProgress


@click.group()
def transit() -> None:
    """Transit keys (encryption as a service) without the HTTP server."""


def _line_item(line: str, where: str) -> tuple[Any, str]:
    """A line is a JSON string (the ciphertext) or an object with a ``ciphertext`` field."""
    try:
        item = json.loads(line)
    except ValueError:
        raise ConfigError(where, "not valid JSON") from None
    if isinstance(item, str):
        return item, item
    if isinstance(item, dict) and isinstance(item.get("ciphertext"), str):
        return item, item["ciphertext"]
    raise ConfigError(where, 'expected a JSON string or an object with "ciphertext"')


@transit.command(name="rewrap-file")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False, exists=True))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--key", "key_name", required=True, help="Transit key name.")
@click.option("--mount", default=DEFAULT_MOUNT, show_default=True, help="Transit mount the key belongs to.")
@click.option("--context", help="Derivation context (base64) for every line without its own.")
@click.option("--associated-data", "associated_data", help="Associated data (base64) for every line without its own.")
@pass_app
def rewrap_file(app: AppContext, src: str, dst: str, key_name: str, mount: str, context: str | None,
                associated_data: str | None) -> None:
    """Rewrap every ciphertext in IN (JSON lines) under the key's active version into OUT.

    A line is a JSON string ``"vault:v1:..."`` or an object whose
    ``ciphertext`` is replaced (its ``context`` and ``associated_data``, base64,
    are used for that line).  Lines that fail are copied unchanged and named
    by number on stderr; the command then exits 1.  OUT is written to a
    temporary file beside it and renamed at the end, so it is never half-written.
    """
    transit_ = Transit(app.vault(), mount)
    default_ctx = b64decode(context, "--context")
    default_ad = b64decode(associated_data, "--associated-data")
    with open(src, encoding="utf-8") as fh:
        total = sum(1 for line in fh if line.strip())
    progress = PlainProgress(sys.stderr, {key_name: total}, interval=2.0)
    out_dir = Path(dst).resolve().parent
    done = changed = 0
    failed: list[int] = []
    fd, tmp = tempfile.mkstemp(prefix=".rewrap-", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, open(src, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                item, ciphertext = _line_item(line, f"{src}:{n}")
                try:
                    ctx = b64decode(item.get("context"), "context") if isinstance(item, dict) else None
                    ad = b64decode(item.get("associated_data"), "associated_data") if isinstance(item, dict) else None
                    new = transit_.rewrap(key_name, ciphertext, context=ctx or default_ctx,
                                          associated_data=ad or default_ad)
                except NebulaCredentialError as exc:
                    failed.append(n)
                    click.echo(f"{src}:{n}: {exc}", err=True)
                    new = ciphertext
                changed += new != ciphertext
                if isinstance(item, dict):
                    item["ciphertext"] = new
                    out.write(json.dumps(item, separators=(",", ":")) + "\n")
                else:
                    out.write(json.dumps(new) + "\n")
                done += 1
                progress(key_name, 1)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    progress.finish(key_name)
    transit_.audit("transit.rewrap_file", transit_.keyring_of(key_name), None,
                   lines=done, rewrapped=changed, failed=len(failed))
    emit(app, {"key": key_name, "lines": done, "rewrapped": changed, "failed": len(failed)},
         lambda: click.echo(f"rewrapped {changed} of {done} line(s) into {dst} ({len(failed)} failed)"))
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {done} line(s) could not be rewrapped and were copied unchanged "
            f"(first: line {failed[0]})")
