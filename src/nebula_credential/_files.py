"""Open a file only if it is a regular file, without ever blocking on a FIFO or device.

``open()`` on a FIFO waits for a writer forever; a device can stream
endless bytes.  Files that hold secrets (root key, token, PIN) are opened
with ``O_NONBLOCK`` and checked by descriptor, so the file checked is the
file read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .exceptions import ConfigError

_FLAGS = os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: Path, flags: int, field: str) -> int:
    """A blocking descriptor on ``path``, refused at once unless it is a regular file."""
    fd = os.open(path, flags | _FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(field, f"{path} is not a regular file (a FIFO, device or folder); refusing it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, field: str) -> bytes:
    """The whole content of a regular file (secret files named by ``*_file`` settings)."""
    with os.fdopen(open_regular(path, os.O_RDONLY, field), "rb") as fh:
        return fh.read()
