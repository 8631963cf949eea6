"""The one interface every root of trust implements.

Template-method style, after the AWS Encryption SDK's key providers: the
public methods (``wrap``, ``unwrap``, ``generate_dek``, ``open_dek``,
``rewrap``, ``rotate_root_key``, ``check``) do the shared work once --
bounded retries with backoff, timing for metrics, uniform errors -- and a
backend implements only the small private hooks (``_wrap``, ``_unwrap``,
``_rotate``, and optionally ``_generate``, ``_rewrap``, ``_open``).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._secret import SecretBytes
from .._sleep import sleep
from ..envelope import dek_context
from ..exceptions import (
    NebulaCredentialError,
    ProviderError,
    ProviderUnavailableError,
)

T = TypeVar("T")


log = logging.getLogger(__name__)

class Aead(Protocol):
    """What a DEK can do once opened: ``cryptography``'s AESGCM shape."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class WrapContext:
    """What a wrapped DEK is bound to: a provider must refuse it elsewhere."""

    keyring: str
    version: int
    purpose: str = "dek"

    def as_bytes(self) -> bytes:
        return dek_context(self.keyring, self.version, self.purpose)

    def as_dict(self) -> dict[str, str]:
        """For backends that take a string map (KMS encryption context)."""
        return {
            "nebula:purpose": self.purpose,
            "nebula:keyring": self.keyring,
            "nebula:version": str(self.version),
        }


class TransientProviderError(ProviderUnavailableError):
    """Raised by hooks for failures worth retrying (network, throttling, 5xx)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter for transient provider failures.

    The defaults (6 attempts, 0.1 s doubling, capped at 1 s) wait about 1.3
    to 2.5 s in all: long enough for an HSM or KMS blip of about two seconds,
    short enough that a real outage is reported promptly.  Configured with
    ``[provider] retry_attempts``, ``retry_backoff`` and ``retry_max``.
    """

    attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 1.0

    def delays(self) -> list[float]:
        import random  # here: only a failed call needs it (start-up skips its import, issue 27)

        out = []
        for i in range(self.attempts - 1):
            d = min(self.max_delay, self.base_delay * (2**i))
            out.append(d * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
        return out


Observer = Callable[[str, str, float, bool], None]
"""(provider name, operation, seconds, ok) -> None; fed to metrics."""


class KeyProvider(ABC):
    """A root of trust (KEK) that wraps and unwraps data keys.

    Subclasses set ``name`` (the ``[provider] type`` value) and implement the
    hooks.  Secrets a backend needs (PINs, tokens) are read by the backend
    from a file or an environment variable it is told about, never passed as
    literal text in configuration.
    """

    name: ClassVar[str] = "abstract"
    #: True where the backend can rewrap without exposing the DEK to us.
    server_side_rewrap: ClassVar[bool] = False

    def __init__(self, *, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.observer: Observer | None = None
        self.calls: dict[str, int] = {}

    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> KeyProvider:
        """Build from ``[provider]`` settings; ``create`` sets up a new root key where applicable."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from configuration")

    # ---- hooks -------------------------------------------------------
    @abstractmethod
    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes: ...

    @abstractmethod
    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes: ...

    @abstractmethod
    def _rotate(self) -> str: ...

    def _generate(self, ctx: WrapContext) -> tuple[SecretBytes, bytes]:
        dek = SecretBytes.random(32)
        return dek, self._wrap(dek, ctx)

    def _rewrap(self, wrapped: bytes, ctx: WrapContext) -> bytes:
        with self._unwrap(wrapped, ctx) as dek:
            return self._wrap(dek, ctx)

    def _open(self, wrapped: bytes, ctx: WrapContext) -> Aead:
        with self._unwrap(wrapped, ctx) as dek:
            return AESGCM(dek.buffer)

    def _create(self, ctx: WrapContext) -> tuple[Aead, bytes]:
        dek, wrapped = self._generate(ctx)
        with dek:
            return AESGCM(dek.buffer), wrapped

    def _destroy(self, wrapped: bytes, ctx: WrapContext) -> None:  # noqa: B027 - optional hook
        """Erase material the backend itself holds for a DEK (HSM direct mode).

        Most backends hold nothing per DEK: erasing the wrapped form in the
        store is the destruction, so the default does nothing.
        """

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for ``status`` and the store's provider record."""
        return {"type": self.name}

    def root_key_id(self) -> str:
        """Identifier of the current root key (version), never its material."""
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release sessions and connections."""

    def check_root_unchanged(self) -> None:  # noqa: B027 - optional hook, most roots cannot vanish locally
        """Raise if the root key this object loaded is no longer where it was found.

        Called under the store's init lock when the caller loaded the root
        before taking it: another init may have created that root, failed
        and undone it (:meth:`discard_created_root`) meanwhile, and committing
        under a key nothing holds any more would make the store unreadable.
        """

    def discard_created_root(self) -> None:  # noqa: B027 - optional hook, most providers create nothing
        """Undo the root key this object created for an init that then failed.

        Called under the store's init lock, before the lock is released, so
        no other init can have started using it.  Only what this object
        itself created is touched (a key file it wrote, a KMS key it made);
        a named key that a retry reuses is left as it is.
        """

    # ---- template ----------------------------------------------------
    def _call(self, op: str, fn: Callable[[], T]) -> T:
        self.calls[op] = self.calls.get(op, 0) + 1
        delays: list[float] | None = None  # drawn at the first failure: most calls never need them
        start = time.perf_counter()
        ok = False
        try:
            while True:
                try:
                    result = fn()
                    ok = True
                    return result
                except TransientProviderError as exc:
                    if delays is None:
                        delays = self.retry.delays()
                    attempt = self.retry.attempts - len(delays)
                    if not delays:
                        raise ProviderUnavailableError(
                            f"{self.name} provider unavailable during {op} after {attempt} attempts "
                            f"over {time.perf_counter() - start:.2f}s: {exc}"
                        ) from exc
                    delay = delays.pop(0)
                    log.warning("%s provider: %s attempt %d of %d failed (%s); retrying in %.2fs",
                                self.name, op, attempt, self.retry.attempts, type(exc).__name__, delay)
                    sleep(delay)  # yields the event loop when the asyncio API awaits this call
                except NebulaCredentialError:
                    raise
                except Exception as exc:  # a backend bug or an unmapped library error
                    raise ProviderError(
                        f"{self.name} provider failed during {op}: {type(exc).__name__}"
                    ) from exc
        finally:
            if self.observer is not None:
                self.observer(self.name, op, time.perf_counter() - start, ok)

    def wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        return self._call("wrap", lambda: self._wrap(dek, ctx))

    def unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        """Raw DEK bytes, for callers that need them (the audit HMAC key)."""
        return self._call("unwrap", lambda: self._unwrap(wrapped, ctx))

    def generate_dek(self, ctx: WrapContext) -> tuple[Aead, bytes]:
        """A new data key: a ready cipher and the form stored in the database."""
        return self._call("generate", lambda: self._create(ctx))

    def open_dek(self, wrapped: bytes, ctx: WrapContext) -> Aead:
        """A cipher for a stored DEK; the plaintext DEK is wiped before return."""
        return self._call("unwrap", lambda: self._open(wrapped, ctx))

    def rewrap(self, wrapped: bytes, ctx: WrapContext) -> bytes:
        """Re-protect a DEK under the current root key version."""
        return self._call("rewrap", lambda: self._rewrap(wrapped, ctx))

    def destroy_dek(self, wrapped: bytes, ctx: WrapContext) -> None:
        """Erase any backend-held material of a destroyed DEK."""
        self._call("destroy", lambda: self._destroy(wrapped, ctx))

    def rotate_root_key(self) -> str:
        """Create a new root key version; returns its id."""
        return self._call("rotate", self._rotate)

    def check(self) -> None:
        """One wrap/unwrap round trip: proves the root key is reachable and usable."""
        ctx = WrapContext("__healthcheck__", 1, "check")
        with SecretBytes.random(32) as probe:
            wrapped = self.wrap(probe, ctx)
            with self.unwrap(wrapped, ctx) as back:
                if not back.equals(probe):
                    raise ProviderError(f"{self.name} provider round trip returned other bytes")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("key providers cannot be pickled")
