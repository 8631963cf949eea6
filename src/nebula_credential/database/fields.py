"""Vault's request fields, parsed: durations, booleans, string lists, names."""

from __future__ import annotations

import re
from typing import Any

from ..durations import parse_duration
from ..exceptions import ConfigError
from .errors import DatabaseInputError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise DatabaseInputError(f"invalid {what}: 1-128 characters from A-Z a-z 0-9 _ . -, "
                                 "starting with a letter or digit")
    return value


def seconds(value: Any, field: str) -> int:
    """A duration field ("1h", "3600", 3600) in whole seconds."""
    if value is None or value == "":
        return 0
    try:
        return int(parse_duration(value, field).total_seconds())
    except ConfigError as exc:
        raise DatabaseInputError(f"invalid {field}: {exc}") from None


def boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise DatabaseInputError(f"invalid {field}: expected a boolean")


def strings(value: Any, field: str) -> list[str]:
    """A list of strings, or one comma-separated string (Vault accepts both)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v.strip()]
    raise DatabaseInputError(f"invalid {field}: expected a list of strings")


def statements(value: Any, field: str) -> list[str]:
    """Statement fields: a list of strings, or one string (kept whole: statements hold commas)."""
    from .templates import check

    if value is None or value == "":
        return []
    if isinstance(value, str):
        return check([value], field)
    if isinstance(value, list):
        return check(value, field)
    raise DatabaseInputError(f"invalid {field}: expected a list of statements")


def text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DatabaseInputError(f"invalid {field}: expected a string")
    return value
