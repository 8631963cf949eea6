"""A root key file is what it claims: a private regular file of ours, in a folder others cannot write.

Checked on every open, by descriptor (``fstat`` after ``open``) so the
checked file is the one read:

* a regular file -- a FIFO or a device is refused at once (opened with
  ``O_NONBLOCK``, so a FIFO cannot hang the process);
* owned by the running user, mode 0600 or stricter;
* in a directory owned by us (or root) that neither group nor others can
  write, unless it is sticky and ours -- otherwise another user could
  swap the file for one whose key they know.

New key files are created with ``O_CREAT | O_EXCL``: an existing file is
never silently adopted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._files import open_regular
from ..exceptions import ConfigError

FIELD = "provider.key_file"


def check_directory(path: Path) -> None:
    """Refuse a key file whose folder another user could write (and so replace the key).

    For a symbolic link both the link's folder and the target's are checked.
    """
    _check_folder(path, path.absolute().parent)
    if path.is_symlink():
        _check_folder(path, path.resolve().parent)


def _check_folder(path: Path, folder: Path) -> None:
    try:
        st = folder.stat()
    except OSError as exc:
        raise ConfigError(FIELD, f"cannot inspect the folder {folder} of key file {path}: {exc.strerror}") from None
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise ConfigError(
            FIELD, f"the folder {folder} of key file {path} belongs to another user (uid {st.st_uid}); "
            "keep the key in a folder of your own")
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not (st.st_mode & stat.S_ISVTX and st.st_uid == me):
        raise ConfigError(
            FIELD, f"the folder {folder} of key file {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}), so another user could replace the key; "
            f"run `chmod go-w {folder}` or move the key file")


def check_open_file(fd: int, path: Path) -> None:
    """The checks on an open regular file: ours, 0600 or stricter."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise ConfigError(FIELD, f"{path} belongs to another user (uid {st.st_uid}); a root key file must be your own")
    if st.st_mode & 0o177:
        raise ConfigError(
            FIELD, f"{path} is accessible by group or others, or executable (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")


def _open_checked(path: Path, flags: int) -> int:
    check_directory(path)
    try:
        fd = open_regular(path, flags, FIELD)
    except FileNotFoundError:
        raise ConfigError(
            FIELD, f"root key file {path} not found; run `nebula-credential init` to create a "
            "store and its key, or point NEBULA_CREDENTIAL_MASTER_KEY_FILE at the right file") from None
    except OSError as exc:
        raise ConfigError(FIELD, f"cannot open root key file {path}: {exc.strerror}") from None
    try:
        check_open_file(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_key_file(path: Path) -> None:
    """Every check, without reading the key (for ``doctor``)."""
    os.close(_open_checked(path, os.O_RDONLY))


def read_key_file(path: Path) -> bytes:
    fd = _open_checked(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def append_key_file(path: Path, data: bytes) -> None:
    """Append a line (a new root key generation) to a checked key file, durably."""
    fd = _open_checked(path, os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def create_key_file(path: Path, data: bytes) -> None:
    """Create a new key file, 0600, with exclusive create: an existing file is never adopted."""
    check_directory(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise ConfigError(
            FIELD, f"{path} already exists; refusing to adopt or overwrite it silently. To use this "
            f"existing key for a new store, name it: `nebula-credential init --key-file {path}`; "
            "otherwise move it away") from None
    except OSError as exc:
        raise ConfigError(FIELD, f"cannot create root key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
