"""Key material that refuses to be printed, pickled or kept longer than needed.

Python cannot guarantee zeroisation: ``bytes`` objects are immutable and the
interpreter, OpenSSL and client libraries may hold copies we cannot reach.
What we can do, we do: our own copies of raw key bytes live in a
``bytearray`` that is overwritten with zeros when :meth:`SecretBytes.wipe`
runs, when a ``with`` block ends, or when the object is garbage-collected.
"""

from __future__ import annotations

import hmac
import os
from types import TracebackType
from typing import NoReturn


class SecretBytes:
    """A wipeable buffer of secret bytes with a redacted ``repr``."""

    __slots__ = ("__weakref__", "_buf")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._buf = bytearray(data)
        if isinstance(data, bytearray):
            # The caller's buffer is a copy of the secret too: wipe it.
            data[:] = b"\x00" * len(data)

    @classmethod
    def random(cls, size: int = 32) -> SecretBytes:
        buf = bytearray(os.urandom(size))
        return cls(buf)

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def buffer(self) -> bytearray:
        """The live buffer; do not keep references beyond the call that needs it."""
        if self.wiped:
            raise ValueError("secret was already wiped")
        return self._buf

    def to_bytes(self) -> bytes:
        """An immutable copy, for APIs that demand ``bytes`` (it cannot be wiped)."""
        return bytes(self.buffer)

    @property
    def wiped(self) -> bool:
        return not self._buf

    def wipe(self) -> None:
        n = len(self._buf)
        if n:
            self._buf[:] = b"\x00" * n
            del self._buf[:]

    def equals(self, other: SecretBytes) -> bool:
        return hmac.compare_digest(self._buf, other._buf)

    def __enter__(self) -> SecretBytes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wipe()

    def __del__(self) -> None:
        self.wipe()

    def __repr__(self) -> str:
        return f"SecretBytes(<redacted {len(self._buf)} bytes>)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("secret key material cannot be pickled")

    def __eq__(self, other: object) -> bool:  # no timing-unsafe comparison by accident
        return isinstance(other, SecretBytes) and self.equals(other)

    __hash__ = None  # type: ignore[assignment]
