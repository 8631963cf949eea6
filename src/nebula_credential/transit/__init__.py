"""Transit: encryption as a service, in the shape of Vault's Transit engine.

A Transit key **is** a keyring: its versions, statuses, retention, audit
and metrics are the keyring's, and rotation (periodic, cron, the AES-GCM
usage bound) is the same machinery.  What Vault keeps per key beyond that
(``derived``, ``deletion_allowed``, ``min_*_version``, the rotation
settings) is a small JSON record in the store's meta table.

The package, one job per module: ``keys`` (key management: settings,
create, read, config, rotate, trim, delete), ``crypto`` (AES-GCM under a
key, derived subkeys, HMAC), ``engine`` (:class:`Transit`: both, on typed
values: bytes in, ``vault:v<N>:`` strings out; used by the CLI and Python
callers), ``requests`` (Vault's JSON request bodies parsed into those
values, ``batch_input`` with per-item results and errors, the answers
shaped: the HTTP mount is a thin router over its ``handle_*``), ``wire``
(Vault's base64 fields, ciphertext strings, the AAD, batch results),
``settings`` (the per-key record and how ``maintain`` treats a Transit
keyring), ``keytypes`` (Vault's key types and each version's typed key made
from its DEK), ``asym`` (sign, verify, RSA-OAEP, the sealed RSA keys),
``portable`` (export and backup/restore under the key's policy) and ``errors``.

Ciphertexts look like Vault's, ``vault:v<N>:<base64>``, with our envelope v1
inside.  The AES-GCM associated data binds the ciphertext to its key (the
keyring, so a deleted and re-created key never accepts old ciphertexts),
to the caller's ``associated_data`` and, for derived keys, to the
derivation ``context``; each field is length-prefixed.  Derived keys use a
per-context subkey: HKDF-SHA256 over the version's DEK.

Key versions are retired only through the lifecycle: ``min_decryption_version``
revokes older versions (:meth:`KeyManager.revoke`), ``trim`` destroys them
through :meth:`KeyManager.destroy` (the one destroy guard, as ``keys destroy``),
and deleting a key revokes every version and leaves destruction to the
retention policy.  Nothing here erases key material by any other path.
"""

from __future__ import annotations

from .engine import DATAKEY_BITS, DEFAULT_MOUNT, SUPPORTED_TYPES, DataKey, SignOptions, Transit, keyring_facts
from .errors import ReinstateRefusedError, TransitInputError, TransitKeyNotFoundError
from .keys import KeyConfigChange, KeyInfo
from .requests import hash_input, random_bytes
from .settings import MaintenancePlan, TransitKeyConfig, check_timezone, maintenance_plan
from .wire import (
    BatchResult,
    Handled,
    b64decode,
    format_ciphertext,
    parse_ciphertext,
    transit_aad,
)

__all__ = [
    "DATAKEY_BITS",
    "DEFAULT_MOUNT",
    "SUPPORTED_TYPES",
    "BatchResult",
    "DataKey",
    "Handled",
    "KeyConfigChange",
    "KeyInfo",
    "MaintenancePlan",
    "ReinstateRefusedError",
    "SignOptions",
    "Transit",
    "TransitInputError",
    "TransitKeyConfig",
    "TransitKeyNotFoundError",
    "b64decode",
    "check_timezone",
    "format_ciphertext",
    "hash_input",
    "keyring_facts",
    "maintenance_plan",
    "parse_ciphertext",
    "random_bytes",
    "transit_aad",
]
