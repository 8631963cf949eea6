"""The KV version 2 engine, one mount per keyring, over the credential store and its version history.

A KV path is a credential id; the secret's ``data`` is the credential
value, and each write is a new version of it, kept as Vault keeps them
(:mod:`nebula_credential.history` holds the rules: ``max_versions``,
``cas``, ``cas_required``, ``delete_version_after``, soft delete, undelete,
destroy).  Every version is an envelope under the keyring's key lifecycle.
The credential's scope (re-encryption priority) comes from
``custom_metadata.scope`` and applies from the next write on.  The
deliberate differences from Vault are listed in docs/server.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..exceptions import CheckAndSetError, CheckAndSetRequiredError, CredentialNotFoundError, InvalidInputError
from ..history import MAX_VERSIONS_LIMIT, KVSettings, SecretVersions, VersionInfo, parse_versions, settings_of
from ..models import EncryptedCredential
from ..names import check_scope
from ..vault import DEFAULT_SCOPE, Vault
from ._request import Ctx, endpoint, iso, read_json
from .errors import HTTPError, bad_request

NO_CONTENT = 204
CAS_MISMATCH = "check-and-set parameter did not match the current version"
CAS_REQUIRED = "check-and-set parameter required for this call"
MERGE_PATCH = "application/merge-patch+json"
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration`` string, as Vault prints ``delete_version_after`` (``0s``, ``1h0m0s``, ``1m30s``)."""
    whole = int(seconds)
    if whole <= 0:
        return "0s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def parse_go_duration(value: Any, name: str) -> float:
    """A Vault duration field: seconds as a number or digit string, or Go's ``1h30m`` form."""
    if isinstance(value, bool):
        raise bad_request(f'error converting input for field "{name}": expected a duration')
    if isinstance(value, int | float):
        if value < 0:
            raise bad_request(f'error converting input for field "{name}": negative duration')
        return float(value)
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    if text in ("", "0"):
        return 0.0
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise bad_request(f'error converting input for field "{name}": time: invalid duration "{text}"')
    return total


def _int_field(value: Any, name: str) -> int:
    """A non-negative integer field; digit strings accepted as Vault's field parser accepts them."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f'error converting input for field "{name}": expected a non-negative integer')
    return value


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
            check_scope(scope, "custom_metadata.scope")
        except InvalidInputError as exc:
            raise bad_request(str(exc)) from None
    return dict(value)


#: The KV config fields a mount's ``options`` (or ``config``) may carry at enable/tune time.
MOUNT_KV_FIELDS = ("max_versions", "cas_required", "delete_version_after")


async def apply_mount_options(ctx: Ctx, keyring: str, fields: dict[str, Any]) -> None:
    """Write KV config fields given through ``sys/mounts`` (enable or tune) to the mount's KV config.

    Why: a tool that sets ``options.max_versions`` on ``sys/mounts/:path/tune`` expects the engine to keep
    that many versions, as the same field written to ``<mount>/config`` does; storing it only in the mount
    table would answer 204 and change nothing.
    """
    if not fields:
        return
    vault = ctx.backend.keyring(keyring)
    current = await ctx.backend.run(vault.kv_config)
    await ctx.backend.write(vault.set_kv_config, _settings(fields, current))


def _version_json(v: VersionInfo) -> dict[str, Any]:
    return {"created_time": iso(v.created_at), "deletion_time": iso(v.deletion_time), "destroyed": v.destroyed}


def _write_json(v: VersionInfo, settings: KVSettings) -> dict[str, Any]:
    """What every KV read and write answers with: a version's fields, its secret's custom metadata, its number."""
    answer = _version_json(v)
    answer["custom_metadata"] = settings.custom_metadata or None
    answer["version"] = v.version
    return answer


def _settings(body: dict[str, Any], base: KVSettings) -> KVSettings:
    """Vault's metadata (or config) fields of a request body over ``base``; absent fields keep their value."""
    max_versions = base.max_versions
    if body.get("max_versions") is not None:
        max_versions = _int_field(body["max_versions"], "max_versions")
        if max_versions > MAX_VERSIONS_LIMIT:
            raise bad_request(f"max_versions must be at most {MAX_VERSIONS_LIMIT}")
    cas_required = base.cas_required
    if body.get("cas_required") is not None:
        flag = body["cas_required"]
        if isinstance(flag, str) and flag.lower() in ("true", "false", "1", "0"):
            flag = flag.lower() in ("true", "1")
        if not isinstance(flag, bool):
            raise bad_request('error converting input for field "cas_required": expected a boolean')
        cas_required = flag
    dva = base.delete_version_after
    if body.get("delete_version_after") is not None:
        dva = parse_go_duration(body["delete_version_after"], "delete_version_after")
    custom = base.custom_metadata
    if "custom_metadata" in body:
        custom = _custom_metadata(body["custom_metadata"])
    return KVSettings(max_versions, cas_required, dva, custom, base.metadata_version)


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


class KVEngine:
    """Routes of one KV v2 mount; the app mounts them at ``/v1/<mount>``."""

    def __init__(self, mount: str, keyring: str) -> None:
        self.mount = mount
        self.keyring = keyring
        #: path -> (lock, waiters): writers of one path in this process queue here, on the event loop,
        #: instead of each holding a store connection while it waits for the row lock
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def _path_lock(self, cid: str) -> AsyncIterator[None]:
        lock, waiters = self._locks.setdefault(cid, (asyncio.Lock(), [0]))
        waiters[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiters[0] -= 1
            if not waiters[0]:
                self._locks.pop(cid, None)

    def routes(self) -> list[BaseRoute]:
        def route(path: str, handler: Callable[[Request, Ctx], Any], methods: list[str]) -> Route:
            return Route(path, endpoint(handler, keyring=self.keyring), methods=methods)

        return [
            route("/data/{path:path}", self.data, ["GET", "POST", "PUT", "PATCH", "DELETE"]),
            route("/metadata", self.metadata, ["LIST", "GET"]),
            route("/metadata/", self.metadata, ["LIST", "GET"]),
            route("/metadata/{path:path}", self.metadata, ["GET", "LIST", "POST", "PUT", "PATCH", "DELETE"]),
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

    def _vault(self, ctx: Ctx) -> Vault:
        return ctx.backend.keyring(self.keyring)

    async def _history(self, ctx: Ctx, cid: str) -> SecretVersions | None:
        try:
            return await ctx.backend.run(self._vault(ctx).versions, cid)
        except CredentialNotFoundError:
            return None

    async def _authorise_write(self, ctx: Ctx, cid: str) -> EncryptedCredential | None:
        """Vault's create-or-update: ``create`` for a new path, ``update`` for an existing one.

        A token with neither is refused before the store is read; with only
        one of them the existence check (one row read, never a value) decides.
        """
        ctx.require_any("create", "update")
        row = await ctx.backend.row(self.keyring, cid)
        ctx.require("update" if row is not None else "create")
        return row

    @staticmethod
    def _now(ctx: Ctx) -> datetime:
        return ctx.backend.vault.clock()

    # ---- data/ -------------------------------------------------------------------
    async def data(self, request: Request, ctx: Ctx) -> Response:
        cid = self._id(request)
        if request.method == "GET":
            return await self._read(request, ctx, cid)
        if request.method == "DELETE":
            ctx.require("delete")
            with contextlib.suppress(CredentialNotFoundError):  # 204 for a path with nothing stored, as Vault
                async with self._path_lock(cid):
                    await ctx.backend.write(self._vault(ctx).delete_versions, cid, None)
            return Response(status_code=NO_CONTENT)
        if request.method == "PATCH":
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != MERGE_PATCH:
                raise HTTPError(415, f"PATCH requires Content-Type of {MERGE_PATCH}, provided {content_type}")
        body = await read_json(request)
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise bad_request("options must be an object")
        cas = None if options.get("cas") is None else _int_field(options["cas"], "cas")
        data = body.get("data")
        if not isinstance(data, dict):
            raise bad_request("no data provided")
        if request.method == "PATCH":
            return await self._patch(ctx, cid, data, cas)
        return await self._write(ctx, cid, data, cas)

    async def _read(self, request: Request, ctx: Ctx, cid: str) -> Response:
        ctx.require("read")
        # most reads have no query string: do not build (parse) Starlette's QueryParams for them
        raw = (request.query_params.get("version") if request.scope.get("query_string") else None) or "0"
        try:
            wanted = int(raw)
        except ValueError:
            raise bad_request(f"Field validation failed: error converting input for field \"version\": "
                              f"'{raw}' cannot parse value as 'int'") from None
        try:
            found = await ctx.backend.read(self._vault(ctx).read_kv, cid, wanted or None)
        except CredentialNotFoundError:
            raise HTTPError(404) from None
        if found.info is None:
            raise HTTPError(404)
        meta = _write_json(found.info, found.settings)
        if found.record is None:
            return ctx.reply({"data": None, "metadata": meta}, status=404)
        return ctx.reply({"data": found.record.value, "metadata": meta})

    async def _put(self, ctx: Ctx, cid: str, value: Any, cas: int | None,
                   row: EncryptedCredential | None) -> Response:
        vault = self._vault(ctx)
        settings = settings_of(row.metadata) if row is not None else KVSettings()
        scope = settings.custom_metadata.get("scope") or (row.scope if row is not None else DEFAULT_SCOPE)
        try:
            # in arrival order through the backend's group commit, which queues one path's writers
            version = await ctx.backend.put_version(vault, cid, value, scope=scope, cas=cas)
        except CheckAndSetError:
            raise bad_request(CAS_MISMATCH) from None
        except CheckAndSetRequiredError:
            raise bad_request(CAS_REQUIRED) from None
        return ctx.reply(_write_json(version, settings))

    async def _write(self, ctx: Ctx, cid: str, data: dict[str, Any], cas: int | None) -> Response:
        return await self._put(ctx, cid, data, cas, await self._authorise_write(ctx, cid))

    async def _patch(self, ctx: Ctx, cid: str, patch: dict[str, Any], cas: int | None) -> Response:
        ctx.require("patch")
        found = await self._history(ctx, cid)
        current = found.get(found.current_version) if found is not None else None
        if found is None or current is None or not current.readable(self._now(ctx)):
            raise HTTPError(404)  # OpenBao's body is empty; ours carries errors, as every error here
        if cas is not None and cas != found.current_version:
            raise bad_request(CAS_MISMATCH)
        try:
            record = (await ctx.backend.read(self._vault(ctx).read_kv, cid, found.current_version)).record
        except CredentialNotFoundError:
            raise HTTPError(404) from None
        if record is None:
            raise HTTPError(404)
        # the write's own check-and-set: a writer in between makes this a 400, never a lost update
        return await self._put(ctx, cid, _merge(record.value, patch), found.current_version,
                               await ctx.backend.row(self.keyring, cid))

    # ---- delete/ undelete/ destroy/ ----------------------------------------------
    async def _versions_call(self, request: Request, ctx: Ctx,
                             method: Callable[[Ctx], Callable[..., list[int]]],
                             missing: str = "No version number provided") -> Response:
        ctx.require("update")
        cid = self._id(request)
        body = await read_json(request)
        raw = body.get("versions")
        if isinstance(raw, str | int) and not isinstance(raw, bool):
            raw = [x for x in str(raw).split(",") if x.strip()]
        if not isinstance(raw, list) or not raw:
            raise bad_request(missing)
        try:
            versions = parse_versions(raw)
        except InvalidInputError:
            raise bad_request('error converting input for field "versions": expected integers') from None
        with contextlib.suppress(CredentialNotFoundError):  # Vault answers 204 for a path with nothing stored
            async with self._path_lock(cid):
                await ctx.backend.write(method(ctx), cid, versions)
        return Response(status_code=NO_CONTENT)

    async def soft_delete(self, request: Request, ctx: Ctx) -> Response:
        return await self._versions_call(request, ctx, lambda c: self._vault(c).delete_versions)

    async def undelete(self, request: Request, ctx: Ctx) -> Response:
        return await self._versions_call(request, ctx, lambda c: self._vault(c).undelete)

    async def destroy(self, request: Request, ctx: Ctx) -> Response:
        # Vault's destroy words it in lower case, delete and undelete capitalised
        return await self._versions_call(request, ctx, lambda c: self._vault(c).destroy_versions,
                                         "no version number provided")

    # ---- metadata/ -----------------------------------------------------------------
    async def metadata(self, request: Request, ctx: Ctx) -> Response:
        listing = request.method == "LIST" or (
            request.method == "GET" and request.query_params.get("list", "").lower() in ("true", "1"))
        if listing or not request.path_params.get("path"):
            if not listing:
                raise HTTPError(405)
            return await self._list(request, ctx)
        cid = self._id(request)
        if request.method == "GET":
            ctx.require("read")
            found = await self._history(ctx, cid)
            if found is None:
                raise HTTPError(404)
            return ctx.reply(self._metadata_json(found))
        if request.method == "DELETE":
            ctx.require("delete")
            with contextlib.suppress(CredentialNotFoundError):
                await ctx.backend.write(self._vault(ctx).delete, cid)
            return Response(status_code=NO_CONTENT)
        if request.method == "PATCH":
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != MERGE_PATCH:
                raise HTTPError(415, f"PATCH requires Content-Type of {MERGE_PATCH}, provided {content_type}")
            ctx.require("patch")
            body = await read_json(request)
            found = await self._history(ctx, cid)
            if found is None:
                raise HTTPError(404)  # OpenBao's body is empty; ours carries errors, as every error here
            if "custom_metadata" in body:
                body = {**body, "custom_metadata": _merge(found.settings.custom_metadata,
                                                         body["custom_metadata"] or {})}
            return await self._set_metadata(ctx, cid, _settings(body, found.settings))
        body = await read_json(request)
        row = await self._authorise_write(ctx, cid)
        return await self._set_metadata(ctx, cid, _settings(body, settings_of(row.metadata) if row else KVSettings()))

    async def _set_metadata(self, ctx: Ctx, cid: str, settings: KVSettings) -> Response:
        scope = settings.custom_metadata.get("scope")
        await ctx.backend.write(self._vault(ctx).set_settings, cid, settings, scope=scope)
        return Response(status_code=NO_CONTENT)

    @staticmethod
    def _metadata_json(found: SecretVersions) -> dict[str, Any]:
        s = found.settings
        return {
            "cas_required": s.cas_required,
            "created_time": iso(found.created_at),
            "current_metadata_version": s.metadata_version,
            "current_version": found.current_version,
            "custom_metadata": s.custom_metadata or None,
            "delete_version_after": go_duration(s.delete_version_after),
            "max_versions": s.max_versions,
            "metadata_cas_required": False,
            "oldest_version": found.oldest_version,
            "updated_time": iso(found.updated_at),
            "versions": {str(v.version): _version_json(v) for v in found.versions},
        }

    async def _list(self, request: Request, ctx: Ctx) -> Response:
        ctx.require_list()
        folder = str(request.path_params.get("path", "")).strip("/")
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
        vault = self._vault(ctx)
        if request.method == "GET":
            ctx.require("read")
            s = await ctx.backend.run(vault.kv_config)
            return ctx.reply({"cas_required": s.cas_required,
                              "delete_version_after": go_duration(s.delete_version_after),
                              "max_versions": s.max_versions, "metadata_cas_required": False})
        ctx.require("update")
        body = await read_json(request)
        current = await ctx.backend.run(vault.kv_config)
        body.pop("custom_metadata", None)  # per secret only, as in Vault
        await ctx.backend.write(vault.set_kv_config, _settings(body, current))
        return Response(status_code=NO_CONTENT)
