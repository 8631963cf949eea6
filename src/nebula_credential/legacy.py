"""Secrets encrypted under a single application key: the set-up users migrate from.

Most services keep credentials under one key from an environment variable:
a Fernet key (Airflow's ``fernet_key``, comma-separated for MultiFernet) or
a raw AES-256-GCM key.  :class:`LegacyKeySet` opens such tokens so they can
be adopted under managed, versioned keys.  It never writes plaintext
anywhere; callers hold it for one record at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:  # Fernet is imported where a Fernet key set is built (start-up of every other command)
    from cryptography.fernet import MultiFernet

from ._files import read_regular
from .exceptions import ConfigError, DecryptionError


class NonceLayout(enum.StrEnum):
    """Where a raw AES-GCM token keeps its 12-byte nonce."""

    PREFIX = "nonce-prefix"  # nonce || ciphertext || tag  (the common layout)
    SUFFIX = "nonce-suffix"  # ciphertext || tag || nonce


def read_key_material(*, key_file: str | None = None, key_env: str | None = None) -> str:
    """Legacy keys come from a file or a named environment variable, never a flag value."""
    if bool(key_file) == bool(key_env):
        raise ConfigError("legacy key", "give exactly one of --key-file PATH or --key-env NAME")
    if key_file:
        try:
            return read_regular(Path(key_file), "--key-file").decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError("--key-file", f"{key_file} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError("--key-file", f"cannot read {key_file}: {exc.strerror}") from None
    assert key_env is not None
    value = os.environ.get(key_env)
    if not value:
        raise ConfigError("--key-env", f"environment variable {key_env} is not set")
    return value.strip()


def _split_keys(material: str) -> list[str]:
    return [k.strip() for k in material.replace("\n", ",").split(",") if k.strip()]


class LegacyKeySet:
    """A set of legacy keys, newest first; :meth:`decrypt` tries each."""

    def __init__(
        self,
        *,
        fernet: MultiFernet | None = None,
        aesgcm: Sequence[AESGCM] = (),
        layout: NonceLayout = NonceLayout.PREFIX,
        aad: bytes | None = None,
        count: int = 0,
    ) -> None:
        if fernet is None and not aesgcm:
            raise ConfigError("legacy key", "no legacy key given")
        self._fernet = fernet
        self._aesgcm = list(aesgcm)
        self._layout = layout
        self._aad = aad
        self.count = count

    @classmethod
    def fernet_keys(cls, material: str) -> LegacyKeySet:
        """Comma- or newline-separated Fernet keys, as in Airflow's ``fernet_key``."""
        keys = _split_keys(material)
        if not keys:
            raise ConfigError("legacy key", "no Fernet key found")
        try:
            from cryptography.fernet import Fernet, MultiFernet

            fernets = [Fernet(k.encode()) for k in keys]
        except (ValueError, binascii.Error):
            raise ConfigError(
                "legacy key", "Fernet keys must be 32 url-safe base64-encoded bytes, comma-separated"
            ) from None
        return cls(fernet=MultiFernet(fernets), count=len(fernets))

    @classmethod
    def aes_gcm_keys(
        cls, material: str, *, layout: NonceLayout = NonceLayout.PREFIX, aad: bytes | None = None
    ) -> LegacyKeySet:
        """Raw AES-256-GCM keys, base64 or hex, comma- or newline-separated."""
        ciphers = []
        for k in _split_keys(material):
            raw = _decode_key(k)
            if len(raw) != 32:
                raise ConfigError("legacy key", "AES-256-GCM keys must be 32 bytes (base64 or hex)")
            ciphers.append(AESGCM(raw))
        if not ciphers:
            raise ConfigError("legacy key", "no AES-256-GCM key found")
        return cls(aesgcm=ciphers, layout=layout, aad=aad, count=len(ciphers))

    def decrypt(self, token: str | bytes) -> bytes:
        """The plaintext, or :class:`DecryptionError` if no legacy key opens the token."""
        data = token.encode("ascii", "replace") if isinstance(token, str) else bytes(token)
        if self._fernet is not None:
            from cryptography.fernet import InvalidToken

            try:
                return self._fernet.decrypt(data)
            except InvalidToken:
                pass
        for raw in _token_candidates(data) if self._aesgcm else ():
            if len(raw) < 12 + 16:
                continue
            if self._layout is NonceLayout.PREFIX:
                nonce, body = raw[:12], raw[12:]
            else:
                nonce, body = raw[-12:], raw[:-12]
            for cipher in self._aesgcm:
                try:
                    return cipher.decrypt(nonce, body, self._aad)
                except InvalidTag:
                    continue
        raise DecryptionError(f"none of the {self.count} legacy key(s) opens this token")

    def __repr__(self) -> str:
        kind = "fernet" if self._fernet is not None else f"aes-gcm/{self._layout.value}"
        return f"<LegacyKeySet {kind} keys={self.count}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("legacy key sets cannot be pickled")


def _decode_key(text: str) -> bytes:
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(
            text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None, validate=True
        )
    except (ValueError, binascii.Error):
        raise ConfigError("legacy key", "key is neither hex nor base64") from None


def _token_candidates(data: bytes) -> list[bytes]:
    """A token as stored: base64 text (standard or url-safe) or raw bytes."""
    out = []
    text = data.strip()
    alt = b"-_" if (b"-" in text or b"_" in text) else None
    with contextlib.suppress(ValueError, binascii.Error):
        out.append(base64.b64decode(text + b"=" * (-len(text) % 4), altchars=alt, validate=True))
    out.append(data)
    return out


def decode_value(plaintext: bytes) -> Any:
    """JSON when the legacy plaintext is JSON, else the text itself."""
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("legacy plaintext is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError:
        return text
