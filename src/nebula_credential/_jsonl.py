"""Streaming JSON-lines input (import, adopt): one object per line, never the whole file in memory."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .exceptions import ConfigError


def iter_objects(path: str | Path, required: tuple[str, ...], shape: str) -> Iterator[dict[str, Any]]:
    """Objects from ``path`` (``-`` is stdin); a bad line raises ConfigError naming ``path:line``."""
    stream: TextIO = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}:{n}", "not valid JSON") from None
            if not isinstance(item, dict) or any(k not in item for k in required):
                raise ConfigError(f"{path}:{n}", f"expected {shape}")
            yield item
    finally:
        if stream is not sys.stdin:
            stream.close()
