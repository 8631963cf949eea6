"""JSON input from users (values, metadata, JSON-lines files): strict, bounded, streamed.

``loads`` is ``json.loads`` without its surprises: ``NaN``/``Infinity`` are
refused (they are not JSON and do not round-trip), nesting deep enough to
exhaust the parser's recursion is a typed error, and every failure names the
field or ``path:line`` it came from.  JSON-lines files are read one line at a
time, never whole.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ._files import open_regular
from .exceptions import ConfigError, InvalidInputError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (not JSON)")


def loads(text: str | bytes, field: str) -> Any:
    """Parse one JSON document; a bad one raises :class:`InvalidInputError` naming ``field``."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidInputError(field, "JSON is nested too deeply") from None
    except ValueError as exc:
        detail = str(exc) if "not allowed" in str(exc) else "not valid JSON"
        raise InvalidInputError(field, detail) from None


def open_lines(path: str | Path) -> TextIO:
    """The stream for ``path`` (``-`` is stdin, which the caller must not close).

    A path must be a regular file: a FIFO would block the command forever
    waiting for a writer, so it is refused at once (stdin may be a pipe).
    """
    if str(path) == "-":
        return sys.stdin
    try:
        fd = open_regular(Path(path), os.O_RDONLY, str(path))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot open: {exc.strerror}") from None
    return open(fd, encoding="utf-8")


def iter_objects(path: str | Path, required: tuple[str, ...], shape: str) -> Iterator[dict[str, Any]]:
    """Objects from ``path`` (``-`` is stdin); a bad line raises ConfigError naming ``path:line``."""
    for _, item in iter_numbered(path, required, shape):
        yield item


def iter_numbered(
    path: str | Path, required: tuple[str, ...], shape: str, *, start_line: int = 1
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) pairs from ``path``, skipping lines before ``start_line``."""
    stream = open_lines(path)
    try:
        for n, line in enumerate(stream, 1):
            if n < start_line or not line.strip():
                continue
            item = loads(line, f"{path}:{n}")
            if not isinstance(item, dict) or any(k not in item for k in required):
                raise ConfigError(f"{path}:{n}", f"expected {shape}")
            yield n, item
    finally:
        if stream is not sys.stdin:
            stream.close()
