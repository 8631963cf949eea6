"""The Transit engine: key management (:mod:`.keys`) plus the data operations, on typed values.

:class:`Transit` is what the CLI, Python callers and the HTTP mount use.  It
takes bytes and returns ``vault:v<N>:`` strings (or bytes); Vault's JSON
request bodies are parsed by :mod:`~nebula_credential.transit.requests`, and
the cryptography itself is :mod:`~nebula_credential.transit.crypto`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._secret import SecretBytes
from ..exceptions import NebulaCredentialError
from ..models import KeyStatus, KeyVersion
from . import asym, crypto, portable
from .asym import SignOptions
from .errors import TransitInputError, TransitKeyNotFoundError
from .keys import DEFAULT_MOUNT, KeyConfigChange, KeyInfo, LiveKey, TransitKeys
from .keytypes import SUPPORTED_TYPES, key_type, public_key_text
from .settings import TransitKeyConfig
from .wire import version_of

if TYPE_CHECKING:
    from ..vault import Vault

DATAKEY_BITS = (128, 256, 512)


@dataclass(frozen=True, slots=True)
class DataKey:
    """A fresh data key under a Transit key: its ciphertext, and the key itself when asked for."""

    ciphertext: str
    key_version: int
    plaintext: bytes | None = field(default=None, repr=False)


class Transit(TransitKeys):
    """Transit keys of one mount and the operations on their data."""

    # ---- key management that needs the typed keys -----------------------------------------
    def create_key(self, name: str, **kw: Any) -> TransitKeyConfig:
        """Create a key; an RSA key's first private key is generated now, not at its first use."""
        cfg = super().create_key(name, **kw)
        asym.prepare_version(self._key(name), 1)
        return cfg

    def rotate(self, name: str, *, reason: str = "transit rotate") -> KeyVersion:
        kv = super().rotate(name, reason=reason)
        asym.prepare_version(self._key(name), kv.version)
        return kv

    def key_info(self, name: str) -> KeyInfo:
        """As :meth:`TransitKeys.key_info`, with each readable version's public key (asymmetric types)."""
        info = super().key_info(name)
        kt = key_type(info.config.type)
        if not kt.asymmetric or info.config.derived:
            return info
        key = self._key(name)
        public = {
            v.version: public_key_text(kt, asym.version_key(key, v.version))
            for v in info.versions
            if v.version >= info.config.min_decryption_version and v.status in (
                KeyStatus.ACTIVE, KeyStatus.VALID, KeyStatus.GRACE)
        }
        return KeyInfo(info.config, info.versions, info.credentials, public)

    # ---- signatures -------------------------------------------------------------------------
    def sign(self, name: str, data: bytes, opts: SignOptions | None = None, *, context: bytes | None = None,
             key_version: int = 0) -> str:
        """``vault:v<N>:<signature>`` of ``data`` (ed25519, ECDSA or RSA keys)."""
        return asym.sign(self.key_for_data(name), data, opts or SignOptions(), context=context,
                         key_version=key_version)[0]

    def verify(self, name: str, data: bytes, signature: str, opts: SignOptions | None = None, *,
               context: bytes | None = None) -> bool:
        """Whether ``signature`` is a valid signature of ``data`` by a version that may still verify."""
        return asym.verify(self.key_for_data(name), data, signature, opts or SignOptions(), context=context)[0]

    def verify_hmac(self, name: str, data: bytes, mac: str, *, algorithm: str = "sha2-256") -> bool:
        """Whether ``mac`` (``vault:v<N>:...``) is the HMAC of ``data`` under version N."""
        key = self.key_for_data(name)
        version, _ = asym.parse_signed(mac, "hmac")
        asym.verifying_version(key, version)
        return asym.verify_mac(mac, crypto.mac(key, data, algorithm, version, checked=True))

    # ---- material leaving the server, under the key's policy ----------------------------------
    def export(self, name: str, export_type: str, version: str | int | None = None) -> dict[str, Any]:
        return portable.export(self, name, export_type, version)

    def backup(self, name: str) -> str:
        return portable.backup(self, name)

    def restore(self, backup: Any, name: str | None = None, *, force: bool = False) -> TransitKeyConfig:
        return portable.restore(self, backup, name, force=force)

    # ---- data under a loaded key (what a batch uses, one key for all its items) ----------
    def key_for_data(self, name: str) -> LiveKey:
        """The key ``name`` for a data operation; a missing one is an input error, as in Vault."""
        try:
            return self._key(name)
        except TransitKeyNotFoundError:
            raise TransitInputError("encryption key not found") from None

    def encrypt_under(self, key: LiveKey, plaintext: bytes, associated_data: bytes | None,
                      context: bytes | None, key_version: int = 0) -> str:
        return self.encrypt_item(key, plaintext, associated_data, context, key_version)[0]

    def encrypt_item(self, key: LiveKey, plaintext: bytes, associated_data: bytes | None,
                     context: bytes | None, key_version: int = 0) -> tuple[str, int]:
        """(``vault:v<N>:...``, N): :meth:`encrypt_under` with the version it used."""
        observer = self.vault.observer
        if observer is None:
            return crypto.sealer(key).seal(plaintext, associated_data, context, key_version)
        start, ok = time.perf_counter(), False
        try:
            out = crypto.sealer(key).seal(plaintext, associated_data, context, key_version)
            ok = True
            return out
        finally:
            observer(key.config.keyring, "encrypt", time.perf_counter() - start, ok)

    def decrypt_under(self, key: LiveKey, ciphertext: Any, associated_data: bytes | None,
                      context: bytes | None) -> tuple[bytes, int]:
        """(plaintext, the key version that decrypted it)."""
        observer = self.vault.observer
        if observer is None:
            return crypto.opener(key).open(ciphertext, associated_data, context)
        start, ok = time.perf_counter(), False
        try:
            out = crypto.opener(key).open(ciphertext, associated_data, context)
            ok = True
            return out
        finally:
            observer(key.config.keyring, "decrypt", time.perf_counter() - start, ok)

    def observe(self, key: LiveKey, operation: str, seconds: float, ok: bool) -> None:
        """Feed the metrics observer one operation: a single call, or a whole batch request.

        A batch is observed once (its time, ``ok`` when no item failed), as
        ``Vault.put_many`` is not observed per row: the Prometheus observer
        costs about as much as one item's AES-GCM call, so observing every
        item would double the batch's cost for a histogram of batch items.
        """
        observer = self.vault.observer
        if observer is not None:
            observer(key.config.keyring, operation, seconds, ok)

    def rewrap_under(self, key: LiveKey, ciphertext: Any, associated_data: bytes | None,
                     context: bytes | None) -> str:
        plaintext, version = self.decrypt_under(key, ciphertext, associated_data, context)
        if version == key.km.current_key().version:
            return str(ciphertext)  # authentic and current: spend no nonce on it
        return self.encrypt_under(key, plaintext, associated_data, context)

    # ---- data by key name ------------------------------------------------------------------
    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None,
                context: bytes | None = None, key_version: int = 0) -> str:
        """``vault:v<N>:...`` under the active version of ``name``."""
        return self.encrypt_under(self._key(name), plaintext, associated_data, context, key_version)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes | None = None,
                context: bytes | None = None) -> bytes:
        return self.decrypt_under(self._key(name), ciphertext, associated_data, context)[0]

    def rewrap(self, name: str, ciphertext: str, *, associated_data: bytes | None = None,
               context: bytes | None = None) -> str:
        """The same plaintext under the active version (unchanged if it is already there)."""
        return self.rewrap_under(self._key(name), ciphertext, associated_data, context)

    def rewrap_many(self, name: str, ciphertexts: Iterable[str], *, associated_data: bytes | None = None,
                    context: bytes | None = None) -> Iterable[str | NebulaCredentialError]:
        """Stream of rewrapped ciphertexts, or the error of each item that failed."""
        key = self._key(name)
        for ct in ciphertexts:
            try:
                yield self.rewrap_under(key, ct, associated_data, context)
            except NebulaCredentialError as exc:
                yield exc

    def hmac(self, name: str, data: bytes, *, algorithm: str = "sha2-256", key_version: int = 0) -> str:
        """``vault:v<N>:<base64 HMAC>`` with a per-version HMAC key derived from the DEK."""
        return crypto.mac(self._key(name), data, algorithm, key_version)

    def data_key(self, name: str, bits: int = 256, *, associated_data: bytes | None = None,
                 context: bytes | None = None, plaintext: bool = False) -> DataKey:
        """``datakey/{plaintext,wrapped}``: a fresh random key, encrypted under ``name`` (and in the clear
        when ``plaintext``)."""
        key = self.key_for_data(name)
        if bits not in DATAKEY_BITS:
            raise TransitInputError("invalid bit length")
        data_key = SecretBytes.random(bits // 8)
        with data_key:
            ct = self.encrypt_under(key, bytes(data_key.buffer), associated_data, context)
            return DataKey(ct, version_of(ct), bytes(data_key.buffer) if plaintext else None)


__all__ = ["DATAKEY_BITS", "DEFAULT_MOUNT", "SUPPORTED_TYPES", "DataKey", "KeyConfigChange", "KeyInfo",
           "SignOptions", "Transit", "keyring_facts"]


def keyring_facts(vault: Vault, keyring: str) -> dict[str, Any]:
    """What the console shows of a keyring that holds a Transit key: its type and public keys
    (``{}`` for an ordinary keyring or a deleted key)."""
    from .settings import settings_of

    with vault.store.read() as tx:
        cfg = settings_of(tx, keyring)
    if cfg is None or cfg.deleted:
        return {}
    try:
        public = Transit(vault, keyring[: -len(cfg.name) - 1].split("#", 1)[0]).key_info(cfg.name).public_keys
    except NebulaCredentialError:
        public = {}
    return {"transit_type": cfg.type, "public_keys": public}
