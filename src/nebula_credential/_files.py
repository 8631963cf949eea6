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


# ---- files created in a folder another user may share ------------------------------
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIRFLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_folder(path: Path) -> int:
    """A descriptor on the folder ``path``: later names are resolved through it, never by path again."""
    return os.open(path, _DIRFLAGS)


def folder_problem(fd: int) -> str | None:
    """Why a folder is unsafe to create private files in, or None.

    Another user who can write the folder can swap a name in it for a
    symbolic link between our checks and our writes.  So the folder must be
    owned by us or root and not writable by group or others -- unless it is
    sticky and ours (then others cannot rename or remove what we create).
    """
    st = os.fstat(fd)
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (me, 0):
        return f"it is owned by uid {st.st_uid}, neither this user (uid {me}) nor root"
    shared = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and not (mode & stat.S_ISVTX and st.st_uid == me):
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)
        return f"it is writable by {who} (mode {mode:04o})"
    return None


def create_exclusive(dir_fd: int, name: str) -> int:
    """A new 0600 file ``name`` in the folder ``dir_fd``: never an existing file, never through a link."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name")
    fd = os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(dir_fd: int, name: str, fd: int) -> bool:
    """Whether ``name`` in ``dir_fd`` is still the file open as ``fd`` (not replaced, not a link)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) and stat.S_ISREG(st.st_mode)
