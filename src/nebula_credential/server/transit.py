"""The Transit engine mount: Vault's ``/v1/transit/...`` over :mod:`nebula_credential.transit`.

A thin router: every handler authorises first (``ctx.require``), then runs
one facade call in the thread pool and shapes Vault's answer.  Capabilities
follow Vault: ``read`` for ``GET keys/:name``, ``list`` for ``LIST keys``,
``delete`` for ``DELETE keys/:name``, ``update`` for every ``POST``, and
``encrypt/:name`` on a key that does not exist yet needs ``create`` (the key
is then created, as Vault does).  Our typed errors become 400s with their
message (404 for an unknown key on ``keys/:name``), a batch with a failed
item answers 400 with every item's result (or ``partial_failure_response_code``
when some succeeded), as Vault does.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..exceptions import (
    DecryptionError,
    EnvelopeFormatError,
    KeyNotFoundError,
    KeyRevokedError,
    PolicyViolationError,
)
from ..names import transit_key_need
from ..transit import (
    BatchResult,
    Handled,
    ReinstateRefusedError,
    Transit,
    TransitInputError,
    TransitKeyNotFoundError,
    hash_input,
    random_bytes,
    requests,
)
from ..transit.wire import is_decimal
from ._request import Ctx, endpoint, read_json
from .errors import HTTPError, PermissionDenied
from .workers import note_change, on_change

NO_CONTENT = 204
#: Errors that are the caller's: Vault answers them with 400 and the message.
_BAD_INPUT = (TransitInputError, DecryptionError, EnvelopeFormatError, PolicyViolationError, KeyRevokedError,
              KeyNotFoundError, ValueError)


class TransitEngine:
    """Routes of one Transit mount; the app mounts them at ``/v1/<mount>``."""

    def __init__(self, mount: str = "transit") -> None:
        self.mount = mount
        self._transit: Transit | None = None
        self._lock = threading.Lock()

    def transit(self, ctx: Ctx) -> Transit:
        if self._transit is None:
            with self._lock:
                if self._transit is None:
                    self._transit = Transit(ctx.backend.vault, self.mount)
                    on_change(self.forget_keys)  # a key changed through another worker of this serve
        return self._transit

    def forget_keys(self) -> None:
        """Drop this worker's loaded keys: the next use of each reads its settings and versions."""
        if self._transit is not None:
            self._transit.forget_all()

    def routes(self) -> list[BaseRoute]:
        def route(path: str, handler: Callable[[Request, Ctx], Awaitable[Response]], methods: list[str]) -> Route:
            return Route(path, endpoint(handler), methods=methods)

        post = ["POST", "PUT"]
        return [
            route("/keys", self.list_keys, ["LIST"]),
            route("/keys/{name}", self.key, ["GET", "POST", "PUT", "DELETE"]),
            route("/keys/{name}/config", self.config, post),
            route("/keys/{name}/rotate", self.rotate, post),
            route("/keys/{name}/trim", self.trim, post),
            route("/encrypt/{name}", self.encrypt, post),
            route("/decrypt/{name}", self.decrypt, post),
            route("/rewrap/{name}", self.rewrap, post),
            route("/datakey/{kind}/{name}", self.datakey, post),
            route("/hmac/{name}", self.hmac, post),
            route("/hmac/{name}/{algorithm}", self.hmac, post),
            route("/sign/{name}", self.sign, post),
            route("/sign/{name}/{algorithm}", self.sign, post),
            route("/verify/{name}", self.verify, post),
            route("/verify/{name}/{algorithm}", self.verify, post),
            route("/export/{kind}/{name}", self.export, ["GET"]),
            route("/export/{kind}/{name}/{version}", self.export, ["GET"]),
            route("/backup/{name}", self.backup, ["GET"]),
            route("/restore", self.restore, post),
            route("/restore/{name}", self.restore, post),
            route("/random", self.random, post),
            route("/random/{count}", self.random, post),
            route("/random/{source}/{count}", self.random, post),
            route("/hash", self.hash, post),
            route("/hash/{algorithm}", self.hash, post),
        ]

    # ---- plumbing ---------------------------------------------------------------------
    async def _call(self, ctx: Ctx, fn: Callable[..., Any], *args: Any, key_path: bool = False,
                    missing: Callable[[], HTTPError] | None = None, write: bool = False, read: bool = False,
                    **kw: Any) -> Any:
        """Run one facade call off the event loop (key changes through the backend's write queue;
        ``read``: a call that only reads, which the backend may run on the loop, see ``Backend.read``;
        ``missing``: the error of an unknown key, made only when one is)."""
        try:
            if write:
                result = await ctx.backend.write(fn, *args, **kw)
                note_change("keys")  # a key's settings or versions changed: the serve's other workers reload it
                return result
            if read:
                return await ctx.backend.read(fn, *args, **kw)
            return await ctx.backend.run(fn, *args, **kw)
        except TransitKeyNotFoundError:
            if missing is not None:
                raise missing() from None
            if key_path:
                raise HTTPError(404) from None
            raise HTTPError(400, "encryption key not found") from None
        except _BAD_INPUT as exc:
            raise HTTPError(400, str(exc)) from None

    @staticmethod
    def _name(request: Request) -> str:
        return str(request.path_params["name"])

    async def _key_reply(self, ctx: Ctx, name: str) -> Response:
        data = await self._call(ctx, requests.read_key, self.transit(ctx), name, key_path=True)
        ctx.keyring = data["nebula"]["keyring"]
        return ctx.reply(data)

    def _batch_reply(self, ctx: Ctx, name: str, body: dict[str, Any], handled: Handled, *,
                     per_item: bool = False) -> Response:
        """Vault's answer, and the audit facts of the request: keyring, key versions, item counts.

        ``per_item`` (``sign``, ``verify``): as Vault, a batch answers 200 whatever its items' errors.
        """
        data, result = handled
        self._note(ctx, name)
        if result.versions:  # no empty list made and then filtered out
            ctx.details["key_versions"] = sorted(result.versions)
        if result.batched:
            ctx.details.update(items=len(result.items), failed=result.failed)
        return ctx.reply(data, status=200 if per_item else _batch_status(body, result))

    def _note(self, ctx: Ctx, name: str, **details: Any) -> None:
        ctx.keyring = self.transit(ctx).cached_keyring(name) or ctx.keyring
        ctx.details.update({k: v for k, v in details.items() if v is not None})

    # ---- keys -----------------------------------------------------------------------------
    async def list_keys(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("list", self.mount + "/keys/")
        names = await self._call(ctx, self.transit(ctx).key_names)
        if not names:
            raise HTTPError(404)
        return ctx.reply({"keys": names})

    async def key(self, request: Request, ctx: Ctx) -> Response:
        name = self._name(request)
        transit = self.transit(ctx)
        if request.method == "GET":
            ctx.require("read")
            return await self._key_reply(ctx, name)
        if request.method == "DELETE":
            ctx.require("delete")
            await self._call(ctx, transit.delete_key, name, key_path=True, write=True)
            return Response(status_code=NO_CONTENT)
        ctx.require("update")
        body = await read_json(request)
        await self._call(ctx, requests.handle_create, transit, name, body, write=True)
        return await self._key_reply(ctx, name)

    async def _change(self, request: Request, ctx: Ctx, op: Callable[[Transit, str, dict[str, Any]], Any]) -> Response:
        """``keys/:name/{config,rotate,trim}``: update capability, one write, the key's new state."""
        ctx.require("update")
        name = self._name(request)
        body = await read_json(request)
        await self._call(ctx, op, self.transit(ctx), name, body, key_path=True, write=True)
        return await self._key_reply(ctx, name)

    async def config(self, request: Request, ctx: Ctx) -> Response:
        """``keys/:name/config``: lowering ``min_decryption_version`` to a revoked version reinstates
        it, so that part also needs the reinstate capability the console asks for (403 without it)."""
        reinstate = transit_key_need("reinstate", self.mount, self._name(request))
        allowed = ctx.allows(*reinstate)

        def configure(t: Transit, name: str, body: dict[str, Any]) -> Any:
            try:
                return requests.handle_configure(t, name, body, reinstate_allowed=allowed)
            except ReinstateRefusedError as exc:
                raise HTTPError(403, f"{exc} (update on {reinstate[1]})") from None

        return await self._change(request, ctx, configure)

    async def rotate(self, request: Request, ctx: Ctx) -> Response:
        return await self._change(request, ctx, lambda t, name, body: t.rotate(name))

    async def trim(self, request: Request, ctx: Ctx) -> Response:
        return await self._change(request, ctx, requests.handle_trim)

    # ---- data -------------------------------------------------------------------------------
    async def encrypt(self, request: Request, ctx: Ctx) -> Response:
        name = self._name(request)
        transit = self.transit(ctx)
        # Vault's existence check: update on an existing key, create (upsert) on a new one.  The
        # capabilities are checked first, so a token with neither never makes us read the store.
        can_update, can_create = ctx.allows("update"), ctx.allows("create")
        ctx.operation = "update" if can_update or not can_create else "create"  # ctx.require, answered above
        if not (can_update or can_create):
            raise PermissionDenied()
        if not can_update and await ctx.backend.run(transit.exists, name):
            raise PermissionDenied()  # create alone does not allow using an existing key
        body = await read_json(request)
        handled = await self._call(ctx, requests.handle_encrypt, transit, name, body, create=can_create,
                                   missing=PermissionDenied, read=True)  # a first use or a counter block: a worker
        return self._batch_reply(ctx, name, body, handled)

    async def decrypt(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        name = self._name(request)
        handled = await self._call(ctx, requests.handle_decrypt, self.transit(ctx), name, body, read=True)
        return self._batch_reply(ctx, name, body, handled)

    async def rewrap(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        name = self._name(request)
        handled = await self._call(ctx, requests.handle_rewrap, self.transit(ctx), name, body)
        return self._batch_reply(ctx, name, body, handled)

    async def hmac(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        algorithm = request.path_params.get("algorithm")
        name = self._name(request)
        return self._batch_reply(ctx, name, body,
                                 await self._call(ctx, requests.handle_hmac, self.transit(ctx), name, body, algorithm))

    async def sign(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        name = self._name(request)
        handled = await self._call(ctx, requests.handle_sign, self.transit(ctx), name, body,
                                   request.path_params.get("algorithm"))
        return self._batch_reply(ctx, name, body, handled, per_item=True)

    async def verify(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        name = self._name(request)
        handled = await self._call(ctx, requests.handle_verify, self.transit(ctx), name, body,
                                   request.path_params.get("algorithm"))
        return self._batch_reply(ctx, name, body, handled, per_item=True)

    async def export(self, request: Request, ctx: Ctx) -> Response:
        """``export/:type/:name[/:version]`` (read capability, as Vault; audited by the engine)."""
        ctx.require("read")
        name, kind = self._name(request), str(request.path_params["kind"])
        data = await self._call(ctx, requests.handle_export, self.transit(ctx), name, kind,
                                request.path_params.get("version"), key_path=True)
        self._note(ctx, name, export_type=kind)
        return ctx.reply(data)

    async def backup(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("read")
        name = self._name(request)
        data = await self._call(ctx, requests.handle_backup, self.transit(ctx), name, key_path=True, write=True)
        self._note(ctx, name)
        return ctx.reply(data)

    async def restore(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        name = request.path_params.get("name")
        await self._call(ctx, requests.handle_restore, self.transit(ctx), name, body, write=True)
        return Response(status_code=NO_CONTENT)

    async def datakey(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        kind, name = str(request.path_params["kind"]), self._name(request)
        data = await self._call(ctx, requests.handle_datakey, self.transit(ctx), name, kind, body)
        self._note(ctx, name, key_versions=[data["key_version"]])
        return ctx.reply(data)

    async def random(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        count = request.path_params.get("count")
        fmt = None
        if count is not None and not is_decimal(str(count)):
            fmt, count = str(count), None  # /random/hex: Vault also takes the format in the path
        if count is not None and int(count) > 10**7:
            raise HTTPError(400, "bytes too large")
        return ctx.reply(await self._call(ctx, random_bytes, body, None if count is None else int(count), fmt))

    async def hash(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("update")
        body = await read_json(request)
        return ctx.reply(await self._call(ctx, hash_input, body, request.path_params.get("algorithm")))


def _batch_status(body: dict[str, Any], result: BatchResult) -> int:
    """Vault: 400 when any item failed; ``partial_failure_response_code`` if some succeeded."""
    if not result.batched or not result.failed:
        return 200
    code = body.get("partial_failure_response_code")
    if isinstance(code, str) and is_decimal(code):
        code = int(code)
    if result.failed < len(result.items) and isinstance(code, int) and not isinstance(code, bool) \
            and 1 <= code <= 599:
        return code
    return 400
