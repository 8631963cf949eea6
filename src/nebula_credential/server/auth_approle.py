"""``auth/<mount>`` AppRole: machines log in with a role id and a secret id (Vault's API).

Secret ids are stored only as keyed hashes (:meth:`.authstore.AuthStore.hash`),
with their accessor pointing at the hash; their use count and TTL live in
the item's row, and a login spends a use with one conditional UPDATE in one
transaction, so N concurrent logins with a single-use secret id issue exactly
one token.  Items: ``role`` (settings + role id), ``roleid`` (role id ->
role), ``sid/<role>`` (hash -> secret id facts), ``acc/<role>`` (accessor ->
hash).
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._backend import Backend
from ._request import Ctx, endpoint, read_json, source_of
from .authcommon import (
    auth_store,
    boolean,
    cidrs,
    integer,
    invalid,
    issue,
    item_endpoint,
    login_endpoint,
    login_reply,
    seconds,
    source_allowed,
    token_read,
    token_settings,
)
from .authstore import AuthStore
from .errors import HTTPError, bad_request

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
INVALID = "invalid role or secret ID"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    raw = body.get("metadata") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise bad_request("failed to parse metadata: expected a JSON object of strings") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise bad_request("metadata must be an object of strings")
    return {str(k)[:128]: v[:512] for k, v in raw.items()}


class AppRoleEngine:
    """One AppRole mount (``auth/approle`` by default): its routes over the shared auth store."""

    method = "approle"

    def __init__(self, mount: str = "auth/approle") -> None:
        self.mount = mount.strip("/")

    # ---- helpers -----------------------------------------------------------------
    def _name(self, request: Request) -> str:
        name = str(request.path_params["name"])
        if not _NAME.match(name):
            raise bad_request(f"invalid role name {name!r}")
        return name

    async def _role(self, store: AuthStore, ctx: Ctx, name: str, status: int = 400) -> dict[str, Any]:
        role = await ctx.backend.run(store.get, self.mount, "role", name)
        if role is None:
            raise HTTPError(status, f'role "{name}" does not exist')
        return role

    # ---- roles ---------------------------------------------------------------------
    async def role(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        name = self._name(request)

        async def save(old: dict[str, Any] | None) -> None:
            role, role_id = build_role(await read_json(request), old)
            await ctx.backend.write(self._save_role, store, name, role, role_id)

        return await item_endpoint(request, ctx, store, self.mount, "role", name, shown=self._role_json, save=save,
                                   remove=self._delete_role)

    def save_role(self, store: AuthStore, name: str, body: dict[str, Any]) -> str:
        """Create or update a role from a write's fields (the CLI's way in); returns its role id."""
        role, role_id = build_role(body, store.get(self.mount, "role", name))
        self._save_role(store, name, role, role_id)
        return role_id

    def _save_role(self, store: AuthStore, name: str, role: dict[str, Any], role_id: str) -> None:
        owner = store.get(self.mount, "roleid", role_id)
        if owner is not None and owner["role"] != name:
            raise bad_request("role_id already in use")
        old_id = role.get("role_id")
        if old_id and old_id != role_id:
            store.delete(self.mount, "roleid", old_id)
        role["role_id"] = role_id
        store.put(self.mount, "role", name, role)
        store.put(self.mount, "roleid", role_id, {"role": name})

    def _delete_role(self, store: AuthStore, name: str, role: dict[str, Any]) -> None:
        store.delete(self.mount, "role", name)
        store.delete(self.mount, "roleid", role["role_id"])
        store.delete_kind(self.mount, f"sid/{name}")
        store.delete_kind(self.mount, f"acc/{name}")

    @staticmethod
    def _role_json(role: dict[str, Any]) -> dict[str, Any]:
        return {
            **token_read(role),
            "bind_secret_id": role.get("bind_secret_id", True),
            "local_secret_ids": role.get("local_secret_ids", False),
            "secret_id_bound_cidrs": list(role.get("secret_id_bound_cidrs", [])) or None,
            "secret_id_num_uses": role.get("secret_id_num_uses", 0),
            "secret_id_ttl": role.get("secret_id_ttl", 0),
            "period": role.get("token_period", 0),
        }

    async def list_roles(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("list", self.mount + "/role/")
        names = await ctx.backend.run(auth_store(request).names, self.mount, "role")
        if not names:
            raise HTTPError(404)
        return ctx.reply({"keys": names})

    async def role_id(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        name = self._name(request)
        if request.method == "GET":
            ctx.require("read")
            role = await ctx.backend.run(store.get, self.mount, "role", name)
            if role is None:
                raise HTTPError(404)
            return ctx.reply({"role_id": role["role_id"]})
        ctx.require("update")
        role = await self._role(store, ctx, name)
        role_id = (await read_json(request)).get("role_id")
        if not isinstance(role_id, str) or not role_id:
            raise bad_request("missing role_id")
        await ctx.backend.write(self._save_role, store, name, role, role_id)
        return Response(status_code=204)

    # ---- secret ids ------------------------------------------------------------------
    async def secret_id(self, request: Request, ctx: Ctx) -> Response:
        if request.method == "LIST":
            return await self._list_accessors(request, ctx)
        return await self._new_secret_id(request, ctx, custom=False)

    async def custom_secret_id(self, request: Request, ctx: Ctx) -> Response:
        return await self._new_secret_id(request, ctx, custom=True)

    async def _list_accessors(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("list", ctx.path + "/")
        store = auth_store(request)
        name = self._name(request)
        await self._role(store, ctx, name)
        keys = await ctx.backend.run(store.names, self.mount, f"acc/{name}")
        if not keys:
            raise HTTPError(404)
        return ctx.reply({"keys": keys})

    async def _new_secret_id(self, request: Request, ctx: Ctx, *, custom: bool) -> Response:
        ctx.require("update")
        store = auth_store(request)
        name = self._name(request)
        role = await self._role(store, ctx, name, 404)
        if not role.get("bind_secret_id", True):
            raise bad_request("bind_secret_id is not set on the role")
        value, facts = secret_id_facts(role, await read_json(request), custom=custom)
        accessor = facts["accessor"]
        await ctx.backend.write(self._save_secret_id, store, name, value, facts)
        ctx.details["secret_id_accessor"] = accessor
        return ctx.reply(secret_id_reply(value, facts))

    def new_secret_id(self, store: AuthStore, name: str) -> dict[str, Any]:
        """Generate a secret id for a role (the CLI's way in): Vault's answer, shown once."""
        role = store.get(self.mount, "role", name)
        if role is None:
            raise HTTPError(404, f'role "{name}" does not exist')
        if not role.get("bind_secret_id", True):
            raise bad_request("bind_secret_id is not set on the role")
        value, facts = secret_id_facts(role, {}, custom=False)
        self._save_secret_id(store, name, value, facts)
        return secret_id_reply(value, facts)

    def read_role(self, store: AuthStore, name: str) -> dict[str, Any] | None:
        role = store.get(self.mount, "role", name)
        return None if role is None else {**self._role_json(role), "role_id": role["role_id"]}

    def _save_secret_id(self, store: AuthStore, role: str, value: str, facts: dict[str, Any]) -> None:
        digest = store.hash(f"{self.mount}\0{role}\0{value}")
        now = store.now()
        facts = {**facts, "created_at": now}
        expires = now + facts["ttl"] if facts["ttl"] else None
        if store.get(self.mount, f"sid/{role}", digest) is not None:
            raise bad_request("SecretID is already registered")
        store.put(self.mount, f"sid/{role}", digest, facts, expires_at=expires, uses_left=facts["num_uses"] or None)
        store.put(self.mount, f"acc/{role}", facts["accessor"], {"hash": digest}, expires_at=expires)

    def _facts(self, store: AuthStore, role: str, digest: str) -> dict[str, Any] | None:
        facts = store.get(self.mount, f"sid/{role}", digest)
        if facts is None:
            return None
        expires = facts.get("_expires_at")
        uses = facts.get("_uses_left")
        return {
            "cidr_list": facts.get("cidr_list", []),
            "creation_time": _iso(facts.get("created_at")),
            "expiration_time": _iso(expires),
            "last_updated_time": _iso(facts.get("created_at")),
            "metadata": facts.get("metadata", {}),
            "secret_id_accessor": facts.get("accessor"),
            "secret_id_num_uses": 0 if uses is None else uses,
            "secret_id_ttl": facts.get("ttl", 0),
            "token_bound_cidrs": facts.get("token_bound_cidrs", []),
        }

    async def _secret_value(self, request: Request, field: str) -> str:
        value = (await read_json(request)).get(field)
        if not isinstance(value, str) or not value:
            raise bad_request(f"missing {field}")
        return value

    async def secret_id_lookup(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        store = auth_store(request)
        name = self._name(request)
        await self._role(store, ctx, name)
        value = await self._secret_value(request, "secret_id")
        digest = await ctx.backend.run(store.hash, f"{self.mount}\0{name}\0{value}")  # the key may need the store
        facts = await ctx.backend.run(self._facts, store, name, digest)
        if facts is None:
            return Response(status_code=204)
        return ctx.reply(facts)

    async def secret_id_destroy(self, request: Request, ctx: Ctx) -> Response:
        ctx.require_any("update", "delete")
        store = auth_store(request)
        name = self._name(request)
        await self._role(store, ctx, name)
        value = await self._secret_value(request, "secret_id")
        digest = await ctx.backend.run(store.hash, f"{self.mount}\0{name}\0{value}")
        await ctx.backend.write(self._destroy, store, name, digest)
        return Response(status_code=204)

    def _destroy(self, store: AuthStore, role: str, digest: str) -> None:
        facts = store.get(self.mount, f"sid/{role}", digest)
        store.delete(self.mount, f"sid/{role}", digest)
        if facts is not None:
            store.delete(self.mount, f"acc/{role}", facts["accessor"])

    async def _by_accessor(self, request: Request, ctx: Ctx, store: AuthStore, name: str) -> str:
        accessor = await self._secret_value(request, "secret_id_accessor")
        entry = await ctx.backend.run(store.get, self.mount, f"acc/{name}", accessor)
        if entry is None:
            raise bad_request(f"failed to find accessor entry for secret_id_accessor: {accessor!r}")
        return str(entry["hash"])

    async def accessor_lookup(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        store = auth_store(request)
        name = self._name(request)
        await self._role(store, ctx, name)
        digest = await self._by_accessor(request, ctx, store, name)
        facts = await ctx.backend.run(self._facts, store, name, digest)
        if facts is None:
            raise bad_request("failed to find accessor entry for secret_id_accessor")
        return ctx.reply(facts)

    async def accessor_destroy(self, request: Request, ctx: Ctx) -> Response:
        ctx.require_any("update", "delete")
        store = auth_store(request)
        name = self._name(request)
        await self._role(store, ctx, name)
        digest = await self._by_accessor(request, ctx, store, name)
        await ctx.backend.write(self._destroy, store, name, digest)
        return Response(status_code=204)

    # ---- login -------------------------------------------------------------------------
    async def login(self, request: Request, backend: Backend, details: dict[str, Any]) -> Response:
        store = auth_store(request)
        body = await read_json(request)
        role_id = body.get("role_id")
        if not isinstance(role_id, str) or not role_id:
            raise bad_request("missing role_id")
        owner = await backend.run(store.get, self.mount, "roleid", role_id)
        if owner is None:
            raise invalid("invalid role ID")
        name = str(owner["role"])
        details["role"] = name
        role = await backend.run(store.get, self.mount, "role", name)
        if role is None:
            raise invalid("invalid role ID")
        source = source_of(request)
        if not source_allowed(source, role.get("secret_id_bound_cidrs", [])):
            raise invalid("source address unauthorized through CIDR restrictions on the role")
        metadata = {"role_name": name}
        token_blocks: list[str] = []
        if role.get("bind_secret_id", True):
            value = body.get("secret_id")
            if not isinstance(value, str) or not value:
                raise bad_request("missing secret_id")
            # through the backend: the first hash of a process reads its key from the store
            digest = await backend.run(store.hash, f"{self.mount}\0{name}\0{value}")
            facts = await backend.run(store.get, self.mount, f"sid/{name}", digest)
            if facts is None:
                raise invalid(INVALID)
            if not source_allowed(source, facts.get("cidr_list", [])):
                raise invalid("source address unauthorized through CIDR restrictions on the secret ID")
            spent = await backend.write(self._spend, store, name, digest)
            if spent is None:  # used up or expired by a concurrent login since the read
                raise invalid(INVALID)
            details["secret_id_accessor"] = spent.get("accessor")
            metadata.update(spent.get("metadata", {}))
            token_blocks = spent.get("token_bound_cidrs", [])
        # a secret id's own token_bound_cidrs replace the role's, as in Vault
        auth = await issue(backend, role, display_name=f"{self.mount.split('/')[-1]}", metadata=metadata,
                           bound_cidrs=token_blocks or None, path=f"{self.mount}/login")
        auth["metadata"] = metadata
        if token_blocks:
            auth["token_bound_cidrs"] = token_blocks
        return login_reply(auth, details)

    def _spend(self, store: AuthStore, role: str, digest: str) -> dict[str, Any] | None:
        spent = store.spend(self.mount, f"sid/{role}", digest)
        if spent is not None and store.get(self.mount, f"sid/{role}", digest) is None:
            store.delete(self.mount, f"acc/{role}", spent["accessor"])  # the last use: its accessor goes too
        return spent

    def routes(self) -> list[BaseRoute]:
        rw = ["GET", "POST", "PUT", "DELETE"]
        return [
            Route("/login", login_endpoint(self.login, method=self.method, mount=self.mount), methods=["POST", "PUT"]),
            Route("/role", endpoint(self.list_roles), methods=["LIST"]),
            Route("/role/{name}", endpoint(self.role), methods=rw),
            Route("/role/{name}/role-id", endpoint(self.role_id), methods=["GET", "POST", "PUT"]),
            Route("/role/{name}/secret-id", endpoint(self.secret_id), methods=["POST", "PUT", "LIST"]),
            Route("/role/{name}/custom-secret-id", endpoint(self.custom_secret_id), methods=["POST", "PUT"]),
            Route("/role/{name}/secret-id/lookup", endpoint(self.secret_id_lookup), methods=["POST", "PUT"]),
            Route("/role/{name}/secret-id/destroy", endpoint(self.secret_id_destroy),
                  methods=["POST", "PUT", "DELETE"]),
            Route("/role/{name}/secret-id-accessor/lookup", endpoint(self.accessor_lookup), methods=["POST", "PUT"]),
            Route("/role/{name}/secret-id-accessor/destroy", endpoint(self.accessor_destroy),
                  methods=["POST", "PUT", "DELETE"]),
        ]


def build_role(body: dict[str, Any], old: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """A role's stored settings and role id from a write's fields over the old role (Vault's defaults)."""
    role = token_settings(body, old)
    role["bind_secret_id"] = boolean(body, "bind_secret_id", (old or {}).get("bind_secret_id", True))
    for field in ("secret_id_bound_cidrs", "bound_cidr_list"):
        if field in body:
            role["secret_id_bound_cidrs"] = cidrs(body, field)
    role.setdefault("secret_id_bound_cidrs", [])
    role["secret_id_num_uses"] = integer(body, "secret_id_num_uses", role.get("secret_id_num_uses", 0))
    if "secret_id_ttl" in body:
        role["secret_id_ttl"] = seconds(body, "secret_id_ttl")
    role.setdefault("secret_id_ttl", 0)
    role["local_secret_ids"] = boolean(body, "local_secret_ids", role.get("local_secret_ids", False))
    if "period" in body:
        role["token_period"] = seconds(body, "period")
    if not role["bind_secret_id"] and not role["secret_id_bound_cidrs"] and not role["token_bound_cidrs"]:
        raise bad_request("at least one constraint should be enabled on the role")
    role_id = body.get("role_id") or role.get("role_id") or str(uuid.uuid4())
    if not isinstance(role_id, str):
        raise bad_request("role_id must be a string")
    return role, role_id


def secret_id_facts(role: dict[str, Any], body: dict[str, Any], *, custom: bool) -> tuple[str, dict[str, Any]]:
    """A new secret id (generated, or the custom one given) and what is kept about it (never the value)."""
    if custom:
        value = body.get("secret_id")
        if not isinstance(value, str) or not value:
            raise bad_request("missing secret_id")
    else:
        value = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
    blocks = cidrs(body, "cidr_list")
    role_blocks = role.get("secret_id_bound_cidrs", [])
    if blocks and role_blocks and not all(any(_within(b, r) for r in role_blocks) for b in blocks):
        raise bad_request("failed to verify the CIDR restrictions set on the secret ID: "
                          "cidr_list must be a subset of the role's secret_id_bound_cidrs")
    token_blocks = cidrs(body, "token_bound_cidrs")
    role_token_blocks = role.get("token_bound_cidrs", [])
    if token_blocks and role_token_blocks and not all(any(_within(b, r) for r in role_token_blocks)
                                                      for b in token_blocks):
        raise bad_request("failed to verify the CIDR restrictions set on the secret ID: "
                          "token_bound_cidrs must be a subset of the role's token_bound_cidrs")
    ttl = seconds(body, "ttl") or int(role.get("secret_id_ttl", 0))
    if role.get("secret_id_ttl") and ttl > role["secret_id_ttl"]:
        ttl = int(role["secret_id_ttl"])
    uses = integer(body, "num_uses", int(role.get("secret_id_num_uses", 0)))
    if role.get("secret_id_num_uses") and (uses == 0 or uses > role["secret_id_num_uses"]):
        uses = int(role["secret_id_num_uses"])
    facts = {
        "accessor": str(uuid.uuid4()), "metadata": _metadata(body), "cidr_list": blocks,
        "token_bound_cidrs": token_blocks, "ttl": ttl, "num_uses": uses,
    }
    return value, facts


def secret_id_reply(value: str, facts: dict[str, Any]) -> dict[str, Any]:
    return {"secret_id": value, "secret_id_accessor": facts["accessor"], "secret_id_ttl": facts["ttl"],
            "secret_id_num_uses": facts["num_uses"]}


def _within(block: str, outer: str) -> bool:
    import ipaddress

    inner_net, outer_net = ipaddress.ip_network(block, strict=False), ipaddress.ip_network(outer, strict=False)
    return inner_net.version == outer_net.version and inner_net.subnet_of(outer_net)  # type: ignore[arg-type]
