"""Token roles (``auth/token/roles/:name``): what ``auth/token/create/:role`` may grant.

A role may give a token policies its creator lacks (``allowed_policies``),
so a role row grants access as much as a policy does: it is stored as JSON
with a MAC (:mod:`~nebula_credential.rowmac`) over its name and body, and a
row that fails is refused (read as absent) and reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .._net import cidr_text
from ..rowmac import RowMac
from ..servertables import ROLE_TABLE, ServerTables, role_mac_fields
from .policies import DEFAULT_POLICY, ROOT_POLICY, check_name
from .tokens import TokenError

TABLE = ROLE_TABLE
RejectHook = Callable[[str, str, str], None]
Durations = Callable[[dict[str, Any], str], "timedelta | None"]
_FIELDS = frozenset({
    "allowed_policies", "disallowed_policies", "orphan", "period", "token_period", "renewable",
    "explicit_max_ttl", "token_explicit_max_ttl", "token_type", "token_no_default_policy", "token_num_uses",
    "path_suffix", "allowed_entity_aliases", "allowed_policies_glob", "disallowed_policies_glob",
    "token_bound_cidrs",
})


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    allowed_policies: tuple[str, ...] = ()
    disallowed_policies: tuple[str, ...] = ()
    orphan: bool = False
    period: timedelta | None = None
    renewable: bool = True
    explicit_max_ttl: timedelta | None = None
    token_type: str = "default-service"  # noqa: S105 - a token kind
    no_default_policy: bool = False
    num_uses: int = 0
    path_suffix: str = ""
    #: Where tokens created with the role may be used from (Vault's ``token_bound_cidrs``).
    bound_cidrs: tuple[str, ...] = ()

    def policies_for(self, requested: list[str] | None, parent: tuple[str, ...]) -> tuple[list[str], bool]:
        """The policies a token created with this role gets, and whether the parent-subset rule
        still applies (Vault: only when the role has no ``allowed_policies``)."""
        disallowed = set(self.disallowed_policies)
        if self.allowed_policies:
            wanted = list(self.allowed_policies) if requested is None else requested
            extra = [p for p in wanted if p not in self.allowed_policies and p != DEFAULT_POLICY]
            if extra:
                raise TokenError(f"token policies ({sorted(wanted)}) must be subset of the role's allowed "
                                 f"policies ({sorted(self.allowed_policies)})")
            check = False
        else:
            wanted = [p for p in parent if p != ROOT_POLICY] if requested is None else requested
            check = True
        bad = [p for p in wanted if p in disallowed]
        if bad:
            raise TokenError(f"token policies ({sorted(wanted)}) contains disallowed policies ({sorted(bad)})")
        if ROOT_POLICY in wanted and not self.allowed_policies:
            raise TokenError("root tokens may not be created through a role")
        return wanted, check

    def to_json(self) -> dict[str, Any]:
        def secs(td: timedelta | None) -> int:
            return 0 if td is None else round(td.total_seconds())

        return {
            "name": self.name, "allowed_policies": list(self.allowed_policies),
            "disallowed_policies": list(self.disallowed_policies), "orphan": self.orphan,
            "period": secs(self.period), "renewable": self.renewable,
            "explicit_max_ttl": secs(self.explicit_max_ttl), "token_type": self.token_type,
            "token_no_default_policy": self.no_default_policy, "token_num_uses": self.num_uses,
            "path_suffix": self.path_suffix,
            **({"token_bound_cidrs": list(self.bound_cidrs)} if self.bound_cidrs else {}),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Role:
        def td(value: Any) -> timedelta | None:
            return timedelta(seconds=value) if value else None

        return cls(
            name=str(doc["name"]), allowed_policies=tuple(doc.get("allowed_policies", ())),
            disallowed_policies=tuple(doc.get("disallowed_policies", ())), orphan=bool(doc.get("orphan")),
            period=td(doc.get("period")), renewable=bool(doc.get("renewable", True)),
            explicit_max_ttl=td(doc.get("explicit_max_ttl")), token_type=str(doc.get("token_type", "default-service")),
            no_default_policy=bool(doc.get("token_no_default_policy")), num_uses=int(doc.get("token_num_uses", 0)),
            path_suffix=str(doc.get("path_suffix", "")),
            bound_cidrs=tuple(doc.get("token_bound_cidrs", ())),
        )


def role_json(role: Role) -> dict[str, Any]:
    """Vault's role read shape."""
    doc = role.to_json()
    found = {
        "allowed_entity_aliases": None,
        "allowed_policies": doc["allowed_policies"],
        "allowed_policies_glob": [],
        "disallowed_policies": doc["disallowed_policies"],
        "disallowed_policies_glob": [],
        "explicit_max_ttl": doc["explicit_max_ttl"],
        "name": role.name,
        "orphan": role.orphan,
        "path_suffix": role.path_suffix,
        "period": doc["period"],
        "renewable": role.renewable,
        "token_explicit_max_ttl": doc["explicit_max_ttl"],
        "token_no_default_policy": role.no_default_policy,
        "token_period": doc["period"],
        "token_type": role.token_type,
        "token_bound_cidrs": list(role.bound_cidrs) or None,  # OpenBao: null when none
    }
    if role.num_uses:
        found["token_num_uses"] = role.num_uses
    return found


def _names(value: Any, field: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise TokenError(f"{field} must be a list of policy names")
    return tuple(sorted({check_name(p.strip()) for p in items if p.strip()}))


def _cidrs(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(b, str) for b in items):
        raise TokenError("token_bound_cidrs must be a list of CIDR blocks")
    try:
        return [cidr_text(b) for b in items if b.strip()]
    except ValueError:
        raise TokenError("token_bound_cidrs: invalid CIDR block") from None


class TokenRoles:
    """Read, write, list and delete token roles, each row MAC'd."""

    def __init__(self, tables: ServerTables, clock: Callable[[], datetime], rowmac: RowMac,
                 on_reject: RejectHook | None = None) -> None:
        self._tables = tables
        self._clock = clock
        self.rowmac = rowmac
        self.on_reject = on_reject

    def get(self, name: str) -> Role | None:
        with self._tables.read() as tx:
            found = tx.role_get(name)
        if found is None:
            return None
        body, mac = found
        if not self.rowmac.verify(TABLE, (name,), role_mac_fields(body), mac):
            if self.on_reject is not None:
                self.on_reject(TABLE, name, "MAC mismatch" if mac else "missing MAC")
            return None
        return Role.from_json(json.loads(body))

    def names(self) -> list[str]:
        with self._tables.read() as tx:
            return tx.role_list()

    def put(self, name: str, body: dict[str, Any], durations: Durations) -> Role:
        """Create or update a role from a request body (fields not given keep their value)."""
        if not name or len(name) > 128 or "/" in name:
            raise TokenError("invalid role name")
        unknown = sorted(k for k, v in body.items() if k not in _FIELDS and v not in (None, "", [], {}))
        if unknown:
            raise TokenError(f"unsupported field(s) for a token role: {', '.join(unknown)}")
        old = self.get(name) or Role(name=name)
        doc = old.to_json()
        for key in ("allowed_policies", "disallowed_policies"):
            if key in body:
                doc[key] = list(_names(body[key], key))
        for key in ("orphan", "renewable", "token_no_default_policy"):
            if key in body:
                value = body[key]
                if isinstance(value, str):
                    value = value.lower() in ("true", "1", "t")
                doc[key] = bool(value)
        for keys, target in ((("token_period", "period"), "period"),
                             (("token_explicit_max_ttl", "explicit_max_ttl"), "explicit_max_ttl")):
            for key in keys:
                if key in body:
                    found = durations(body, key)
                    doc[target] = 0 if found is None else found.total_seconds()
                    break
        if "token_type" in body:
            kind = str(body["token_type"])
            if kind not in ("service", "default-service", "default", "batch", "default-batch"):
                raise TokenError(f"invalid 'token_type' value {kind[:32]!r}")
            if "batch" in kind:
                raise TokenError("batch tokens are not supported by this server: use token_type=service")
            doc["token_type"] = kind
        if "token_num_uses" in body:
            try:
                uses = int(body["token_num_uses"])
            except (TypeError, ValueError):
                raise TokenError("token_num_uses must be an integer") from None
            if uses < 0 or uses >= 2**31:
                raise TokenError("token_num_uses cannot be negative")
            doc["token_num_uses"] = uses
        if "path_suffix" in body:
            doc["path_suffix"] = str(body["path_suffix"])[:128]
        if "token_bound_cidrs" in body:
            doc["token_bound_cidrs"] = _cidrs(body["token_bound_cidrs"])
        role = Role.from_json(doc)
        text = json.dumps(role.to_json(), sort_keys=True)
        mac = self.rowmac.mac(TABLE, (name,), role_mac_fields(text))
        self._tables.run(lambda tx: tx.role_put(name, text, self._clock(), mac))
        return role

    def delete(self, name: str) -> bool:
        return self._tables.run(lambda tx: tx.role_delete(name))

    def rejected(self) -> list[str]:
        bad = []
        with self._tables.read() as tx:
            for name in tx.role_list():
                found = tx.role_get(name)
                if found is not None and not self.rowmac.verify(TABLE, (name,), role_mac_fields(found[0]), found[1]):
                    bad.append(name)
        return bad
