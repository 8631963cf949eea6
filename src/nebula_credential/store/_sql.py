"""SQL shared by the SQLite and PostgreSQL backends: :class:`SqlTx`, composed from one slice per table family.

Each family's queries live in their own module (``_sql_keys``,
``_sql_credentials``, ``_sql_ops``, ``_sql_server``, and ``_schema`` for
settings and migrations), row decoding in ``_rows``; a backend subclasses
:class:`SqlTx` and overrides the dialect hooks of ``_sql_base``.
"""

from __future__ import annotations

from ._schema import MetaSql
from ._sql_auth import AuthSql
from ._sql_credentials import CredentialsSql
from ._sql_keys import KeysSql
from ._sql_ops import OperationsSql
from ._sql_server import ServerSql
from .tx import StoreTx


class SqlTx(MetaSql, KeysSql, CredentialsSql, OperationsSql, ServerSql, AuthSql, StoreTx):
    """StoreTx over a DB-API connection; subclasses adapt the dialect."""
