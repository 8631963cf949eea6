"""Config files the CLI writes (``init --write-config``), and the one setting it may add to them later.

A file the CLI wrote starts with :data:`MARKER`.  Only such a file is ever
changed by the CLI, and only to add a setting a command created (the KMS key
``init`` made when the file named none): a file the operator wrote is theirs,
and gets printed advice instead.  The change is a text insertion under the
``[provider]`` header, so every other line and comment stays as it was; the
result is parsed back and must equal the old file plus that one setting, or
nothing is written.  Files are replaced atomically (a temporary file in the
same folder, flushed, then renamed over), so a crash leaves the old file or
the new one, never half of one.

``tomllib`` is imported where it is used: the CLI's start-up stays lean.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: The first line of every config file the CLI writes, and how it recognises one later.
MARKER = "# Written by nebula-credential init --write-config."
_HEADER = (f"{MARKER}\n"
           "# Edit freely. nebula-credential changes this file only to add a setting a command created\n"
           "# (init's new KMS key, as [provider] key_id), keeping every other line and comment.\n")
_PROVIDER_HEADER = re.compile(r"^[ \t]*\[[ \t]*provider[ \t]*\][ \t]*(#.*)?$")


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a config file the CLI wrote (its first line is :data:`MARKER`)."""
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n") == MARKER
    except (OSError, UnicodeDecodeError):
        return False


def url_has_password(url: str) -> bool:
    """A store URL with a password in it: never written to a file by the CLI."""
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _value(value: Any) -> str:
    # JSON strings, integers, floats and booleans are valid TOML values
    return json.dumps(value)


def new_config(url: str, provider_type: str, settings: dict[str, Any]) -> str:
    """The text of a new config file: the marker, the store URL and the provider's settings."""
    lines = [_HEADER, "[store]", f"url = {_value(url)}", "", "[provider]", f"type = {_value(provider_type)}"]
    lines += [f"{key} = {_value(value)}" for key, value in sorted(settings.items())
              if isinstance(value, str | int | float | bool)]
    return "\n".join(lines) + "\n"


def with_provider_setting(text: str, key: str, value: str, provider_type: str) -> str | None:
    """``text`` with ``key = value`` added under its ``[provider]`` header, or None when that is
    not a safe one-line change (no such header, a provider of another type, the key already set,
    or a result that does not parse as exactly the old file plus the setting)."""
    import tomllib

    try:
        old = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    provider = old.get("provider")
    if not isinstance(provider, dict) or provider.get("type") != provider_type or key in provider:
        return None
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if _PROVIDER_HEADER.match(line.rstrip("\r\n"))]
    if len(headers) != 1:
        return None
    at = headers[0] + 1
    newline = "\r\n" if lines[headers[0]].endswith("\r\n") else "\n"
    if not lines[headers[0]].endswith(("\n", "\r")):
        lines[headers[0]] += newline
    lines.insert(at, f"{key} = {_value(value)}{newline}")
    new_text = "".join(lines)
    try:
        new = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        return None
    expected = dict(old)
    expected["provider"] = dict(provider) | {key: value}
    return new_text if new == expected else None


def write_atomically(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Replace (or, ``exclusive``, create) ``path`` with ``text`` in one rename.

    A replaced file keeps its permission bits; a new one is readable by its
    owner only (a config file names the store and the root of trust).  A
    symbolic link is followed: its target is the file replaced.
    """
    target = path.resolve() if path.is_symlink() else path
    if exclusive and os.path.lexists(target):
        raise FileExistsError(target)
    mode = 0o600 if exclusive else os.stat(target).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, target)  # fails if another process created the file meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
