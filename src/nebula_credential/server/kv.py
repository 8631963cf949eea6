"""The KV version 2 engine, one mount per keyring, over the credential store.

A KV path is a credential id; the secret's ``data`` is the credential value.
We keep only the latest version: ``version`` is the credential's revision
(which ``options.cas`` checks, inside the write), ``config`` says
``max_versions = 1``, and an older version reads as Vault answers for a
destroyed one.  Soft delete, undelete and destroy are flags in the
credential's metadata; each such change is a write, so it moves the
revision (the version) on, which Vault does not do.  The credential's scope
(re-encryption priority) comes from ``custom_metadata.scope``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..exceptions import CheckAndSetError, CredentialNotFoundError, InvalidInputError
from ..models import Credential, EncryptedCredential
from ..names import check_scope
from ..vault import DEFAULT_SCOPE
from ._request import Ctx, endpoint, iso, read_json
from .errors import HTTPError, bad_request

_RETRIES = 8
NO_CONTENT = 204


def _kv(metadata: dict[str, Any]) -> dict[str, Any]:
    kv = metadata.get("kv")
    return dict(kv) if isinstance(kv, dict) else {}


def _int_option(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a non-negative integer")
    return value


def _versions(body: dict[str, Any]) -> list[int]:
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions:
        raise bad_request("no version number provided")
    return [v for v in (_int_option(x, "versions") for x in versions) if v is not None]


def _custom_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 64:
        raise bad_request("custom_metadata must be an object of at most 64 string values")
    for k, v in value.items():
        if not isinstance(v, str) or not 0 < len(k) <= 128 or len(v) > 512:
            raise bad_request("custom_metadata keys are 1-128 characters, values strings of at most 512")
    scope = value.get("scope")
    if scope is not None:
        try:
            check_scope(scope)
        except InvalidInputError:
            raise bad_request(
                "custom_metadata.scope: 1-64 of letters, digits, _ . - starting with a letter or digit") from None
    return dict(value)


def _version_meta(row: EncryptedCredential | Credential, created: datetime | None) -> dict[str, Any]:
    kv = _kv(row.metadata)
    return {
        "created_time": iso(created),
        "custom_metadata": kv.get("custom_metadata") or None,
        "deletion_time": kv.get("deletion_time", ""),
        "destroyed": bool(kv.get("destroyed", False)),
        "version": row.revision,
    }


def _hidden(kv: dict[str, Any]) -> bool:
    return bool(kv.get("deletion_time") or kv.get("destroyed") or kv.get("placeholder"))


class KVEngine:
    """Routes of one KV v2 mount; the app mounts them at ``/v1/<mount>``."""

    def __init__(self, mount: str, keyring: str) -> None:
        self.mount = mount
        self.keyring = keyring

    def routes(self) -> list[BaseRoute]:
        def route(path: str, handler: Callable[[Request, Ctx], Any], methods: list[str]) -> Route:
            return Route(path, endpoint(handler, keyring=self.keyring), methods=methods)

        return [
            route("/data/{path:path}", self.data, ["GET", "POST", "PUT", "PATCH", "DELETE"]),
            route("/metadata", self.metadata, ["LIST"]),
            route("/metadata/{path:path}", self.metadata, ["GET", "LIST", "POST", "PUT", "DELETE"]),
            route("/delete/{path:path}", self.soft_delete, ["POST", "PUT"]),
            route("/undelete/{path:path}", self.undelete, ["POST", "PUT"]),
            route("/destroy/{path:path}", self.destroy, ["POST", "PUT"]),
            route("/config", self.config, ["GET", "POST", "PUT"]),
        ]

    # ---- helpers ----------------------------------------------------------------
    @staticmethod
    def _id(request: Request) -> str:
        cid = str(request.path_params.get("path", ""))
        if not cid or len(cid) > 1024:
            raise HTTPError(404)
        return cid

    async def _authorise_write(self, ctx: Ctx, cid: str) -> EncryptedCredential | None:
        """Vault's create-or-update: ``create`` for a new path, ``update`` for an existing one.

        A token with neither is refused before the store is read; with only
        one of them the existence check decides.
        """
        ctx.require_any("create", "update")
        row = await ctx.backend.row(self.keyring, cid)
        ctx.require("update" if row is not None else "create")
        return row

    async def _rewrite(
        self, ctx: Ctx, cid: str, change: Callable[[Credential], tuple[Any, str, dict[str, Any]] | None]
    ) -> Credential | None:
        """Read, change (value, scope, kv metadata) and write back under a CAS; retried on a race."""
        for _ in range(_RETRIES):
            try:
                record = await ctx.backend.get(self.keyring, cid)
            except CredentialNotFoundError:
                return None
            changed = change(record)
            if changed is None:
                return record
            value, scope, kv = changed
            try:
                await ctx.backend.put(self.keyring, cid, value, scope=scope,
                                      metadata={**record.metadata, "kv": kv}, expected_revision=record.revision)
                return record
            except CheckAndSetError:
                continue
        raise HTTPError(503, "too many concurrent writers on this path; try again")

    # ---- data/ -------------------------------------------------------------------
    async def data(self, request: Request, ctx: Ctx) -> Response:
        cid = self._id(request)
        if request.method == "GET":
            return await self._read(request, ctx, cid)
        if request.method == "DELETE":
            ctx.require("delete")
            now = iso(ctx.backend.vault.clock())
            await self._rewrite(ctx, cid, lambda r: None if _hidden(_kv(r.metadata)) else
                                (r.value, r.scope, {**_kv(r.metadata), "deletion_time": now}))
            return Response(status_code=NO_CONTENT)
        body = await read_json(request)
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise bad_request("options must be an object")
        cas = _int_option(options.get("cas"), "options.cas")
        data = body.get("data")
        if not isinstance(data, dict):
            raise bad_request("no data provided")
        if request.method == "PATCH":
            return await self._patch(ctx, cid, data, cas)
        return await self._write(ctx, cid, data, cas)

    async def _read(self, request: Request, ctx: Ctx, cid: str) -> Response:
        ctx.require("read")
        try:
            wanted = int(request.query_params.get("version") or 0)
        except ValueError:
            raise bad_request("version must be an integer") from None
        try:
            record = await ctx.backend.get(self.keyring, cid)
        except CredentialNotFoundError:
            raise HTTPError(404) from None
        kv = _kv(record.metadata)
        if kv.get("placeholder") or wanted > record.revision or wanted < 0:
            raise HTTPError(404)
        meta = _version_meta(record, record.updated_at)
        if 0 < wanted < record.revision:  # only the latest is kept: older ones read as destroyed
            meta.update(version=wanted, destroyed=True, deletion_time="", custom_metadata=None)
            raise HTTPError(404, data={"data": None, "metadata": meta})
        if _hidden(kv):
            raise HTTPError(404, data={"data": None, "metadata": meta})
        return ctx.reply({"data": record.value, "metadata": meta})

    async def _write(self, ctx: Ctx, cid: str, data: dict[str, Any], cas: int | None) -> Response:
        for _ in range(_RETRIES):
            row = await self._authorise_write(ctx, cid)
            kv = _kv(row.metadata) if row is not None else {}
            kv = {"custom_metadata": kv.get("custom_metadata") or {}}
            scope = row.scope if row is not None else DEFAULT_SCOPE
            expected = cas if cas is not None else (row.revision if row is not None else 0)
            try:
                revision = await ctx.backend.put(self.keyring, cid, data, scope=scope, metadata={"kv": kv},
                                                 expected_revision=expected)
            except CheckAndSetError:
                if cas is not None:
                    raise HTTPError(412, "check-and-set parameter did not match the current version") from None
                continue
            now = ctx.backend.vault.clock()
            return ctx.reply({"created_time": iso(now), "custom_metadata": kv["custom_metadata"] or None,
                              "deletion_time": "", "destroyed": False, "version": revision})
        raise HTTPError(503, "too many concurrent writers on this path; try again")

    async def _patch(self, ctx: Ctx, cid: str, patch: dict[str, Any], cas: int | None) -> Response:
        ctx.require("patch")
        try:
            record = await ctx.backend.get(self.keyring, cid)
        except CredentialNotFoundError:
            raise HTTPError(404) from None
        kv = _kv(record.metadata)
        if _hidden(kv) or not isinstance(record.value, dict):
            raise HTTPError(404)
        if cas is not None and cas != record.revision:
            raise HTTPError(412, "check-and-set parameter did not match the current version")
        merged = _merge(record.value, patch)
        try:
            revision = await ctx.backend.put(self.keyring, cid, merged, scope=record.scope,
                                             metadata=record.metadata, expected_revision=record.revision)
        except CheckAndSetError:
            raise HTTPError(412, "check-and-set parameter did not match the current version") from None
        return ctx.reply({"created_time": iso(ctx.backend.vault.clock()),
                          "custom_metadata": kv.get("custom_metadata") or None,
                          "deletion_time": "", "destroyed": False, "version": revision})

    # ---- delete/ undelete/ destroy/ ----------------------------------------------
    async def _flag(self, request: Request, ctx: Ctx, flag: Callable[[dict[str, Any]], dict[str, Any] | None],
                    *, destroy: bool = False) -> Response:
        ctx.require("update")
        cid = self._id(request)
        versions = _versions(await read_json(request))

        def change(record: Credential) -> tuple[Any, str, dict[str, Any]] | None:
            if record.revision not in versions:
                return None
            kv = flag(_kv(record.metadata))
            if kv is None:
                return None
            return (None if destroy else record.value), record.scope, kv

        await self._rewrite(ctx, cid, change)
        return Response(status_code=NO_CONTENT)

    async def soft_delete(self, request: Request, ctx: Ctx) -> Response:
        now = iso(ctx.backend.vault.clock())
        return await self._flag(request, ctx, lambda kv: None if kv.get("deletion_time") else
                                {**kv, "deletion_time": now})

    async def undelete(self, request: Request, ctx: Ctx) -> Response:
        return await self._flag(request, ctx, lambda kv: {**kv, "deletion_time": ""}
                                if kv.get("deletion_time") and not kv.get("destroyed") else None)

    async def destroy(self, request: Request, ctx: Ctx) -> Response:
        return await self._flag(request, ctx, lambda kv: None if kv.get("destroyed") else
                                {**kv, "destroyed": True}, destroy=True)

    # ---- metadata/ -----------------------------------------------------------------
    async def metadata(self, request: Request, ctx: Ctx) -> Response:
        if request.method == "LIST":
            return await self._list(request, ctx)
        cid = self._id(request)
        if request.method == "GET":
            ctx.require("read")
            row = await ctx.backend.row(self.keyring, cid)
            if row is None:
                raise HTTPError(404)
            return ctx.reply(self._metadata_json(row))
        if request.method == "DELETE":
            ctx.require("delete")
            with contextlib.suppress(CredentialNotFoundError):
                await ctx.backend.delete(self.keyring, cid)
            return Response(status_code=NO_CONTENT)
        body = await read_json(request)
        custom = _custom_metadata(body.get("custom_metadata")) if "custom_metadata" in body else None
        if body.get("max_versions") not in (None, 0, 1) or body.get("cas_required") not in (None, False) \
                or body.get("delete_version_after") not in (None, "", "0s", 0):
            raise bad_request("this server keeps one version: max_versions 1, cas_required false, "
                              "delete_version_after 0s")
        for _ in range(_RETRIES):
            row = await self._authorise_write(ctx, cid)
            if custom is None:
                return Response(status_code=NO_CONTENT)
            scope: str = custom.get("scope") or DEFAULT_SCOPE
            if row is None:  # metadata before data: a placeholder that reads as absent
                try:
                    await ctx.backend.put(self.keyring, cid, None, scope=scope,
                                          metadata={"kv": {"custom_metadata": custom, "placeholder": True}},
                                          expected_revision=0)
                    return Response(status_code=NO_CONTENT)
                except CheckAndSetError:
                    continue
            done = await self._rewrite(ctx, cid, _set_custom(scope, custom))
            if done is not None:
                return Response(status_code=NO_CONTENT)
        raise HTTPError(503, "too many concurrent writers on this path; try again")

    def _metadata_json(self, row: EncryptedCredential) -> dict[str, Any]:
        kv = _kv(row.metadata)
        placeholder = bool(kv.get("placeholder"))
        version = _version_meta(row, row.updated_at)
        return {
            "cas_required": False,
            "created_time": iso(row.created_at),
            "current_version": 0 if placeholder else row.revision,
            "custom_metadata": kv.get("custom_metadata") or None,
            "delete_version_after": "0s",
            "max_versions": 1,
            "oldest_version": 0 if placeholder else row.revision,
            "updated_time": iso(row.updated_at),
            "versions": {} if placeholder else {
                str(row.revision): {k: version[k] for k in ("created_time", "deletion_time", "destroyed")}
            },
        }

    async def _list(self, request: Request, ctx: Ctx) -> Response:
        ctx.require_list()
        folder = str(request.path_params.get("path", ""))
        prefix = folder + "/" if folder else ""
        keys = set()
        for cid in await ctx.backend.list_ids(self.keyring, prefix):
            rest = cid[len(prefix):]
            head, slash, _ = rest.partition("/")
            keys.add(head + slash)
        if not keys:
            raise HTTPError(404)
        return ctx.reply({"keys": sorted(keys)})

    # ---- config ----------------------------------------------------------------------
    async def config(self, request: Request, ctx: Ctx) -> Response:
        if request.method == "GET":
            ctx.require("read")
            return ctx.reply({"cas_required": False, "delete_version_after": "0s", "max_versions": 1})
        ctx.require("update")
        body = await read_json(request)
        if body.get("max_versions") not in (None, 0, 1) or body.get("cas_required") not in (None, False):
            raise bad_request("this server keeps one version: max_versions is 1 and cas_required false")
        return Response(status_code=NO_CONTENT)


def _set_custom(scope: str, custom: dict[str, str]) -> Callable[[Credential], tuple[Any, str, dict[str, Any]]]:
    return lambda r: (r.value, scope, {**_kv(r.metadata), "custom_metadata": custom})


def _merge(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7396), as Vault's PATCH applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result
