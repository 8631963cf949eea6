"""Vault's statement templates turned into SQL without pasting values into text.

A statement such as ``CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}'``
is split at its placeholders; each placeholder becomes a :mod:`psycopg.sql`
object: a name an :class:`~psycopg.sql.Identifier` (quoted by PostgreSQL's
rules, whatever it contains), a password or an expiration a
:class:`~psycopg.sql.Literal`.  The quotes a Vault template puts around a
placeholder (``"{{name}}"``, ``'{{password}}'``) are consumed with it, so the
same templates operators write for Vault work here and cannot be broken out of.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import DatabaseInputError

#: Placeholders and whether each is an identifier (else a literal).
IDENTIFIERS = frozenset({"name", "username"})
LITERALS = frozenset({"password", "expiration"})
_PLACEHOLDER = re.compile(r"""(?P<q>["']?)\{\{\s*(?P<key>[a-z_]+)\s*\}\}(?P=q)""")


def check(statements: Iterable[str], field: str) -> list[str]:
    """The statements of a request field, each checked to use only known placeholders."""
    out = []
    for text in statements:
        if not isinstance(text, str):
            raise DatabaseInputError(f"{field}: each statement must be a string")
        for m in _PLACEHOLDER.finditer(text):
            if m.group("key") not in IDENTIFIERS | LITERALS:
                raise DatabaseInputError(f"{field}: unknown template field {{{{{m.group('key')}}}}}")
        if text.strip():
            out.append(text)
    return out


def render(text: str, values: Mapping[str, str]) -> Any:
    """One statement template as a :class:`psycopg.sql.Composed` (values never pasted as text)."""
    from psycopg import sql

    parts: list[Any] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        key = m.group("key")
        if key not in values:
            raise DatabaseInputError(f"template field {{{{{key}}}}} has no value in this statement")
        parts.append(sql.SQL(text[pos:m.start()]))
        parts.append(sql.Identifier(values[key]) if key in IDENTIFIERS else sql.Literal(values[key]))
        pos = m.end()
    parts.append(sql.SQL(text[pos:]))
    return sql.Composed(parts)
