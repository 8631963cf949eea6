"""Vault's ACL policy language: HCL ``path "..." { capabilities = [...] }`` rules.

Parsing uses python-hcl2 (no hand-written HCL).  Matching follows Vault:
``*`` only at the end of a pattern (prefix glob), ``+`` as a whole segment
(exactly one segment); when several patterns match a path the most
specific one decides (Vault's priority order, see :func:`_priority`), the
capabilities of identical patterns in different policies are merged, and
``deny`` among them wins.  Nothing matching means no access: default deny.

Paths are normalised once, by :func:`normalise`, and every decision is made
on the normalised path, never on the raw one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from ..exceptions import NebulaCredentialError

CAPABILITIES = ("create", "read", "update", "patch", "delete", "list", "sudo", "deny")
ROOT_POLICY = "root"
DEFAULT_POLICY = "default"
#: Policies the server defines itself: code, never rows (a database writer cannot widen them).
BUILTIN = frozenset({ROOT_POLICY, DEFAULT_POLICY})
#: The policy of response-wrapping tokens: it grants nothing, and no stored policy may take its name
#: (a wrapping token would gain whatever that policy allowed); not listed, as in Vault.
WRAP_POLICY = "response-wrapping"
RESERVED = BUILTIN | {WRAP_POLICY}
#: Vault's built-in ``default`` policy, attached to every token unless ``no_default_policy``:
#: a token may look itself up, renew and revoke itself, ask its own capabilities, use its
#: cubbyhole and response wrapping.  (Vault's identity-templated paths are left out: there
#: is no identity store here.)
DEFAULT_POLICY_TEXT = """# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its resultant ACL from all policies
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}
"""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_SEGMENT_BAD = re.compile(r"[\x00-\x1f\x7f]")


class PolicyError(NebulaCredentialError):
    """A policy document or name is not valid (HTTP 400)."""


class BadPathError(NebulaCredentialError):
    """A request path that cannot be normalised safely (HTTP 400)."""


def check_name(name: str) -> str:
    """Vault lower-cases policy names; we accept the same alphabet and lower-case too."""
    lowered = name.lower()
    if not _NAME.match(lowered):
        raise PolicyError(
            f"invalid policy name {name[:64]!r}: 1-128 of a-z 0-9 _ . - starting with a letter or digit"
        )
    return lowered


def normalise(raw: str | bytes) -> str:
    """The one canonical form of a request path below ``/v1/``.

    Percent-decoding happens exactly once (``%252F`` stays ``%2F``), empty
    segments (``//``) and a trailing slash are dropped, and ``.`` or ``..``
    segments are refused rather than resolved: nothing a client writes can
    make the authorised path differ from the path that is served.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    try:
        text = unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPathError("path is not valid UTF-8") from None
    if _SEGMENT_BAD.search(text):
        raise BadPathError("path contains control characters")
    segments = [s for s in text.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise BadPathError("path segments '.' and '..' are not allowed")
    return "/".join(segments)


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    capabilities: frozenset[str]
    regex: re.Pattern[str]
    priority: tuple[int, int, int, int, str]


def _priority(pattern: str) -> tuple[int, int, int, int, str]:
    """Vault's ordering, higher = more specific: the later the first wildcard, a
    pattern without a trailing glob, fewer ``+`` segments, longer, lexically larger."""
    firsts = [i for i in (pattern.find("+"), pattern.find("*")) if i >= 0]
    first = min(firsts) if firsts else len(pattern)
    return (first, 0 if pattern.endswith("*") else 1, -pattern.split("/").count("+"), len(pattern), pattern)


def compile_rule(pattern: str, capabilities: list[str]) -> Rule:
    if not pattern or pattern.startswith("/"):
        raise PolicyError(f"path {pattern!r}: must be a non-empty path without a leading slash")
    if "*" in pattern[:-1]:
        raise PolicyError(f"path {pattern!r}: '*' is only allowed at the end")
    body = pattern[:-1] if pattern.endswith("*") else pattern
    parts = []
    for segment in body.split("/"):
        if "+" in segment and segment != "+":
            raise PolicyError(f"path {pattern!r}: '+' must be a whole segment")
        parts.append("[^/]+" if segment == "+" else re.escape(segment))
    regex = "/".join(parts) + (".*" if pattern.endswith("*") else "")
    caps = []
    for cap in capabilities:
        if cap not in CAPABILITIES:
            raise PolicyError(f"path {pattern!r}: unknown capability {cap!r}; allowed: {', '.join(CAPABILITIES)}")
        caps.append(cap)
    return Rule(pattern, frozenset(caps), re.compile(regex, re.DOTALL), _priority(pattern))


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(text: str) -> list[Rule]:
    """Parse one policy document; anything we would not enforce is refused, not ignored."""
    import hcl2

    from .policyjson import json_document, looks_like_json

    if looks_like_json(text):  # Vault's parser reads JSON too
        try:
            doc = json_document(text)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
    else:
        try:
            doc = hcl2.loads(text)
        except Exception as exc:  # lark raises several unrelated types; none may escape as a 500
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise PolicyError(f"policy is not valid HCL: {first}") from None
    rules: list[Rule] = []
    for key, blocks in doc.items():
        if key.startswith("__"):  # the parser's own bookkeeping (comments)
            continue
        if key != "path":
            raise PolicyError(f"unsupported policy stanza {key!r}; only path blocks are supported")
        for block in blocks if isinstance(blocks, list) else [blocks]:
            if not isinstance(block, dict):
                raise PolicyError("path block must be path \"PATTERN\" { capabilities = [...] }")
            for raw_pattern, body in block.items():
                pattern = _unquote(raw_pattern)
                if not isinstance(body, dict):
                    raise PolicyError(f"path {pattern!r}: expected a block")
                extra = sorted(k for k in body if k != "capabilities" and not k.startswith("__"))
                if extra:
                    raise PolicyError(f"path {pattern!r}: unsupported setting {extra[0]!r}; only capabilities")
                caps = body.get("capabilities")
                if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                    raise PolicyError(f"path {pattern!r}: capabilities must be a list of strings")
                rules.append(compile_rule(pattern, [_unquote(c) for c in caps]))
    return rules


_ROOT_CAPABILITIES = frozenset(c for c in CAPABILITIES if c != "deny")
_NOTHING: frozenset[str] = frozenset()
#: Paths whose capabilities one ACL remembers before it starts again.
_MEMO_MAX = 2048


class ACL:
    """The combined rules of a token's policies."""

    def __init__(self, rules: list[Rule], *, root: bool = False) -> None:
        self.root = root
        self._memo: dict[str, frozenset[str]] = {}
        merged: dict[str, set[str]] = {}
        for rule in rules:
            merged.setdefault(rule.pattern, set()).update(rule.capabilities)
        self._rules = sorted(
            (compile_rule(p, sorted(c)) for p, c in merged.items()), key=lambda r: r.priority, reverse=True
        )

    def capabilities(self, path: str) -> frozenset[str]:
        """What the most specific matching pattern grants on ``path`` (empty: nothing).

        Remembered per path for this ACL's life (its rules never change; a changed policy is a new
        ACL): a request asks two or three times, and a client asks for the same paths again and again.
        """
        if self.root:
            return _ROOT_CAPABILITIES
        found = self._memo.get(path)
        if found is not None:
            return found
        found = _NOTHING
        for rule in self._rules:
            if rule.regex.fullmatch(path):
                found = _NOTHING if "deny" in rule.capabilities else rule.capabilities
                break
        if len(self._memo) >= _MEMO_MAX:  # paths are the client's: a bounded memo
            self._memo.clear()
        self._memo[path] = found
        return found

    def allows(self, path: str, capability: str) -> bool:
        return capability in self.capabilities(path)

    def grants_under(self, prefix: str) -> bool:
        """True when some rule grants a capability on a path under ``prefix`` (``secret/``): Vault's
        check before it tells a token about a mount (``sys/internal/ui/mounts``)."""
        if self.root:
            return True
        for rule in self._rules:
            if not rule.capabilities or "deny" in rule.capabilities:
                continue
            pattern = rule.pattern
            literal = re.split(r"[*+]", pattern, maxsplit=1)[0]
            if literal != pattern:  # a glob: its fixed start and the prefix must agree
                if literal.startswith(prefix) or prefix.startswith(literal):
                    return True
            elif pattern.startswith(prefix):
                return True
        return False
