"""SQL shared by the SQLite and PostgreSQL backends: :class:`SqlTx`, composed from one slice per table family.

Each family's queries live in their own module (``_sql_keys``,
``_sql_credentials``, ``_sql_ops``, ``_sql_server``, ``_sql_mounts``, and ``_schema`` for
settings and migrations), row decoding in ``_rows``; a backend subclasses
:class:`SqlTx` and overrides the dialect hooks of ``_sql_base``.
"""

from __future__ import annotations

from ._schema import MetaSql
from ._sql_auth import AuthSql
from ._sql_credentials import CredentialsSql
from ._sql_database import DatabaseSql
from ._sql_keys import KeysSql
from ._sql_mounts import MountsSql
from ._sql_ops import OperationsSql
from ._sql_server import ServerSql
from ._sql_versions import VersionsSql
from .tx import StoreTx


class SqlTx(MetaSql, KeysSql, CredentialsSql, VersionsSql, OperationsSql, ServerSql, MountsSql, AuthSql, DatabaseSql,
            StoreTx):
    """StoreTx over a DB-API connection; subclasses adapt the dialect."""

    def versions_referenced(self, keyring: str) -> dict[int, int]:
        """Envelopes per key version: current rows and every live past version.

        The count is of envelopes a version's key must still open, which is
        what the destroy guard, backups and doctor need (each envelope is
        stored once: a current version's row has none of its own).  A store
        copied before schema v6 has no version table; it counts its rows only.
        """
        out = CredentialsSql.versions_referenced(self, keyring)
        if self._table_exists("credential_versions"):
            for version, n in self.version_envelopes_referenced(keyring).items():
                out[version] = out.get(version, 0) + n
        return out
