"""Root key in a local file: the embedded default.

The file holds one line per root-key generation, newest last::

    nckey1 <key id> <base64 of 32 random bytes>

It is created with mode 0600 (exclusive create) and refused unless it is a
private regular file of the running user in a folder others cannot write
(:mod:`.keyfile`).
``provider rotate`` appends a generation; wrapped DEKs name the generation
that wrapped them, so older lines keep unwrapping until every DEK has been
rewrapped.  DEKs are wrapped with AES-256-GCM under the root key, with the
keyring and version as associated data.
"""

from __future__ import annotations

import base64
import hashlib
import os
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._secret import SecretBytes
from ..exceptions import ConfigError, DecryptionError, NebulaCredentialError, ProviderError
from .base import KeyProvider, WrapContext
from .keyfile import append_key_file, create_key_file, read_key_file

_TAG = b"L1"
_ID_LEN = 8


def _key_id(material: bytes | bytearray) -> bytes:
    return hashlib.sha256(b"nebula-credential root key id\x00" + bytes(material)).digest()[:_ID_LEN]


KEY_FILE_ENV = "NEBULA_CREDENTIAL_MASTER_KEY_FILE"


def key_file_path(settings: dict[str, Any], base_dir: Path | None) -> Path:
    """$NEBULA_CREDENTIAL_MASTER_KEY_FILE, else ``[provider] key_file``, else master.key beside a SQLite store.

    ``base_dir`` is the folder of a file-backed store (from the store URL the
    process was given), never anything read from the store.  Any other store
    needs the key file named: a default in the working directory would pick up
    whatever file happens to be there.
    """
    env = os.environ.get(KEY_FILE_ENV)
    raw = env or settings.get("key_file")
    if raw:
        p = Path(str(raw)).expanduser()
        return p if p.is_absolute() or base_dir is None or env else (base_dir / p)
    if base_dir is None:
        raise ConfigError(
            "provider.key_file",
            "the local provider finds its key file by itself only beside a SQLite store; for this "
            f"store name it with [provider] key_file in the config file or {KEY_FILE_ENV}",
        )
    return base_dir / "master.key"


def _decrypt_to_buffer(cipher: AESGCM, nonce: bytes, data: bytes, aad: bytes) -> bytearray:
    """Plaintext straight into a wipeable buffer where cryptography allows (>= 45), not an immutable bytes."""
    if hasattr(cipher, "decrypt_into"):
        out = bytearray(len(data) - 16)
        cipher.decrypt_into(nonce, data, aad, out)
        return out
    return bytearray(cipher.decrypt(nonce, data, aad))  # pragma: no cover - older cryptography


#: A 32-byte key from a CSPRNG has fewer than 16 distinct bytes with probability ~1e-18.
MIN_DISTINCT_KEY_BYTES = 16


def check_key_entropy(material: bytes | bytearray, where: str) -> None:
    """Refuse a hand-made root key with no entropy (all zero, one repeated byte, a short pattern).

    Only the count of distinct byte values is looked at, never printed: a
    random key passes, ``b"\\0" * 32`` or ``b"abcd" * 8`` does not.
    """
    if len(set(material)) < MIN_DISTINCT_KEY_BYTES:
        raise ConfigError(
            "provider.key_file",
            f"{where}: the key has fewer than {MIN_DISTINCT_KEY_BYTES} distinct bytes in {len(material)}; "
            "it was not made by a random generator (use `nebula-credential init` to create a key)")


class LocalKeyProvider(KeyProvider):
    """AES-256-GCM key wrapping under a root key read from a 0600 file."""

    name: ClassVar[str] = "local"

    def __init__(self, keys: list[SecretBytes], *, path: Path | None = None) -> None:
        super().__init__()
        if not keys:
            raise ConfigError("provider.key_file", "no root key present")
        self._path = path
        self._created = False
        self._ciphers: dict[bytes, AESGCM] = {}
        self._current = b""
        for key in keys:
            self._add(key)

    def _add(self, key: SecretBytes) -> bytes:
        with key:
            if len(key) != 32:
                raise ConfigError("provider.key_file", "root key must be 32 bytes")
            kid = _key_id(key.buffer)
            self._ciphers[kid] = AESGCM(key.buffer)
        self._current = kid
        return kid

    def _file_holds_this_key(self) -> bool:
        """Whether the key file (there is one) still holds this object's root key."""
        assert self._path is not None
        try:
            return LocalKeyProvider.load(self._path).root_key_id() == self.root_key_id()
        except (OSError, NebulaCredentialError):
            return False

    def check_root_unchanged(self) -> None:
        """The key file this key was read from must still hold it (another init may have removed it)."""
        if self._path is not None and not self._file_holds_this_key():
            raise ConfigError("provider.key_file", f"root key file {self._path} was removed or replaced while "
                              "this init waited for another one; nothing was written: run init again")

    def discard_created_root(self) -> None:
        """Remove the key file :meth:`create` wrote, if it still holds this key."""
        if self._created and self._path is not None and self._file_holds_this_key():
            with suppress(OSError):  # cleanup of a failing init: the init's own error is the one to report
                self._path.unlink()

    # ---- construction -------------------------------------------------
    @classmethod
    def ephemeral(cls) -> LocalKeyProvider:
        """A root key that lives only in this process (tests, demos)."""
        return cls([SecretBytes.random(32)])

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        """Write a new key file (mode 0600, exclusive create); refuses an existing one."""
        p = Path(path)
        key = SecretBytes.random(32)
        create_key_file(p, cls._line(key))
        provider = cls([key], path=p)
        provider._created = True
        return provider

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        p = Path(path)
        return cls(cls._read_keys(p), path=p)

    @staticmethod
    def _read_keys(p: Path) -> list[SecretBytes]:
        """Every generation in the key file, oldest first (file, owner, mode and folder checked)."""
        keys = []
        for n, raw in enumerate(read_key_file(p).splitlines(), 1):
            if not raw.strip():
                continue
            parts = raw.split()
            if len(parts) != 3 or parts[0] != b"nckey1":
                raise ConfigError("provider.key_file", f"{p} line {n}: not a nebula-credential key line")
            try:
                material = bytearray(base64.b64decode(parts[2], validate=True))
            except ValueError:
                raise ConfigError("provider.key_file", f"{p} line {n}: key is not valid base64") from None
            if len(material) != 32 or _key_id(material).hex().encode() != parts[1]:
                raise ConfigError("provider.key_file", f"{p} line {n}: key is damaged (length or id mismatch)")
            check_key_entropy(material, f"{p} line {n}")
            keys.append(SecretBytes(material))
        return keys

    @classmethod
    def from_config(
        cls, settings: dict[str, Any], *, create: bool = False, base_dir: Path | None = None
    ) -> LocalKeyProvider:
        """``create``: a new key file, never an existing one (adopt that with :meth:`load`)."""
        path = key_file_path(settings, base_dir)
        return cls.create(path) if create else cls.load(path)

    @staticmethod
    def _line(key: SecretBytes) -> bytes:
        return b"nckey1 %s %s\n" % (_key_id(key.buffer).hex().encode(), base64.b64encode(key.buffer))

    # ---- hooks -----------------------------------------------------------
    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        nonce = os.urandom(12)
        ct = self._ciphers[self._current].encrypt(nonce, dek.buffer, ctx.as_bytes())  # no bytes copy of the DEK
        return _TAG + self._current + nonce + ct

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        if len(wrapped) != 2 + _ID_LEN + 12 + 32 + 16 or wrapped[:2] != _TAG:
            raise ProviderError("wrapped key is not in the local provider's format")
        kid = wrapped[2 : 2 + _ID_LEN]
        cipher = self._ciphers.get(kid)
        if cipher is None and self._path is not None:
            # `provider rotate` in another process appended a generation: reload once.
            for key in self._read_keys(self._path):
                self._add(key)
            cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(
                f"data key {ctx.keyring}/v{ctx.version} was wrapped by root key {kid.hex()}, "
                "which is not in this key file (wrong key file for this store?)"
            )
        nonce = wrapped[2 + _ID_LEN : 2 + _ID_LEN + 12]
        try:
            return SecretBytes(_decrypt_to_buffer(cipher, nonce, wrapped[2 + _ID_LEN + 12 :], ctx.as_bytes()))
        except InvalidTag:
            raise DecryptionError(
                f"data key {ctx.keyring}/v{ctx.version} does not unwrap under root key {kid.hex()}"
            ) from None

    def _rotate(self) -> str:
        if self._path is None:
            key = SecretBytes.random(32)
            return self._add(key).hex()
        key = SecretBytes.random(32)
        append_key_file(self._path, self._line(key))
        return self._add(key).hex()

    def root_key_id(self) -> str:
        return self._current.hex()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "key_file": str(self._path) if self._path else None,
            "root_key_id": self.root_key_id(),
            "generations": len(self._ciphers),
        }
