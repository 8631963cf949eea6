"""One home for what an id, a scope or a keyring name may be.

The library, the CLI and the HTTP server all call these, so a name that
passes one surface passes them all.  Ids are free text a user chose
(``github/acme``, ``db:prod``), so they only have to be printable: no control
characters, no NUL, no bidi overrides that make a terminal show something
else than what is stored, bounded length.  Keyring and scope names become
labels, AAD and metric labels, so they come from a small safe set:
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit,
at most 64 characters.  An engine's keyrings add a namespace the safe set
cannot spell, so they never collide with a keyring a user names: a Transit
key ``app`` on mount ``transit`` is keyring ``transit/app`` (``#2`` after a
delete and re-create).  Output still escapes everything: validation keeps
new data tidy, escaping keeps old data (written before these rules) safe.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .exceptions import InvalidInputError

MAX_ID_LENGTH = 1024
MAX_NAME_LENGTH = 64
#: Longest keyring name a :class:`~nebula_credential.keys.KeyManager` opens (names already in a
#: store are read as they are, so this is only a bound, not the safe set).
MAX_KEYRING_LENGTH = 200
# Every pattern here is applied with ``fullmatch``: ``match`` with ``$`` also accepts a
# trailing newline ("abc\n"), which would then reach labels, AAD and logs.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
#: A Transit key name (as Vault's, 1-128 characters).
_TRANSIT_KEY = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NAME_RE = re.compile(_SEGMENT)
#: Unicode categories refused in ids: controls, surrogates, line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: Bidirectional overrides and isolates: they make a terminal show another string.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"
#: A keyring: a safe-set name, or an engine's ``MOUNT/NAME`` (segments of the safe set, NAME up
#: to 128 characters as Transit key names) with an optional ``#N`` generation.
KEYRING_RE = re.compile(rf"{_SEGMENT}(?:(?:/{_SEGMENT})*/{_TRANSIT_KEY}(?:#[1-9][0-9]{{0,8}})?)?")
KEYRING_RULE = f"{NAME_RULE} (an engine's keyrings: MOUNT/NAME, optionally #N)"
#: A server mount (``[server] kv_mounts`` and ``transit_mounts``): one path segment, no dot.
MOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A Transit mount path as the library and the CLI take it (slashes allowed, stripped at the ends).
MOUNT_PATH_RE = re.compile(r"[A-Za-z0-9_./-]{1,64}")
TRANSIT_KEY_RE = re.compile(_TRANSIT_KEY)
TRANSIT_KEY_RULE = "1-128 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"


def check_credential_id(value: object, field: str = "credential id") -> str:
    """A credential id: a non-empty printable string of at most 1024 characters."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInputError(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    for i, ch in enumerate(value):
        if ch in _BIDI or unicodedata.category(ch) in _BAD_CATEGORIES:
            raise InvalidInputError(
                field, f"must be printable text; character {i} is U+{ord(ch):04X} (control or invisible)")
    return value


def check_lookup_id(value: object, field: str = "credential id") -> str:
    """An id to look up: any string a store can hold (no lone surrogates), nothing stricter.

    Reads do not apply :func:`check_credential_id`: a row written before
    validation existed may have an id it refuses, and must stay readable.
    """
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            field, f"must be Unicode text; character {exc.start} is a lone surrogate U+{ord(value[exc.start]):04X}"
        ) from None
    return value


def printable(text: str) -> str:
    """``text`` with control, separator and bidi characters shown as escapes (for terminals and logs).

    Rows written before validation existed, or by a database writer, may hold
    anything; output must never let them move the cursor or fake a line.
    """
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _check_name(value: object, field: str, what: str, pattern: re.Pattern[str] = NAME_RE,
                rule: str = NAME_RULE) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, f"{what} must be a string, got {type(value).__name__}")
    if not pattern.fullmatch(value):
        shown = value[:80].encode("unicode_escape").decode("ascii")
        raise InvalidInputError(field, f"{what} {shown!r} is not allowed; use {rule}")
    return value


def check_scope(value: object, field: str = "scope") -> str:
    """A scope name from the safe set (see :data:`NAME_RULE`)."""
    return _check_name(value, field, "scope")


def check_scope_configured(value: object, configured: Sequence[str], field: str = "scope") -> str:
    """:func:`check_scope`, and refuse a scope that differs from a configured one only by case.

    Scope names are case-sensitive (they are bound into each envelope's AAD),
    so ``Production`` would silently lose ``production``'s place in
    ``[reencryption] priority``; the writer is told the configured spelling
    instead.  An unconfigured scope in any case is still accepted.
    """
    scope = check_scope(value, field)
    if scope not in configured:
        folded = scope.casefold()
        match = next((c for c in configured if c.casefold() == folded), None)
        if match is not None:
            raise InvalidInputError(field, f"{scope!r} differs only by case from the configured scope "
                                           f"{match!r} ([reencryption] priority); did you mean {match!r}?")
    return scope


def is_mount(value: object) -> bool:
    """A server mount name (see :data:`MOUNT_RE`); the caller words the error for its setting."""
    return isinstance(value, str) and MOUNT_RE.fullmatch(value) is not None


def is_mount_path(value: object) -> bool:
    """A Transit mount path (see :data:`MOUNT_PATH_RE`)."""
    return isinstance(value, str) and MOUNT_PATH_RE.fullmatch(value) is not None


def is_transit_key_name(value: object) -> bool:
    """A Transit key name (see :data:`TRANSIT_KEY_RULE`); Transit raises its own input error."""
    return isinstance(value, str) and TRANSIT_KEY_RE.fullmatch(value) is not None


def check_keyring_bound(value: object, field: str = "keyring") -> str:
    """A keyring name to open: 1..200 characters (stored names are read as they are;
    :func:`check_keyring` is the rule for a keyring being created)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEYRING_LENGTH:
        raise InvalidInputError(field, f"keyring name must be 1..{MAX_KEYRING_LENGTH} characters")
    return value


def check_keyring(value: object, field: str = "keyring") -> str:
    """A keyring name from the safe set, or an engine's ``MOUNT/NAME[#N]`` (see :data:`KEYRING_RULE`)."""
    return _check_name(value, field, "keyring name", KEYRING_RE, KEYRING_RULE)


# ---- policy paths of keyring actions -------------------------------------------------------
#: What each console page or action needs on a KV keyring: (capability, policy path), ``{keyring}``
#: filled in.  A KV keyring is not a Transit key: its paths live under ``sys/nebula/keyrings/``,
#: so a capability on a Transit key of the same name never acts on it.
KV_KEYRING_NEEDS: dict[str, tuple[str, str]] = {
    "view": ("read", "sys/nebula/keyrings/{keyring}"),
    "rotate": ("update", "sys/nebula/keyrings/{keyring}/rotate"),
    "revoke": ("update", "sys/nebula/keyrings/{keyring}/revoke"),
    "reinstate": ("update", "sys/nebula/keyrings/{keyring}/reinstate"),
    "reencrypt": ("update", "sys/nebula/keyrings/{keyring}/reencrypt"),
    "audit": ("read", "sys/nebula/audit"),
}
#: The same for a Transit key (keyring ``MOUNT/NAME``): Vault's own path where Transit has the
#: operation (read the key, rotate it), ``sys/nebula/transit/...`` where it does not.  Reinstating
#: is never implied by ``update`` on the key's paths: lowering ``min_decryption_version`` below a
#: revoked version needs this ``reinstate`` capability too.
TRANSIT_KEY_NEEDS: dict[str, tuple[str, str]] = {
    "view": ("read", "{mount}/keys/{name}"),
    "rotate": ("update", "{mount}/keys/{name}/rotate"),
    "revoke": ("update", "sys/nebula/transit/{mount}/keys/{name}/revoke"),
    "reinstate": ("update", "sys/nebula/transit/{mount}/keys/{name}/reinstate"),
    "reencrypt": ("update", "sys/nebula/transit/{mount}/keys/{name}/reencrypt"),
    "audit": ("read", "sys/nebula/audit"),
}


def transit_key_need(what: str, mount: str, name: str) -> tuple[str, str]:
    """(capability, policy path) that ``what`` needs on the Transit key ``name`` of ``mount``."""
    capability, path = TRANSIT_KEY_NEEDS[what]
    return capability, path.format(mount=mount.strip("/"), name=name)


def keyring_need(what: str, keyring: str = "") -> tuple[str, str]:
    """(capability, policy path) that ``what`` (a console page or action) needs on ``keyring``.

    A keyring named ``MOUNT/NAME`` (``#N`` generation ignored) is a Transit
    key; any other is a KV keyring (KV keyring names have no ``/``).
    """
    if "/" in keyring:
        mount, name = keyring.rsplit("/", 1)
        return transit_key_need(what, mount, name.split("#", 1)[0])
    capability, path = KV_KEYRING_NEEDS[what]
    return capability, path.format(keyring=keyring)


__all__ = [
    "KEYRING_RULE",
    "KV_KEYRING_NEEDS",
    "MAX_ID_LENGTH",
    "MAX_KEYRING_LENGTH",
    "NAME_RULE",
    "TRANSIT_KEY_NEEDS",
    "TRANSIT_KEY_RULE",
    "check_credential_id",
    "check_keyring",
    "check_keyring_bound",
    "check_lookup_id",
    "check_scope",
    "check_scope_configured",
    "is_mount",
    "is_mount_path",
    "is_transit_key_name",
    "keyring_need",
    "printable",
    "transit_key_need",
]
