"""Root-of-trust escrow: the store's data keys wrapped under a second, offline root.

Every credential is encrypted under a DEK, and every DEK is stored wrapped
by the primary root key (key file, HSM, KMS).  Lose that root and the
store is ciphertext forever.  An escrow file holds the same DEKs (and the
audit key) wrapped under a *second* root -- a local key file kept offline,
or a second KMS key -- so :func:`recover_from_escrow` can rewrap them under
a new primary without the lost one.

The escrow file is written 0600 and holds only wrapped keys: useless
without the escrow root, which is why that root lives elsewhere.  It is a
snapshot: versions created after it are not in it, so re-run
``provider add-escrow`` after every rotation (``doctor`` says when it is
stale).  Every step is audited.

Recovery checks before it writes, because a wrong escrow file overwrites
the only working wrapped keys: the file carries a MAC (under a key derived
from the escrowed audit key) binding the store id, the escrow root and
every wrapped key, so an edited ``store_id`` fails; the escrowed audit key
must open the store's own audit head; and every escrowed DEK must decrypt
a sample of the rows its header names.  Only then is anything rewrapped,
in one transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from . import envelope as env
from .audit import AUDIT_KEY_CONTEXT, AUDIT_KEY_META, AuditLog, head_opens_under
from .backups import write_private
from .config import KeyManagementConfig
from .exceptions import BackupError, NebulaCredentialError
from .fingerprint import write_fingerprint
from .holds import STORE_ID_META, ensure_store_id, referenced_versions
from .models import KeyStatus
from .providers import KeyProvider, open_provider
from .providers.base import WrapContext
from .store import Store, StoreTx
from .vault import Vault

ESCROW_FORMAT = 1
ESCROW_META = "escrow"
ESCROW_PURPOSE = "escrow"
#: Rows per key version that recovery test-decrypts with the escrowed DEK before writing anything.
SAMPLE_ROWS = 16
_MAC_DOMAIN = b"nebula-credential escrow file mac v1"
_AUDIT_ESCROW_CONTEXT = WrapContext(AUDIT_KEY_CONTEXT.keyring, AUDIT_KEY_CONTEXT.version, "escrow-audit")


def _mac_key(audit_key: bytes | bytearray) -> bytes:
    """The escrow file's MAC key: derived from the audit key, which only the escrow root (or primary) opens."""
    return hmac.new(bytes(audit_key), _MAC_DOMAIN, hashlib.sha256).digest()


def _mac(mac_key: bytes, doc: dict[str, Any]) -> str:
    """MAC over everything recovery trusts: store id, escrow root, audit key, every (keyring, version, key)."""
    try:
        body = {
            "store_id": doc.get("store_id"),
            "escrow_root_key_id": doc.get("escrow_root_key_id"),
            "audit_key": doc.get("audit_key"),
            "keys": sorted([str(e["keyring"]), int(e["version"]), str(e["wrapped"])] for e in doc["keys"]),
        }
    except (KeyError, TypeError, ValueError):
        raise BackupError("the escrow file is malformed") from None
    msg = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(mac_key, msg, hashlib.sha256).hexdigest()


def _ctx(keyring: str, version: int) -> WrapContext:
    """Escrow copies are bound to their own purpose, so one never passes for a store-wrapped DEK."""
    return WrapContext(keyring, version, ESCROW_PURPOSE)


@dataclass(slots=True)
class EscrowResult:
    path: str
    escrow_root_key_id: str
    versions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "escrow_root_key_id": self.escrow_root_key_id,
                "versions": self.versions, "count": len(self.versions), "audit_key": True}


@dataclass(slots=True)
class RecoverResult:
    provider: str
    root_key_id: str
    rewrapped: list[str] = field(default_factory=list)
    #: versions with material in the store but not in the escrow file -> credentials under them
    lost: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "root_key_id": self.root_key_id, "rewrapped": self.rewrapped,
                "lost": self.lost, "lost_credentials": sum(self.lost.values())}


def add_escrow(store: Store, primary: KeyProvider, audit: AuditLog, escrow: KeyProvider,
               out: str | os.PathLike[str], now: datetime) -> EscrowResult:
    """Write every live DEK and the audit key, wrapped under ``escrow``, to a new 0600 file."""
    path = Path(out)
    if path.exists():
        raise BackupError(f"{path} already exists; refusing to overwrite an escrow file")
    audit.load_key()  # the primary must open this store before anything is exported
    entries = []
    with store.read() as tx:
        for keyring in tx.keyrings():
            for kv in tx.list_versions(keyring):
                if kv.wrapped_key is None or kv.status is KeyStatus.DESTROYED:
                    continue
                with primary.unwrap(kv.wrapped_key, WrapContext(keyring, kv.version)) as dek:
                    wrapped = escrow.wrap(dek, _ctx(keyring, kv.version))
                entries.append({"keyring": keyring, "version": kv.version, "wrapped": wrapped.hex()})
        raw_audit = tx.get_meta(AUDIT_KEY_META)
    if raw_audit is None:
        raise BackupError("the store has no audit key; initialise it first")
    with primary.unwrap(bytes.fromhex(raw_audit), AUDIT_KEY_CONTEXT) as key:
        audit_wrapped = escrow.wrap(key, _AUDIT_ESCROW_CONTEXT)
        mac_key = _mac_key(key.buffer)
    result = EscrowResult(str(path), escrow.root_key_id(),
                          [f"{e['keyring']}/v{e['version']}" for e in entries])
    with store.transaction() as tx:
        doc = {
            "format": ESCROW_FORMAT,
            "store_id": ensure_store_id(tx),
            "created_at": now.isoformat(),
            "escrow_provider": escrow.name,
            "escrow_root_key_id": escrow.root_key_id(),
            "audit_key": audit_wrapped.hex(),
            "keys": entries,
        }
        doc["mac"] = _mac(mac_key, doc)
        write_private(path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")
        tx.set_meta(ESCROW_META, json.dumps({"created_at": now.isoformat(), "versions": result.versions,
                                             "escrow_root_key_id": result.escrow_root_key_id}, sort_keys=True))
        audit.record(tx, "provider.escrow", escrow_provider=escrow.name, escrow_root_key_id=escrow.root_key_id(),
                     versions=result.versions, path=str(path.resolve()))
    return result


def escrow_vault(vault: Vault, escrow: KeyProvider, out: str | os.PathLike[str]) -> EscrowResult:
    """:func:`add_escrow` for an open vault (what ``provider add-escrow`` runs)."""
    return add_escrow(vault.store, vault.provider, vault.audit, escrow, out, vault.clock())


def read_escrow(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read escrow file {p}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != ESCROW_FORMAT or not isinstance(doc.get("keys"), list):
        raise BackupError(f"{p} is not a nebula-credential escrow file")
    return doc


def new_primary(store: Store, config: KeyManagementConfig) -> KeyProvider:
    """The root to recover onto: the process's own ``[provider]`` (a missing local key file is created).

    As everywhere, the store never says which root that is; its fingerprint
    is rewritten to the new root once every key is rewrapped under it.
    """
    pcfg, base = config.provider, store.directory()
    create = False
    if pcfg.type == "local":
        from .providers.local import key_file_path

        create = not key_file_path(pcfg.settings, base).exists()
    return open_provider(pcfg, create=create, base_dir=base)


def recover_from_escrow(store: Store, escrow: KeyProvider, escrow_file: str | os.PathLike[str],
                        config: KeyManagementConfig, *, accept_loss: bool = False) -> RecoverResult:
    """Rewrap every escrowed DEK and the audit key under a new primary, in one transaction.

    The lost primary is never called.  Versions that have material in the
    store but are missing from the escrow file (created after it) cannot be
    recovered: refused, naming them, unless ``accept_loss``.
    """
    doc = read_escrow(escrow_file)
    with store.read() as tx:
        sid = tx.get_meta(STORE_ID_META)
    if doc.get("store_id") != sid:
        raise BackupError(f"the escrow file is of store {doc.get('store_id')}, this store is {sid}")
    with store.read() as tx:  # refuse before a new root key is made for nothing
        _missing_from_escrow(tx, doc, accept_loss)
    check_escrow(store, doc, escrow)
    primary = new_primary(store, config)
    try:
        with store.transaction() as tx:
            result = _rewrap_all(tx, doc, escrow, primary, accept_loss)
            write_fingerprint(tx, primary)
            audit = AuditLog(store, primary, actor=config.audit.actor or None)
            audit.record(tx, "provider.recover", provider=primary.name, root_key_id=primary.root_key_id(),
                         escrow_root_key_id=str(doc.get("escrow_root_key_id")), rewrapped=result.rewrapped,
                         lost=result.lost)
    finally:
        primary.close()
    return result


def check_escrow(store: Store, doc: dict[str, Any], escrow: KeyProvider) -> None:
    """Prove the escrow file is this store's before anything is rewritten; :class:`BackupError` if not.

    The escrow root opens the escrowed audit key; its MAC (files written
    before the MAC existed have none) must check out; the audit key must
    open this store's audit head; every escrowed DEK of a version that
    still has material must decrypt up to :data:`SAMPLE_ROWS` of the rows
    its envelope header names.  Nothing is written here.
    """
    escrowed = _escrowed(doc)
    nothing = "; nothing was changed"
    try:
        audit_key = escrow.unwrap(bytes.fromhex(str(doc["audit_key"])), _AUDIT_ESCROW_CONTEXT)
    except (KeyError, ValueError):
        raise BackupError("the escrow file is malformed" + nothing) from None
    except NebulaCredentialError as exc:
        raise BackupError(f"the escrow root does not open this escrow file ({exc})" + nothing) from exc
    with audit_key:
        mac = doc.get("mac")
        if mac is not None and not (isinstance(mac, str)
                                    and hmac.compare_digest(_mac(_mac_key(audit_key.buffer), doc), mac)):
            raise BackupError("the escrow file fails its MAC: its store id, root or keys were edited" + nothing)
        with store.read() as tx:
            if not head_opens_under(tx, audit_key.buffer):
                raise BackupError("the escrow file's audit key does not open this store's audit head: it is "
                                  "another store's escrow file (or the head was tampered with)" + nothing)
            bad = []
            for (keyring, version), wrapped in sorted(escrowed.items()):
                current = tx.get_version(keyring, version)
                if current is None or current.wrapped_key is None:
                    continue
                if not _sample_decrypts(tx, escrow, keyring, version, wrapped):
                    bad.append(f"{keyring}/v{version}")
    if bad:
        raise BackupError(f"the escrowed key(s) {', '.join(bad)} do not decrypt this store's rows: the escrow "
                          "file is of another store" + nothing)


def _sample_decrypts(tx: StoreTx, escrow: KeyProvider, keyring: str, version: int, wrapped: bytes) -> bool:
    """Whether the escrowed DEK opens up to SAMPLE_ROWS rows whose header names ``version``."""
    try:
        aead = escrow.open_dek(wrapped, _ctx(keyring, version))
    except NebulaCredentialError:
        return False
    page = tx.list_credentials(keyring, key_version=version, limit=SAMPLE_ROWS, skip_corrupt=True)
    for row in page:
        try:
            parsed = env.parse(row.envelope)
        except NebulaCredentialError:
            continue  # a corrupt row says nothing about the key
        if parsed.key_version != version:
            continue
        aad = parsed.header + env.credential_context(row.keyring, row.id, row.scope)
        try:
            aead.decrypt(parsed.nonce, parsed.ciphertext, aad)
        except InvalidTag:
            return False
    return True


def _rewrap_all(tx: StoreTx, doc: dict[str, Any], escrow: KeyProvider, primary: KeyProvider,
                accept_loss: bool) -> RecoverResult:
    result = RecoverResult(primary.name, primary.root_key_id())
    escrowed = _escrowed(doc)
    result.lost = _missing_from_escrow(tx, doc, accept_loss)
    try:
        with escrow.unwrap(bytes.fromhex(str(doc["audit_key"])), _AUDIT_ESCROW_CONTEXT) as key:
            tx.set_meta(AUDIT_KEY_META, primary.wrap(key, AUDIT_KEY_CONTEXT).hex())
        for (keyring, version), wrapped in sorted(escrowed.items()):
            current = tx.get_version(keyring, version)
            if current is None or current.wrapped_key is None:
                continue  # destroyed since the escrow: stays destroyed
            with escrow.unwrap(wrapped, _ctx(keyring, version)) as dek:
                tx.set_wrapped_key(keyring, version, primary.wrap(dek, WrapContext(keyring, version)),
                                   primary.root_key_id())
            result.rewrapped.append(f"{keyring}/v{version}")
    except NebulaCredentialError as exc:
        raise BackupError(f"the escrow root does not open this escrow file ({exc}); nothing was changed") from exc
    return result


def _escrowed(doc: dict[str, Any]) -> dict[tuple[str, int], bytes]:
    try:
        return {(str(e["keyring"]), int(e["version"])): bytes.fromhex(str(e["wrapped"])) for e in doc["keys"]}
    except (KeyError, TypeError, ValueError):
        raise BackupError("the escrow file is malformed") from None


def _missing_from_escrow(tx: StoreTx, doc: dict[str, Any], accept_loss: bool) -> dict[str, int]:
    """Live versions the escrow lacks, with their credentials; refused unless ``accept_loss``."""
    escrowed = _escrowed(doc)
    counts = referenced_versions(tx)
    lost = {
        f"{keyring}/v{kv.version}": counts.get(keyring, {}).get(kv.version, 0)
        for keyring in tx.keyrings() for kv in tx.list_versions(keyring)
        if kv.wrapped_key is not None and kv.status is not KeyStatus.DESTROYED
        and (keyring, kv.version) not in escrowed
    }
    if lost and not accept_loss:
        raise BackupError(
            "the escrow file lacks key version(s) " + ", ".join(f"{v} ({n} credential(s))" for v, n in lost.items())
            + "; recover with an escrow file made after them, or pass --accept-loss; nothing was changed"
        )
    return lost


def escrow_status(tx: StoreTx) -> tuple[str | None, list[str]]:
    """(when the last escrow was made, live versions it lacks), for ``doctor``."""
    raw = tx.get_meta(ESCROW_META)
    if raw is None:
        return None, []
    info = json.loads(raw)
    have = set(info.get("versions", []))
    missing = [f"{kr}/v{kv.version}" for kr in tx.keyrings() for kv in tx.list_versions(kr)
               if kv.wrapped_key is not None and f"{kr}/v{kv.version}" not in have]
    return str(info.get("created_at")), missing
