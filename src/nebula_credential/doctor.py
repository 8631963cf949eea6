"""``doctor``: find what is wrong with a store and say how to fix it.

Each check explains its finding with the command to run, instead of the
bare ``InvalidToken`` users of single-key set-ups are used to.  Checks that
need only the database run even when the root of trust is unreachable, so
a broken provider does not hide other problems.  Nothing here writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .audit import AuditLog
from .config import KeyManagementConfig
from .database.items import TABLE as DB_ITEMS_TABLE
from .durations import format_duration
from .exceptions import CorruptRecordError, NebulaCredentialError
from .fingerprint import PROVIDER_META
from .leases import TABLE as LEASE_TABLE
from .leases import lease_mac_fields
from .models import KeyStatus, utc_now
from .mounttables import MOUNT_TABLE, mount_mac_fields
from .opening import provider_config_for
from .providers import KeyProvider, open_provider
from .rowmac import ROW_MAC_KEY, RowMac
from .servertables import (
    AUTH_TABLE,
    POLICY_TABLE,
    ROLE_TABLE,
    TOKEN_TABLE,
    auth_mac_fields,
    policy_mac_fields,
    role_mac_fields,
    token_mac_fields,
)
from .store import SCHEMA_VERSION, Store, open_store
from .transit.settings import settings_of as transit_settings
from .vault import LEGACY_FALLBACKS_META, LEGACY_LAST_META

OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: str
    message: str
    fix: str = ""

    @property
    def problem(self) -> bool:
        return self.severity in (WARNING, ERROR)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": self.message, "fix": self.fix}


def _kr_flag(keyring: str) -> str:
    return "" if keyring == "default" else f"--keyring {keyring} "


def check_store(store: Store, config: KeyManagementConfig, now: datetime) -> list[Finding]:
    out: list[Finding] = []
    with store.read() as tx:
        try:
            schema = tx.schema_version()
        except Exception:
            schema = 0
        if schema == 0 or tx.get_meta(PROVIDER_META) is None:
            return [Finding("store", ERROR, f"{store!r} is not initialised", "nebula-credential init")]
        keyrings = tx.keyrings()
        try:
            # by envelope header (what decryption uses), not the key_version column
            per_ring = {kr: (tx.list_versions(kr), tx.versions_referenced(kr)) for kr in keyrings}
        except CorruptRecordError as exc:
            return [Finding("key-versions", ERROR, str(exc),
                            "restore the key_versions table from a backup of this store")]
        legacy = {
            kr: (tx.get_meta(f"{LEGACY_FALLBACKS_META}:{kr}"), tx.get_meta(f"{LEGACY_LAST_META}:{kr}"))
            for kr in keyrings
        }
        deleted_transit = {kr for kr in keyrings if (t := transit_settings(tx, kr)) is not None and t.deleted}
    if schema < SCHEMA_VERSION:
        out.append(
            Finding(
                "schema",
                WARNING,
                f"schema version {schema} is older than {SCHEMA_VERSION}",
                "run any nebula-credential command with write access to migrate",
            )
        )
    elif schema > SCHEMA_VERSION:
        out.append(
            Finding(
                "schema",
                ERROR,
                f"schema version {schema} is newer than this library ({SCHEMA_VERSION})",
                "upgrade nebula-credential",
            )
        )
    else:
        out.append(Finding("schema", OK, f"schema version {schema} is current"))

    for kr in keyrings:
        versions, counts = per_ring[kr]
        by_version = {kv.version: kv for kv in versions}
        flag = _kr_flag(kr)
        bad = False
        for version, n in sorted(counts.items()):
            kv = by_version.get(version)
            if kv is None:
                bad = True
                out.append(
                    Finding(
                        "key-versions",
                        ERROR,
                        f"keyring {kr}: {n} credential(s) reference key version {version}, which does not exist",
                        "restore the key_versions table from a backup of this store",
                    )
                )
            elif kv.status is KeyStatus.REVOKED:
                bad = True
                out.append(
                    Finding(
                        "key-versions",
                        ERROR,
                        f"keyring {kr}: {n} credential(s) are under revoked key version {version}",
                        f"nebula-credential {flag}keys reinstate {version} && nebula-credential {flag}reencrypt",
                    )
                )
            elif kv.status is KeyStatus.DESTROYED:
                bad = True
                out.append(
                    Finding(
                        "key-versions",
                        ERROR,
                        f"keyring {kr}: {n} credential(s) are under destroyed key version {version}; "
                        "they cannot be decrypted",
                        "restore them from a backup taken before the destruction, or re-enter them",
                    )
                )
        if not bad:
            out.append(Finding("key-versions", OK, f"keyring {kr}: every credential's key version can decrypt"))

        active = next((kv for kv in versions if kv.status is KeyStatus.ACTIVE), None)
        if active is None and kr in deleted_transit:
            out.append(Finding("active-key", OK, f"keyring {kr} is a deleted Transit key: every version "
                               "revoked, destroyed by the retention policy in time"))
            continue
        if active is None:
            out.append(
                Finding(
                    "active-key",
                    ERROR,
                    f"keyring {kr} has no active key version",
                    f"nebula-credential {flag}keys rotate",
                )
            )
            continue
        total = sum(counts.values())
        pending = total - counts.get(active.version, 0)
        if pending:
            since = now - active.created_at
            sev = WARNING if since.total_seconds() > 86400 else INFO
            out.append(
                Finding(
                    "reencryption",
                    sev,
                    f"keyring {kr}: {pending} of {total} credential(s) still under older versions, "
                    f"{format_duration(since)} after v{active.version} became active",
                    f"nebula-credential {flag}reencrypt",
                )
            )
        else:
            out.append(Finding("reencryption", OK, f"keyring {kr}: all {total} credential(s) under v{active.version}"))
        age = now - active.created_at
        if age > config.keys.max_key_age:
            out.append(
                Finding(
                    "key-age",
                    WARNING,
                    f"keyring {kr}: active version {active.version} is {format_duration(age)} old, "
                    f"past max_key_age {format_duration(config.keys.max_key_age)}",
                    f"nebula-credential {flag}keys rotate",
                )
            )
        else:
            out.append(Finding("key-age", OK, f"keyring {kr}: active version {active.version} is within max_key_age"))
        fallbacks, last = legacy[kr]
        if fallbacks:
            out.append(
                Finding(
                    "legacy",
                    INFO,
                    f"keyring {kr}: {fallbacks} read(s) fell back to the legacy key, last at {last}",
                    "run `nebula-credential adopt` for the remaining ids; drop the legacy key once "
                    "no fallback happens any more",
                )
            )
    return out


def check_backups(store: Store, now: datetime) -> list[Finding]:
    """Versions kept for registered backups, and registrations that have expired."""
    from .escrow import escrow_status
    from .holds import held_versions

    out: list[Finding] = []
    with store.read() as tx:
        if not tx.has_table("backups"):  # not migrated yet: the schema check says so
            return out
        keyrings = tx.keyrings()
        records = tx.list_backups()
        escrowed_at, unescrowed = escrow_status(tx)
    if escrowed_at is not None and unescrowed:
        out.append(Finding("escrow", WARNING, f"the escrow made {escrowed_at} lacks {', '.join(unescrowed)}: "
                           "losing the root key would lose the credentials under them",
                           "nebula-credential provider add-escrow --out NEW_FILE --escrow-key-file OFFLINE_KEY"))
    elif escrowed_at is not None:
        out.append(Finding("escrow", OK, f"the escrow made {escrowed_at} holds every live data key"))
    for kr in keyrings:
        for kv, hold in held_versions(store, kr, now):
            if kv.status is KeyStatus.REVOKED:
                out.append(Finding("backups", INFO, f"keyring {kr}: v{kv.version} kept: {hold}"))
    for b in records:
        if b.expires_at <= now:
            out.append(Finding("backups", INFO, f"backup {b.name} expired {b.expires_at:%Y-%m-%d}; it no "
                               "longer holds key versions", f"nebula-credential backup forget {b.name}"))
    if not records:
        out.append(Finding("backups", INFO, "no registered backups: retention cannot know which old keys "
                           "your copies need", "nebula-credential backup create PATH (SQLite) or backup "
                           "register --label NAME --taken-at TIME (PostgreSQL) for each copy you keep"))
    elif not any(f.check == "backups" for f in out):
        out.append(Finding("backups", OK, f"{len(records)} registered backup(s); none holds a revoked version"))
    return out


def check_records(store: Store) -> list[Finding]:
    """Decode every credential row and compare each key_version column with its envelope header.

    A column of the wrong type, unreadable metadata, or a key_version column
    that disagrees with the header (which decryption and the destroy guard go
    by) makes a corrupt record; each is named here.
    """
    undecodable: list[CorruptRecordError] = []
    corrupt: list[str] = []
    scanned = 0
    with store.read() as tx:
        keyrings = tx.keyrings()
    for kr in keyrings:
        for _ in store.iter_credentials(kr, on_corrupt=undecodable.append):
            scanned += 1
        with store.read() as tx:
            mismatched = tx.version_mismatches(kr)
            past = tx.version_header_mismatches(kr) if tx.has_table("credential_versions") else []
        corrupt += [str(e) for e in undecodable] + [
            f"credential {cid!r} in keyring {kr!r} is a corrupt record: its key_version column says {column} "
            f"but its envelope header names version {header}"
            for cid, column, header in mismatched
        ] + [
            f"version {number} of credential {cid!r} in keyring {kr!r} is a corrupt record: its key_version "
            f"column says {column} but its envelope header names version {header}"
            for cid, number, column, header in past
        ]
        undecodable.clear()
    if not corrupt:
        return [Finding("records", OK, f"all {scanned} credential record(s) decode; every key_version "
                        "column matches its envelope header")]
    shown = "; ".join(corrupt[:10])
    more = f" (and more: {len(corrupt) - 10} beyond these)" if len(corrupt) > 10 else ""
    return [Finding(
        "records", ERROR,
        f"{len(corrupt)} corrupt credential record(s): {shown}{more}",
        "something wrote these rows outside nebula-credential: check database write access, "
        "then restore them from a backup or `nebula-credential put` them again",
    )]


def check_provider(store: Store, config: KeyManagementConfig) -> tuple[list[Finding], KeyProvider | None]:
    """The provider the process's own config names, checked against the store's fingerprint.

    Nothing recorded in the store decides what is contacted or read here:
    a store of another provider type is reported without reaching anything.
    """
    out: list[Finding] = []
    try:
        pcfg = provider_config_for(store, config)
    except NebulaCredentialError as exc:
        out.append(Finding("provider", ERROR, str(exc), "configure the provider this store was created with"))
        return out, None
    if pcfg.type == "local":
        from .providers.keyfile import check_key_file
        from .providers.local import key_file_path

        try:
            key_path = key_file_path(pcfg.settings, store.directory())
        except NebulaCredentialError as exc:
            out.append(Finding("key-file", ERROR, str(exc), "set NEBULA_CREDENTIAL_MASTER_KEY_FILE"))
            return out, None
        if not os.path.lexists(key_path):
            out.append(
                Finding(
                    "key-file",
                    ERROR,
                    f"root key file {key_path} is missing",
                    "restore the key file from your secret backup, or set NEBULA_CREDENTIAL_MASTER_KEY_FILE",
                )
            )
            return out, None
        try:
            check_key_file(key_path)
        except NebulaCredentialError as exc:
            fix = (f"chmod 600 {key_path}" if "chmod 600" in str(exc)
                   else "keep the key a regular file of your own, in a folder only you can write")
            out.append(Finding("key-file", ERROR, str(exc), fix))
            return out, None
        out.append(Finding("key-file", OK, f"root key file {key_path} is a private regular file (owner only)"))
    try:
        provider = open_provider(pcfg, base_dir=store.directory())
        provider.check()
    except NebulaCredentialError as exc:
        out.append(
            Finding(
                "provider",
                ERROR,
                f"{pcfg.type} provider is not usable: {exc}",
                "check the [provider] settings, credentials and network reachability",
            )
        )
        return out, None
    out.append(Finding("provider", OK, f"{pcfg.type} provider reachable; wrap/unwrap round trip succeeded"))
    return out, provider


def check_root_key(store: Store, provider: KeyProvider) -> Finding | None:
    """One error when the configured root key cannot unwrap the store's data keys, else None.

    A reachable provider that holds the wrong root key passes its own round
    trip; only unwrapping the store's wrapped DEKs shows the mismatch, and
    then every other "can decrypt" finding would be false.
    """
    from .providers.base import WrapContext

    try:
        with store.read() as tx:
            newest = [max((kv for kv in tx.list_versions(kr) if kv.wrapped_key is not None),
                          key=lambda kv: kv.version, default=None) for kr in tx.keyrings()]
    except NebulaCredentialError:
        return None  # unreadable key rows are reported by the records check
    for kv in newest:
        if kv is None or kv.wrapped_key is None:
            continue
        try:
            provider.open_dek(kv.wrapped_key, WrapContext(kv.keyring, kv.version))
        except NebulaCredentialError as exc:
            return Finding(
                "root-key",
                ERROR,
                f"the configured root key cannot unwrap this store's data keys (keyring {kv.keyring} "
                f"v{kv.version}: {type(exc).__name__}); the store was created under another root key, "
                "so no credential can be decrypted",
                "point [provider] key_file / NEBULA_CREDENTIAL_MASTER_KEY_FILE (or the HSM/KMS settings) at "
                "the root key this store was created with; do not run init on it",
            )
    return None


def check_audit(store: Store, provider: KeyProvider) -> list[Finding]:
    try:
        result = AuditLog(store, provider).verify()
    except CorruptRecordError as exc:
        return [Finding("audit", ERROR, f"the audit chain holds a corrupt record: {exc}",
                        "investigate database write access; compare with a backup or the SIEM copy")]
    except NebulaCredentialError as exc:
        return [
            Finding(
                "audit",
                ERROR,
                f"the root key does not open this store's audit key: {exc}",
                "this store was created under another root key; use that key file/provider",
            )
        ]
    if result.ok:
        return [Finding("audit", OK, f"audit chain intact ({result.events} events)")]
    if result.unexplained:  # intact MACs, but wiped, cut back, or the key table changed behind it
        shown = "; ".join(result.unexplained[:3]) + (" ..." if len(result.unexplained) > 3 else "")
        return [
            Finding(
                "audit",
                ERROR,
                f"audit chain does not explain the key table ({len(result.unexplained)} thing(s)): {shown}",
                "events were deleted or the key table was edited; `nebula-credential audit verify "
                "--against` your exported copy, and compare with a backup",
            )
        ]
    return [
        Finding(
            "audit",
            ERROR,
            f"audit chain broken at event {result.first_bad_seq} of {result.events}: "
            "an event was edited, deleted, inserted or reordered",
            "investigate database write access; `nebula-credential audit list` around that sequence "
            "number, and compare with a backup or the SIEM copy",
        )
    ]


def check_backup_registry(store: Store, provider: KeyProvider) -> list[Finding]:
    """Every registered backup (its hold on key versions) is explained by the audit chain.

    Deleting a ``backups``/``backup_keys`` row lifts a hold with no alarm
    from retention; the chain's backup events say what the registry must be.
    """
    try:
        unexplained = AuditLog(store, provider).explain_backups()
    except NebulaCredentialError:
        return []  # the audit check has already named why the chain cannot be read
    if not unexplained:
        return [Finding("backup-registry", OK, "the audit chain explains every registered backup")]
    shown = "; ".join(unexplained[:3]) + (" ..." if len(unexplained) > 3 else "")
    return [
        Finding(
            "backup-registry",
            ERROR,
            f"the backup registry differs from the audit chain ({len(unexplained)} thing(s)): {shown}",
            "backup rows were deleted or edited behind the audit chain, lifting holds on key versions; "
            "re-register the copies that still exist (`backup register`) and investigate database write access",
        )
    ]


def check_rows(store: Store, provider: KeyProvider) -> list[Finding]:
    """Token, policy, token-role, mount and auth-item rows whose MAC does not verify (edited in the
    database, or written before schema v7 -- v10 for mounts and auth items): the server refuses
    them; doctor names them."""
    with store.read() as tx:
        if not tx.has_table(ROLE_TABLE):  # type: ignore[attr-defined]
            return []
        raw = tx.get_meta(ROW_MAC_KEY.meta_key)
        tokens = tx.token_list()
        policies = [(name, tx.policy_get_signed(name)) for name in tx.policy_list()]
        roles = [(name, tx.role_get(name)) for name in tx.role_list()]
        versioned = tx.schema_version() >= 10  # type: ignore[attr-defined]
        mounts = tx.mount_list() if versioned else []
        items = tx.auth_list_signed() if versioned else []
        engine = tx.has_table(DB_ITEMS_TABLE)  # type: ignore[attr-defined]
        db_items = tx.db_item_list_signed() if engine else []
        leases = tx.lease_list_all() if engine else []
    if not tokens and not policies and not roles and not mounts and not items and not db_items and not leases:
        return []
    try:
        mac = RowMac.from_key(provider.unwrap(bytes.fromhex(raw), ROW_MAC_KEY.context)) if raw else None
    except NebulaCredentialError as exc:
        return [Finding("rows", ERROR, f"the root key does not open the row MAC key: {exc}",
                        "use the root key this store was created with")]
    bad: list[str] = []
    for row in tokens:
        if mac is None or not mac.verify(TOKEN_TABLE, (row.accessor,), token_mac_fields(row), row.mac):
            bad.append(f"{TOKEN_TABLE} accessor {row.accessor}")
    for name, found in policies:
        if found is not None and (mac is None or not mac.verify(POLICY_TABLE, (name,),
                                                                 policy_mac_fields(name, found[0]), found[1])):
            bad.append(f"{POLICY_TABLE} {name!r}")
    for name, got in roles:
        if got is not None and (mac is None or not mac.verify(ROLE_TABLE, (name,), role_mac_fields(got[0]), got[1])):
            bad.append(f"{ROLE_TABLE} {name!r}")
    for m in mounts:
        if mac is None or not mac.verify(MOUNT_TABLE, (m.kind, m.path), mount_mac_fields(m), m.mac):
            bad.append(f"{MOUNT_TABLE} {m.kind} {m.path!r}")
    for mount, kind, name, body, expires_at, signature in items:
        if mac is None or not mac.verify(AUTH_TABLE, (mount, kind, name),
                                         auth_mac_fields(mount, kind, name, body, expires_at), signature):
            bad.append(f"{AUTH_TABLE} {mount} {kind} {name!r}")
    for db_mount, kind, name, body, signature in db_items:
        if mac is None or not mac.verify(DB_ITEMS_TABLE, (db_mount, kind, name), {"body": body}, signature):
            bad.append(f"{DB_ITEMS_TABLE} {db_mount} {kind} {name!r}")
    for lease in leases:
        if mac is None or not mac.verify(LEASE_TABLE, (lease.lease_id,), lease_mac_fields(lease), lease.mac):
            bad.append(f"{LEASE_TABLE} {lease.lease_id!r}")
    if not bad:
        engine_rows = f", {len(db_items)} database engine and {len(leases)} lease" if db_items or leases else ""
        return [Finding("rows", OK, f"{len(tokens)} token, {len(policies)} policy, {len(roles)} role, "
                                    f"{len(mounts)} mount{engine_rows} and {len(items)} auth item row(s) "
                                    "authenticated")]
    shown = "; ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else "")
    return [Finding("rows", ERROR, f"{len(bad)} row(s) that grant access fail their MAC and are refused: {shown}",
                    "a database writer edited them, or they predate schema v7: revoke and re-create those "
                    "tokens (`token create`), re-write those policies (`policy write`), token roles, auth roles and "
                    "users; for mounts see the upgrade notes in docs/server.md")]


def run(
    url: str, config: KeyManagementConfig | None = None, *, clock: Callable[[], datetime] = utc_now
) -> list[Finding]:
    """Every check; findings of severity ok/info are healthy."""
    config = config or KeyManagementConfig()
    try:
        store = open_store(url, migrate=False)
    except NebulaCredentialError as exc:
        return [Finding("store", ERROR, f"cannot open the store: {exc}", "check --db / NEBULA_CREDENTIAL_DB")]
    try:
        findings = check_store(store, config, clock())
        if any(f.check == "store" for f in findings):
            return findings
        findings += check_records(store)
        findings += check_backups(store, clock())
        provider_findings, provider = check_provider(store, config)
        findings += provider_findings
        if provider is not None:
            wrong_key = check_root_key(store, provider)
            if wrong_key is not None:
                # one error, first; the "can decrypt"/"provider ok" findings would contradict it
                contradicted = ("key-versions", "provider")
                findings = [wrong_key] + [f for f in findings if f.problem or f.check not in contradicted]
            else:
                findings += check_audit(store, provider)
                findings += check_backup_registry(store, provider)
                findings += check_rows(store, provider)
            provider.close()
        return findings
    finally:
        store.close()
