"""The records a store hands out and takes: plain values, no behaviour, no backend.

Kept apart from the transaction interfaces (:mod:`.tx`) so code that only
passes rows around (the audit layer, the HTTP server's tokens) depends on
these shapes and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from ..envelope import header_version
from ..exceptions import CorruptRecordError
from ..models import EncryptedCredential

T = TypeVar("T")

#: The largest key version a ``key_versions`` row holds (a 32-bit signed INTEGER column).
MAX_STORED_KEY_VERSION = 2**31 - 1


@dataclass(frozen=True, slots=True)
class TokenRow:
    """One HTTP-server token: only its keyed hash is stored, never the token."""

    accessor: str
    token_hash: str
    parent: str | None
    policies: tuple[str, ...]
    display_name: str
    meta: dict[str, str]
    created_at: float
    expires_at: float | None  # None: never (root tokens created by an operator)
    max_expires_at: float | None
    ttl: float
    renewable: bool
    #: Uses left (0: unlimited); the use that takes it to 0 is the last.
    num_uses: int = 0
    #: Periodic token: each renewal resets the TTL to this many seconds, with no max TTL.
    period: float | None = None
    explicit_max_ttl: float | None = None
    token_type: str = "service"  # noqa: S105 - a token kind, not a secret
    role: str = ""
    path: str = "auth/token/create"
    #: The networks the token may be used from (CIDR blocks; empty: anywhere), Vault's ``bound_cidrs``.
    bound_cidrs: tuple[str, ...] = ()
    #: HMAC of the row under the root-wrapped row key (see ``rowmac``); "" before it is computed.
    mac: str = ""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit event (the MAC chain is computed by the audit layer)."""

    seq: int
    ts: float
    actor: str
    action: str
    keyring: str | None
    key_version: int | None
    credential_id: str | None
    outcome: str
    details: str  # canonical JSON
    mac: bytes


@dataclass(frozen=True, slots=True)
class BackupRecord:
    """One registered backup: the copy's manifest and how long retention must honour it."""

    name: str
    kind: str  # "sqlite-copy" or "registered" (pg_dump / PITR taken outside)
    taken_at: datetime
    expires_at: datetime
    registered_at: datetime
    location: str
    manifest: str  # canonical JSON


@dataclass(frozen=True, slots=True)
class MountRow:
    """One runtime mount of the HTTP server: a secrets engine (``kind`` "secret") at ``path``,
    or an auth method (``kind`` "auth") at ``auth/<path>``.

    ``options`` and ``config`` are Vault's JSON objects as given at enable
    and tune time; ``keyring`` is the keyring the engine keeps its data in
    (empty for engines that name their own, as Transit's per-key keyrings).
    """

    path: str
    kind: str
    type: str
    description: str
    accessor: str
    uuid: str
    options: dict[str, Any] | None
    config: dict[str, Any]
    keyring: str
    created_at: float
    #: HMAC of the row under the root-wrapped row key (see ``rowmac``); "" before it is computed.
    mac: str = ""


class Page(list[T], Generic[T]):
    """One page of decoded rows, with the corrupt ones set aside (see :class:`CredentialPage`)."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt: list[CorruptRecordError] = []
        self.fetched = 0
        self.last_id: Any = None


class CredentialPage(Page[EncryptedCredential]):
    """One page of decoded credentials.

    Read with ``skip_corrupt=True``, a row that is not what the schema
    promises is left out and its :class:`CorruptRecordError` kept in
    ``corrupt``, so a listing or a re-encryption pass reports it by id and
    carries on.  ``fetched`` counts the rows read (corrupt ones included)
    and ``last_id`` is the keyset cursor for the next page.
    """


class ReencryptRow(NamedTuple):
    """What re-encryption keeps of a credential: the AAD's fields, the envelope, the CAS revision.

    A named tuple, not an :class:`EncryptedCredential`: a pass builds one per
    row it moves, and the full record (frozen dataclass, two ``datetime``
    objects, parsed metadata) cost about as much per row as the database
    work itself (issue 27, target 5).  The row is still judged in full
    (:func:`~nebula_credential.store._rows.decode_reencrypt_page`).  ``column_version`` is the
    ``key_version`` column the scan selected on; :attr:`key_version`, the
    version the envelope's header names (what decryption goes by), is read
    only when asked: a pass asks for it of a row that fails.
    """

    keyring: str
    id: str
    scope: str
    column_version: int
    envelope: bytes
    revision: int

    @property
    def key_version(self) -> int:
        """The version the header names, as :class:`EncryptedCredential` has it; else the column's."""
        named = header_version(self.envelope)
        return self.column_version if named is None or named > MAX_STORED_KEY_VERSION else named


class ReencryptPage(Page[ReencryptRow]):
    """One page of :class:`ReencryptRow`; ``corrupt``, ``fetched``, ``last_id`` as in :class:`CredentialPage`."""


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One stored version of a credential (table ``credential_versions``).

    ``envelope`` is None once the version is destroyed: the ciphertext is
    gone, only the bookkeeping Vault's metadata shows is kept.
    ``deletion_time`` is set by a soft delete (or, ahead of time, by
    ``delete_version_after``); the version reads as deleted once it is past.
    """

    keyring: str
    id: str
    version: int
    scope: str
    key_version: int
    envelope: bytes | None
    created_at: datetime
    deletion_time: datetime | None
    destroyed: bool


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One secret lease (a dynamic database user): what to revoke, when, and the revocation's progress.

    ``body`` is the engine's JSON (role, user name, statements); it and the times are bound by
    ``mac``.  ``state`` is ``active``, ``revoking`` (claimed or failed, retried) or ``revoked``.
    """

    lease_id: str
    mount: str
    engine: str
    body: str
    token_accessor: str | None
    issue_time: float
    expire_time: float
    max_expire_time: float
    renewable: bool
    state: str = "active"
    attempts: int = 0
    next_attempt: float | None = None
    last_error: str = ""
    revoked_at: float | None = None
    claimed_by: str | None = None
    claim_until: float | None = None
    mac: str = ""
