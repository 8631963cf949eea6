"""The store's record of its root of trust: a fingerprint, never settings.

At init the store records the provider *type* and the *root key id* in
its ``meta`` table.  That record only ever confirms or refuses what the
process's own configuration says; it never supplies where a provider is
reached, what code is loaded, which secret is read or whether TLS is
verified (see DESIGN.md, Trust boundary).  Stores created before this rule
also recorded a ``settings`` object: it is ignored, never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .exceptions import CorruptRecordError
from .providers.base import KeyProvider
from .store import StoreTx

PROVIDER_META = "provider"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Which root of trust a store was made under: public facts only."""

    type: str
    root_key_id: str


def read_fingerprint(tx: StoreTx) -> Fingerprint | None:
    """The recorded type and root key id, or None for a store not initialised yet."""
    raw = tx.get_meta(PROVIDER_META)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise CorruptRecordError(f"meta record {PROVIDER_META!r} is not a provider fingerprint")
    root = data.get("root_key_id")
    return Fingerprint(type=data["type"], root_key_id=root if isinstance(root, str) else "")


def write_fingerprint(tx: StoreTx, provider: KeyProvider) -> None:
    """Record (or, after a root-key rotation, update) the provider type and current root key id."""
    tx.set_meta(
        PROVIDER_META,
        json.dumps({"type": provider.name, "root_key_id": provider.root_key_id()}, sort_keys=True),
    )
