"""The KV version 1 engine: one mount, one keyring, one value per path, no versions.

Vault's v1 shapes: ``GET <mount>/<path>`` answers the secret itself as
``data`` (with ``lease_duration`` the mount's default TTL, or the secret's
own ``ttl`` field, as Vault does), ``PUT``/``POST`` replace it (204),
``DELETE`` removes it (204, also when absent), ``LIST`` names the keys one
level down (folders end in ``/``; 404 when there are none).  A path is a
credential id of the mount's keyring; the value is encrypted as every
credential is, so re-encryption, backups, retention and ``doctor`` cover it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..exceptions import CredentialNotFoundError
from ..vault import DEFAULT_SCOPE
from ._request import Ctx, duration_field, endpoint, read_json
from .errors import HTTPError, bad_request

NO_CONTENT = 204
#: Vault's system default lease TTL, reported on reads of a mount that sets none.
SYSTEM_TTL = 768 * 3600


class KV1Engine:
    """Routes of one KV v1 mount; the dispatcher mounts them at ``/v1/<mount>``."""

    def __init__(self, mount: str, keyring: str, *, default_ttl: int = 0) -> None:
        self.mount = mount
        self.keyring = keyring
        self.default_ttl = default_ttl or SYSTEM_TTL

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", endpoint(self.folder, keyring=self.keyring), methods=["LIST", "GET"]),
            Route("/{path:path}", endpoint(self.secret, keyring=self.keyring),
                  methods=["GET", "LIST", "PUT", "POST", "DELETE"]),
        ]

    async def folder(self, request: Request, ctx: Ctx) -> Response:
        if request.method != "LIST":
            raise HTTPError(404)
        return await self._list(ctx, "")

    async def secret(self, request: Request, ctx: Ctx) -> Response:
        cid = str(request.path_params.get("path", ""))
        if request.method == "LIST":
            return await self._list(ctx, cid)
        if not cid or len(cid) > 1024:
            raise HTTPError(404)
        if request.method == "GET":
            ctx.require("read")
            try:
                record = await ctx.backend.get(self.keyring, cid)
            except CredentialNotFoundError:
                raise HTTPError(404) from None
            return ctx.reply(record.value, lease_duration=self._ttl(record.value))
        if request.method == "DELETE":
            ctx.require("delete")
            with contextlib.suppress(CredentialNotFoundError):
                await ctx.backend.delete(self.keyring, cid)
            return Response(status_code=NO_CONTENT)
        ctx.require_any("create", "update")
        row = await ctx.backend.row(self.keyring, cid)
        ctx.require("update" if row is not None else "create")
        data = await read_json(request)
        if not data:
            raise bad_request("missing data fields")
        if "ttl" in data:
            duration_field(data, "ttl")  # refused now rather than ignored on every read
        await ctx.backend.put(self.keyring, cid, data, scope=row.scope if row is not None else DEFAULT_SCOPE,
                              metadata={}, expected_revision=None)
        return Response(status_code=NO_CONTENT)

    def _ttl(self, value: Any) -> int:
        if isinstance(value, dict) and value.get("ttl") not in (None, ""):
            try:
                parsed = duration_field(value, "ttl")
            except HTTPError:
                return self.default_ttl
            if parsed is not None:
                return int(parsed.total_seconds())
        return self.default_ttl

    async def _list(self, ctx: Ctx, folder: str) -> Response:
        ctx.require_list()
        prefix = folder.rstrip("/") + "/" if folder.strip("/") else ""
        keys = set()
        for cid in await ctx.backend.list_ids(self.keyring, prefix):
            head, slash, _ = cid[len(prefix):].partition("/")
            keys.add(head + slash)
        if not keys:
            raise HTTPError(404)
        return ctx.reply({"keys": sorted(keys)})
