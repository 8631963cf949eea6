"""The schema, version by version, and the queries that read and apply it.

Each ``schema_vN`` is one migration, parameterised by the dialect's type
names; :func:`all_migrations` lists them in order for a dialect.  The
statements are the schema's bytes on disk: an existing store was made by
exactly these, so they are never edited, only followed by a new version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..exceptions import StoreError
from ._sql_base import SqlBase
from .tx import MetaTx

SCHEMA_VERSION = 12


def all_migrations(blob: str, real: str) -> list[list[str]]:
    """Every migration in order, for a dialect's binary and floating-point type names."""
    return [schema_v1(blob, real), schema_v2(), schema_v3_backups(real), schema_v4_server(real),
            schema_v5_key_access(), schema_v6_versions(blob, real), schema_v7_server_rows(real),
            schema_v8_mounts(real), schema_v9_auth(real), schema_v10_row_macs(),
            schema_v11_token_cidrs(), schema_v12_database(real)]


class MetaSql(SqlBase, MetaTx):
    """Store-wide settings, the schema version and applying migrations."""

    def get_meta(self, name: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._exec(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def schema_version(self) -> int:
        row = self._exec("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def has_table(self, name: str) -> bool:
        return self._table_exists(name)

    def apply_migrations(self, migrations: Sequence[Sequence[str]], real: str) -> int:
        """Bring the schema up to date inside this transaction; returns the version in force.

        The caller holds whatever lock serialises migrators (SQLite: the
        write lock; PostgreSQL: an advisory lock), so two processes opening a
        new database at once apply each migration exactly once.  An
        up-to-date schema is only read, never touched with DDL, so runtime
        roles without CREATE rights can open the store.
        """
        if self._table_exists("schema_version"):
            current = self.schema_version()
        else:
            self._exec(
                "CREATE TABLE schema_version "
                f"(version INTEGER PRIMARY KEY, applied_at {real} NOT NULL)"
            )
            current = 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this library "
                f"understands ({SCHEMA_VERSION}); upgrade nebula-credential"
            )
        for number, statements in enumerate(migrations, 1):
            if number <= current:
                continue
            for stmt in statements:
                self._exec(stmt)
            self._exec(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (number, time.time()),
            )
        return max(current, len(migrations))


def schema_v1(blob: str, real: str) -> list[str]:
    """Version 1 of the schema, parameterised by the dialect's type names."""
    return [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS key_versions (
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            wrapped_key {blob},
            provider TEXT NOT NULL,
            root_key_id TEXT NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            expires_at {real},
            status_changed_at {real},
            revoked_at {real},
            destroyed_at {real},
            encryptions BIGINT NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (keyring, version),
            CHECK (status IN ('active', 'valid', 'grace', 'revoked', 'destroyed'))
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS key_versions_one_active "
        "ON key_versions (keyring) WHERE status = 'active'",
        f"""CREATE TABLE IF NOT EXISTS credentials (
            keyring TEXT NOT NULL,
            id TEXT NOT NULL,
            scope TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            envelope {blob} NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{{}}',
            revision BIGINT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            PRIMARY KEY (keyring, id)
        )""",
        "CREATE INDEX IF NOT EXISTS credentials_by_version "
        "ON credentials (keyring, key_version, scope, id)",
        f"CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
        f"expires_at {real} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS audit_events (
            seq BIGINT PRIMARY KEY,
            ts {real} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            keyring TEXT,
            key_version INTEGER,
            credential_id TEXT,
            outcome TEXT NOT NULL,
            details TEXT NOT NULL,
            mac {blob} NOT NULL
        )""",
    ]


def schema_v5_key_access() -> list[str]:
    """Version 5: key access counters per keyring, version and minute, flushed in blocks."""
    return ["""CREATE TABLE IF NOT EXISTS key_access (
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            bucket BIGINT NOT NULL,
            accesses BIGINT NOT NULL DEFAULT 0,
            failures BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (keyring, version, bucket)
        )"""]


def schema_v2() -> list[str]:
    """Version 2: the MAC'd head of the audit chain, in a table of its own so that
    application roles can advance it without write access to ``meta``."""
    return ["CREATE TABLE IF NOT EXISTS audit_head (name TEXT PRIMARY KEY, value TEXT NOT NULL)"]


def schema_v3_backups(real: str) -> list[str]:
    """Backups registered in the store, and the key versions each one needs.

    Retention reads ``backup_keys`` inside the destroy transaction, so a
    version an unexpired backup needs is never destroyed.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS backups (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            taken_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            registered_at {real} NOT NULL,
            location TEXT NOT NULL DEFAULT '',
            manifest TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS backup_keys (
            backup TEXT NOT NULL,
            keyring TEXT NOT NULL,
            version INTEGER NOT NULL,
            credentials BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (backup, keyring, version)
        )""",
        "CREATE INDEX IF NOT EXISTS backup_keys_by_version ON backup_keys (keyring, version)",
    ]


def schema_v4_server(real: str) -> list[str]:
    """Version 4: the HTTP server's tokens (keyed hashes only) and ACL policies."""
    return [
        f"""CREATE TABLE IF NOT EXISTS server_tokens (
            accessor TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            parent TEXT,
            policies TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '{{}}',
            created_at {real} NOT NULL,
            expires_at {real},
            max_expires_at {real},
            ttl {real} NOT NULL,
            renewable INTEGER NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS server_tokens_by_parent ON server_tokens (parent)",
        f"CREATE TABLE IF NOT EXISTS server_policies (name TEXT PRIMARY KEY, body TEXT NOT NULL, "
        f"updated_at {real} NOT NULL)",
    ]



def schema_v6_versions(blob: str, real: str) -> list[str]:
    """Version 6: every version of every credential (KV v2 version history).

    Each existing credential becomes its current version, numbered by its
    revision (the number the HTTP server answered as its KV version until
    now), so a client's next check-and-set still matches.  A current
    version's row has no envelope of its own (the ``credentials`` row holds
    it).  A metadata-only KV placeholder (a ``null`` value written before
    any data) has no version.

    No secondary index: every query names (keyring, id) or scans a
    keyring (re-encryption, reference counts), which the primary key
    serves, and each index page would be one more page every write commits.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS credential_versions (
            keyring TEXT NOT NULL,
            id TEXT NOT NULL,
            version BIGINT NOT NULL,
            scope TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            envelope {blob},
            created_at {real} NOT NULL,
            deletion_time {real},
            destroyed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (keyring, id, version)
        ){' WITHOUT ROWID' if blob == 'BLOB' else ''}""",
        "INSERT INTO credential_versions "
        "(keyring, id, version, scope, key_version, envelope, created_at, deletion_time, destroyed) "
        "SELECT keyring, id, revision, scope, key_version, NULL, updated_at, NULL, 0 FROM credentials "
        "WHERE metadata NOT LIKE '%\"placeholder\":true%'",
    ]


def schema_v7_server_rows(real: str) -> list[str]:
    """Version 7: Vault's token fields, token roles, and a MAC on every row that grants access.

    ``mac`` is HMAC-SHA256 under a root-wrapped key (:mod:`~nebula_credential.rowmac`) over the
    row's table, primary key and every field that decides access.  Rows written before this
    version have none and are refused until re-created (docs/security-model.md).
    """
    return [
        "ALTER TABLE server_tokens ADD COLUMN num_uses BIGINT NOT NULL DEFAULT 0",
        f"ALTER TABLE server_tokens ADD COLUMN period {real}",
        f"ALTER TABLE server_tokens ADD COLUMN explicit_max_ttl {real}",
        "ALTER TABLE server_tokens ADD COLUMN token_type TEXT NOT NULL DEFAULT 'service'",
        "ALTER TABLE server_tokens ADD COLUMN role TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE server_tokens ADD COLUMN path TEXT NOT NULL DEFAULT 'auth/token/create'",
        "ALTER TABLE server_tokens ADD COLUMN mac TEXT",
        "ALTER TABLE server_policies ADD COLUMN mac TEXT",
        f"""CREATE TABLE IF NOT EXISTS server_token_roles (
            name TEXT PRIMARY KEY,
            body TEXT NOT NULL,
            updated_at {real} NOT NULL,
            mac TEXT NOT NULL
        )""",
    ]


def schema_v8_mounts(real: str) -> list[str]:
    """Version 8: the HTTP server's mount table (secrets engines and auth methods enabled at runtime).

    ``kind`` is ``secret`` or ``auth``; a path is unique within its kind
    (``sys/mounts/kv1`` and ``sys/auth/kv1`` are different mounts, as in Vault).
    """
    return [f"""CREATE TABLE IF NOT EXISTS server_mounts (
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            type TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            accessor TEXT NOT NULL UNIQUE,
            uuid TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{{}}',
            config TEXT NOT NULL DEFAULT '{{}}',
            keyring TEXT NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            PRIMARY KEY (kind, path),
            CHECK (kind IN ('secret', 'auth'))
        )"""]
def schema_v9_auth(real: str) -> list[str]:
    """Version 9: the auth methods' items (AppRole roles and secret ids, userpass users, JWT
    config and roles, cubbyholes and wrapped responses), one generic table keyed by mount and kind.

    Secrets are kept only as keyed hashes (secret ids) or argon2id hashes (passwords);
    ``uses_left`` (NULL: unlimited) is decremented by one conditional UPDATE so concurrent
    logins never spend a use twice.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS auth_items (
            mount TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real},
            uses_left INTEGER,
            PRIMARY KEY (mount, kind, name)
        )""",
        "CREATE INDEX IF NOT EXISTS auth_items_by_expiry ON auth_items (expires_at)",
    ]


def schema_v10_row_macs() -> list[str]:
    """Version 10: a MAC on every mount and every auth item (roles, users, secret ids, settings).

    As version 7 did for tokens and policies (:mod:`~nebula_credential.rowmac`): a database
    writer can no longer add a mount or edit a role's policies.  Rows written before this
    version have no MAC and are refused until re-written (docs/server.md, upgrade notes).
    """
    return [
        "ALTER TABLE server_mounts ADD COLUMN mac TEXT",
        "ALTER TABLE auth_items ADD COLUMN mac TEXT",
    ]


def schema_v11_token_cidrs() -> list[str]:
    """Version 11: the networks a token may be used from (Vault's ``bound_cidrs``), a JSON list.

    Set from an auth method's ``token_bound_cidrs`` (AppRole, userpass, JWT, token roles) and
    bound by the token row's MAC: a database writer cannot widen or clear them.  Existing rows
    get ``[]`` (no binding), which their MAC, computed without the field, still covers.
    """
    return ["ALTER TABLE server_tokens ADD COLUMN bound_cidrs TEXT NOT NULL DEFAULT '[]'"]


def schema_v12_database(real: str) -> list[str]:
    """Version 12: the database secrets engine's config and role items (MAC'd, with a revision for
    check-and-set) and the secret leases of its dynamic users.

    Passwords are never here: they are envelopes in the credential tables under the mount's
    keyring.  A lease row is claimed for revocation by a conditional UPDATE of ``claimed_by`` and
    ``claim_until``, so expired leases are revoked once across every process on the store.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS db_items (
            mount TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            revision INTEGER NOT NULL,
            updated_at {real} NOT NULL,
            mac TEXT NOT NULL,
            PRIMARY KEY (mount, kind, name)
        )""",
        f"""CREATE TABLE IF NOT EXISTS secret_leases (
            lease_id TEXT NOT NULL PRIMARY KEY,
            mount TEXT NOT NULL,
            engine TEXT NOT NULL,
            body TEXT NOT NULL,
            token_accessor TEXT,
            issue_time {real} NOT NULL,
            expire_time {real} NOT NULL,
            max_expire_time {real} NOT NULL,
            renewable BOOLEAN NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt {real},
            last_error TEXT NOT NULL DEFAULT '',
            revoked_at {real},
            claimed_by TEXT,
            claim_until {real},
            mac TEXT NOT NULL,
            CHECK (state IN ('active', 'revoking', 'revoked'))
        )""",
        "CREATE INDEX IF NOT EXISTS secret_leases_by_expiry ON secret_leases (state, expire_time)",
        "CREATE INDEX IF NOT EXISTS secret_leases_by_token ON secret_leases (token_accessor)",
    ]
