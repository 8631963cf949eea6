"""Root key in a local file: the embedded default.

The file holds one line per root-key generation, newest last::

    nckey1 <key id> <base64 of 32 random bytes>

It is created with mode 0600 and refused when group or others can read it.
``provider rotate`` appends a generation; wrapped DEKs name the generation
that wrapped them, so older lines keep unwrapping until every DEK has been
rewrapped.  DEKs are wrapped with AES-256-GCM under the root key, with the
keyring and version as associated data.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._secret import SecretBytes
from ..exceptions import ConfigError, DecryptionError, ProviderError
from .base import KeyProvider, WrapContext

_TAG = b"L1"
_ID_LEN = 8


def _key_id(material: bytes | bytearray) -> bytes:
    return hashlib.sha256(b"nebula-credential root key id\x00" + bytes(material)).digest()[:_ID_LEN]


def check_key_file_permissions(path: Path) -> None:
    """Refuse a key file that anyone but its owner can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "provider.key_file",
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`",
        )


KEY_FILE_ENV = "NEBULA_CREDENTIAL_MASTER_KEY_FILE"


def key_file_path(settings: dict[str, Any], base_dir: Path | None) -> Path:
    """``[provider] key_file``, else $NEBULA_CREDENTIAL_MASTER_KEY_FILE, else master.key by the store."""
    env = os.environ.get(KEY_FILE_ENV)
    raw = env or settings.get("key_file")
    if raw:
        p = Path(str(raw)).expanduser()
        return p if p.is_absolute() or base_dir is None or env else (base_dir / p)
    return (base_dir or Path.cwd()) / "master.key"


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

    # ---- construction -------------------------------------------------
    @classmethod
    def ephemeral(cls) -> LocalKeyProvider:
        """A root key that lives only in this process (tests, demos)."""
        return cls([SecretBytes.random(32)])

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        """Write a new key file (mode 0600); refuses to overwrite one."""
        p = Path(path)
        key = SecretBytes.random(32)
        line = cls._line(key)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError("provider.key_file", f"{p} already exists; refusing to overwrite a root key") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return cls([key], path=p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalKeyProvider:
        p = Path(path)
        return cls(cls._read_keys(p), path=p)

    @staticmethod
    def _read_keys(p: Path) -> list[SecretBytes]:
        """Every generation in the key file, oldest first (permissions checked)."""
        if not p.exists():
            raise ConfigError(
                "provider.key_file",
                f"root key file {p} is missing: this store's root key was expected there. Restore the "
                "file from your backup, or point [provider] key_file or NEBULA_CREDENTIAL_MASTER_KEY_FILE "
                "at it (`init` would make a new key, which cannot open this store)",
            )
        check_key_file_permissions(p)
        keys = []
        for n, raw in enumerate(p.read_bytes().splitlines(), 1):
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
        path = key_file_path(settings, base_dir)
        return cls.create(path) if create and not path.exists() else cls.load(path)

    def stored_settings(self) -> dict[str, Any]:
        return {"key_file": str(self._path)} if self._path else {}

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
        check_key_file_permissions(self._path)
        key = SecretBytes.random(32)
        line = self._line(key)
        with open(self._path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
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
