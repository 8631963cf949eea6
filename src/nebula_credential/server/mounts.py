"""Mounts at runtime: the engine registry, the shared mount table and ``sys/mounts``, ``sys/auth``.

Vault routes a request by the longest mount path that prefixes it.  Here:

- **Registry.**  An engine type (``kv``, ``transit``; auth methods such as
  ``token``, and later AppRole, userpass, JWT) is an :class:`EngineType`
  whose ``factory(entry)`` returns the Starlette routes of one mount
  (``entry.path``, ``entry.options``, ``entry.config``, its keyring).
  :func:`register_secret_engine` and :func:`register_auth_method` add types;
  ``sys/mounts`` and ``sys/auth`` enable them by name.
- **Table.**  Mounts live in the store (``server_mounts``), so every
  ``serve`` process on it routes the same ones.  Each process keeps an
  in-memory :class:`MountTable` and re-reads it when the table's generation
  (one ``meta`` row, bumped by every change) moved: checked at most once per
  :data:`REFRESH_SECONDS`, and at once (rate-limited) on a miss, so a mount
  enabled on another process is routed here within that bound.  The
  ``[server] kv_mounts`` and ``transit_mounts`` of the config file are merged
  in read-only: they cannot be disabled or tuned over HTTP.
- **Dispatch.**  :meth:`MountTable.resolve` finds the longest mount prefix
  by a dictionary lookup per path segment; the mount's router is built (and
  compiled for the /v1 request path, :mod:`._routes`) once per mount.
  :class:`MountDispatcher`, one ASGI app under ``/v1``, hands a request the
  request path leaves to Starlette to that router.
- **Disable** removes the mount's data, as Vault does: a KV mount's
  credentials are deleted (its keyring is the mount's own); a Transit
  mount's keys are deleted through :meth:`Transit.delete_key`, whose guard
  refuses a key that still protects stored credentials -- then the mount
  stays and the 400 names the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route

from ..config import ServerConfig
from ..exceptions import PolicyViolationError
from ..mounttables import MOUNT_TABLE, MountRow, MountTables, mount_mac_fields
from ..names import NAME_RE, NAME_RULE, printable
from ..rowmac import RowMac
from ..transit import KeyConfigChange, Transit
from ._backend import Backend
from ._request import VPATH, Ctx, duration_field, endpoint, read_json
from ._routes import Entry, compile_routes
from .errors import HTTPError, bad_request
from .kv import MOUNT_KV_FIELDS, KVEngine, apply_mount_options
from .kv1 import KV1Engine
from .ratelimit import note_change
from .transit import TransitEngine

logger = logging.getLogger("nebula_credential.server")
#: How long a process routes from its in-memory table before checking the store's generation.
REFRESH_SECONDS = 1.0
#: The least time between two store checks caused by requests to no known mount.
MISS_REFRESH_SECONDS = 0.1
#: Vault's system default lease TTL (768h), which ``tune`` reports for a mount that sets none.
SYSTEM_TTL = 768 * 3600
#: What the running engine reports as its version in Vault's listings.
RUNNING_VERSION = "builtin"
#: Mount paths Vault keeps for itself (and ``auth`` is the auth methods' namespace).
RESERVED = frozenset({"sys", "auth", "cubbyhole", "identity"})
MAX_DEPTH = 4
NO_CONTENT = 204
#: Set by the /v1 request path: the (entry, router, compiled routes) it resolved the request's mount to.
RESOLVED = "nc.mount"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# ---- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MountEntry:
    """One mount as routed: a stored row, or one the config file or the server builds in."""

    kind: str  # "secret" or "auth"
    path: str  # without a trailing slash; an auth method's without "auth/"
    type: str
    description: str = ""
    accessor: str = ""
    uuid: str = ""
    options: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    keyring: str = ""
    #: set in the config file or built into the server: neither disabled nor tuned over HTTP
    builtin: str = ""

    @property
    def route(self) -> str:
        """The path below /v1/ that this mount serves."""
        return f"auth/{self.path}" if self.kind == "auth" else self.path

    def listing(self) -> dict[str, Any]:
        """Vault's shape of a mount in ``sys/mounts``, ``sys/auth`` and ``sys/internal/ui/mounts``."""
        config: dict[str, Any] = {"default_lease_ttl": int(self.config.get("default_lease_ttl", 0)),
                  "force_no_cache": False,
                  "max_lease_ttl": int(self.config.get("max_lease_ttl", 0))}
        if self.type == "system":
            config["passthrough_request_headers"] = ["Accept"]
        if self.type == "token":
            config["token_type"] = "default-service"  # noqa: S105 (a token type's name, no secret)
        body: dict[str, Any] = {
            "accessor": self.accessor,
            "config": config,
            "description": self.description,
            "external_entropy_access": False,
            "local": False,
            "options": self.options,
            "plugin_version": "",
            "running_plugin_version": RUNNING_VERSION,
            "running_sha256": "",
            "seal_wrap": self.type == "system",
            "type": self.type,
            "uuid": self.uuid,
        }
        if self.kind == "secret" and self.type != "system":
            body["deprecation_status"] = "supported"
        return body


Factory = Callable[[MountEntry], list[BaseRoute]]
Purge = Callable[[Backend, MountEntry], None]


@dataclass(frozen=True)
class EngineType:
    """A type ``sys/mounts`` or ``sys/auth`` can enable.

    ``factory`` builds one mount's routes; ``options`` checks and normalises
    the ``options`` object given at enable (and tune) time (raise
    :class:`HTTPError` to refuse); ``own_keyring`` gives each mount a fresh
    keyring of its own (``<path>/<accessor>``); ``purge`` removes a mount's
    data when it is disabled (it runs in a worker thread).
    """

    factory: Factory | None
    options: Callable[[dict[str, Any] | None, MountEntry | None], dict[str, Any] | None] = lambda o, _: o
    own_keyring: bool = False
    purge: Purge | None = None
    description: str = ""


SECRET_ENGINES: dict[str, EngineType] = {}
AUTH_METHODS: dict[str, EngineType] = {}
#: Type names that enable another type with preset options (Vault's ``kv-v2``).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"kv-v2": ("kv", {"version": "2"})}


def register_secret_engine(name: str, engine: EngineType) -> None:
    """Make ``name`` a type ``POST sys/mounts/:path`` accepts."""
    SECRET_ENGINES[name] = engine


def register_auth_method(name: str, engine: EngineType) -> None:
    """Make ``name`` a type ``POST sys/auth/:path`` accepts (mounted at ``auth/:path``)."""
    AUTH_METHODS[name] = engine


def _kv_options(options: dict[str, Any] | None, current: MountEntry | None) -> dict[str, Any] | None:
    opts = {k: str(v) for k, v in (options or {}).items()}
    version = opts.get("version")
    old = (current.options or {}).get("version", "1") if current is not None else None
    if version in (None, ""):
        if current is None:  # v1, and the options as sent (Vault keeps null as null, absent as {})
            opts.pop("version", None)
            return None if options is None else opts
        version = old
    if version not in ("1", "2"):
        raise bad_request(f"kv version must be 1 or 2, not {version!r}")
    if old == "2" and version == "1":
        raise bad_request("cannot downgrade mount from version 2")
    if old == "1" and version == "2":
        raise bad_request("upgrading a kv version 1 mount to version 2 is not supported here: enable a new "
                          "version 2 mount and copy the secrets")
    if current is not None:
        opts = {**(current.options or {}), **opts}
    opts["version"] = version
    return opts


def _kv_routes(entry: MountEntry) -> list[BaseRoute]:
    if (entry.options or {}).get("version") == "2":
        return KVEngine(entry.path, entry.keyring).routes()
    return KV1Engine(entry.path, entry.keyring, default_ttl=int(entry.config.get("default_lease_ttl") or 0)).routes()


def _purge_keyring(backend: Backend, entry: MountEntry) -> None:
    if entry.keyring:
        backend.keyring(entry.keyring).purge_credentials(reason=f"mount {entry.path}/ disabled")


def _purge_transit(backend: Backend, entry: MountEntry) -> None:
    transit = Transit(backend.vault, entry.path)
    for name in transit.key_names():
        try:
            transit.configure(name, KeyConfigChange(deletion_allowed=True))
            transit.delete_key(name)
        except PolicyViolationError as exc:
            raise bad_request(f"cannot disable {entry.path}/: {exc}; delete or re-encrypt those credentials "
                              "first") from None


def _transit_routes(entry: MountEntry) -> list[BaseRoute]:
    return TransitEngine(entry.path).routes()


register_secret_engine("kv", EngineType(_kv_routes, _kv_options, own_keyring=True, purge=_purge_keyring))
register_secret_engine("transit", EngineType(_transit_routes, purge=_purge_transit))
#: The token method is built in at auth/token/ (its routes are the app's own): never enabled or disabled here.
register_auth_method("token", EngineType(None, description="token based credentials"))


# ---- the table ----------------------------------------------------------------------------------
def _stable(kind: str, path: str, type_: str) -> tuple[str, str]:
    """Accessor and uuid of a mount that is not stored (config file, built in): the same on every process."""
    digest = hashlib.sha256(f"{kind}\0{path}\0{type_}".encode()).hexdigest()
    prefix = "auth_token" if type_ == "token" else "system" if type_ == "system" else type_
    return f"{prefix}_{digest[:8]}", str(uuid.UUID(digest[:32]))


def builtin_mounts(server: ServerConfig) -> list[MountEntry]:
    """The mounts no one enables: ``sys/``, ``auth/token/`` and the config file's KV and Transit mounts."""
    out = []
    for kind, path, type_, description, origin in (
        ("secret", "sys", "system", "system endpoints used for control, policy and debugging", "built in"),
        ("auth", "token", "token", "token based credentials", "built in"),
    ):
        accessor, uid = _stable(kind, path, type_)
        out.append(MountEntry(kind, path, type_, description, accessor, uid, builtin=origin))
    for path, keyring in server.kv_mounts.items():
        accessor, uid = _stable("secret", path, "kv")
        out.append(MountEntry("secret", path, "kv", f"key/value secret storage (keyring {keyring})", accessor,
                              uid, {"version": "2"}, keyring=keyring,
                              builtin="set in the configuration file ([server] kv_mounts)"))
    for path in server.transit_mounts:
        accessor, uid = _stable("secret", path, "transit")
        out.append(MountEntry("secret", path, "transit", "", accessor, uid,
                              builtin="set in the configuration file ([server] transit_mounts)"))
    return out


def _bound(row: MountRow) -> bool:
    """A stored mount's keyring is its own, ``<route>/<accessor>``, or none: a row that names any other
    keyring (written into the database by hand) is not routed, so a mount can never reach the data
    of a configured keyring or of another mount."""
    route = f"auth/{row.path}" if row.kind == "auth" else row.path
    if row.keyring in ("", f"{route}/{row.accessor}"):
        return True
    logger.warning("mount %s/ is not routed: its keyring is not its own", printable(route))
    return False


def _entry(row: MountRow) -> MountEntry:
    return MountEntry(row.kind, row.path, row.type, row.description, row.accessor, row.uuid,
                      None if row.options is None else dict(row.options), dict(row.config), row.keyring)


def _row(entry: MountEntry, created_at: float) -> MountRow:
    return MountRow(path=entry.path, kind=entry.kind, type=entry.type, description=entry.description,
                    accessor=entry.accessor, uuid=entry.uuid,
                    options=None if entry.options is None else dict(entry.options),
                    config=dict(entry.config), keyring=entry.keyring, created_at=created_at)


def _router_key(entry: MountEntry) -> tuple[str, str, str]:
    """A router is rebuilt when its mount is re-enabled (new uuid) or tuned (options, config)."""
    return entry.route, entry.uuid, json.dumps([entry.options, entry.config], sort_keys=True)


class MountTable:
    """The mounts this process routes: the built-in ones and a copy of the store's, refreshed by generation."""

    def __init__(self, builtin: list[MountEntry]) -> None:
        self.builtin = builtin
        self.generation = -1
        self.checked_at = 0.0
        #: moves whenever what :meth:`find` or :meth:`routed` answer could change (a request path's
        #: cached route is checked against it)
        self.version = 0
        self._by_route: dict[str, MountEntry] = {}
        self._routers: dict[tuple[str, str, str], tuple[Mount, tuple[Entry, ...]]] = {}
        self._last: dict[str, tuple[MountEntry, tuple[Mount, tuple[Entry, ...]]]] = {}
        self._lock = asyncio.Lock()
        self._install([])

    def _install(self, stored: list[MountEntry]) -> None:
        by_route = {e.route: e for e in stored}
        by_route.update({e.route: e for e in self.builtin})  # the config file wins over a stored twin
        self._by_route = by_route
        live = {_router_key(e) for e in by_route.values()}
        self._routers = {k: v for k, v in self._routers.items() if k in live}
        self._last = {r: v for r, v in self._last.items() if by_route.get(r) is v[0]}
        self.version += 1

    def load(self, rows: list[MountRow]) -> None:
        """Route exactly ``rows`` (verified stored mounts) beside the built-in ones."""
        self._install([_entry(r) for r in rows if _bound(r)])

    def entries(self, kind: str) -> list[MountEntry]:
        return sorted((e for e in self._by_route.values() if e.kind == kind), key=lambda e: e.path)

    def get(self, kind: str, path: str) -> MountEntry | None:
        found = self._by_route.get(f"auth/{path}" if kind == "auth" else path)
        return found if found is not None and found.kind == kind else None

    def find(self, vpath: str) -> MountEntry | None:
        """The mount with the longest path that prefixes ``vpath`` (segment-wise), if any."""
        parts = vpath.split("/")
        for depth in range(min(len(parts), MAX_DEPTH + 1), 0, -1):
            found = self._by_route.get("/".join(parts[:depth]))
            if found is not None:
                return found
        return None

    def label(self, path: str) -> str | None:
        """The metrics label of a request path: ``/v1/<mount>`` of the mount serving it (None: no mount)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            return None
        found = self.find("/".join(parts[1:]))
        return None if found is None else f"/v1/{found.route}"

    def overlapping(self, route: str) -> MountEntry | None:
        """A mount that ``route`` would be inside of, or that would be inside ``route``."""
        found = self.find(route)
        if found is not None:
            return found
        return next((e for r, e in self._by_route.items() if r.startswith(route + "/")), None)

    def router(self, entry: MountEntry) -> Mount | None:
        found = self.routed(entry)
        return None if found is None else found[0]

    def routed(self, entry: MountEntry) -> tuple[Mount, tuple[Entry, ...]] | None:
        """The mount's router and its routes compiled for the /v1 request path (:mod:`._routes`),
        built once per mount (and again when it is re-enabled or tuned)."""
        last = self._last.get(entry.route)
        if last is not None and last[0] is entry:  # the same entry object: its key cannot have changed
            return last[1]
        key = _router_key(entry)  # a JSON dump of the mount's options: not once per request
        routed = self._routers.get(key)
        if routed is None:
            registry = AUTH_METHODS if entry.kind == "auth" else SECRET_ENGINES
            engine = registry.get(entry.type)
            if engine is None or engine.factory is None:
                return None
            router = Mount("/" + entry.route, routes=engine.factory(entry))
            routed = self._routers[key] = (router, compile_routes([router]))
        self._last[entry.route] = (entry, routed)
        return routed

    async def resolve(self, backend: Backend, vpath: str) -> tuple[MountEntry | None, Mount | None,
                                                                  tuple[Entry, ...]]:
        """The mount serving ``vpath`` (the table re-read first when due, and at once, rate-limited, on a
        miss), its router and compiled routes; (None, None, ()) for no routed mount."""
        await self.refresh(backend)
        entry = self.find(vpath)
        if entry is None:
            await self.refresh(backend, miss=True)
            entry = self.find(vpath)
        routed = self.routed(entry) if entry is not None else None
        return (entry, None, ()) if routed is None else (entry, *routed)

    async def refresh(self, backend: Backend, *, force: bool = False, miss: bool = False) -> None:
        """Re-read the store's table if its generation moved (checked at most once per interval)."""
        now = time.monotonic()
        wait = MISS_REFRESH_SECONDS if miss else REFRESH_SECONDS
        if not force and now - self.checked_at < wait:
            return
        async with self._lock:
            if not force and time.monotonic() - self.checked_at < wait:
                return
            repo = repository(backend)
            generation = await backend.run(repo.generation)
            if force or generation != self.generation:
                generation, rows = await backend.run(repo.snapshot)
                self.load(rows)
                self.generation = generation
                await backend.report_rejections()
            self.checked_at = time.monotonic()
        if force:  # a mount changed here: the serve's other workers re-read before their next request
            note_change()

    def stale(self) -> None:
        """Check the store's generation on the next request (another worker changed the table)."""
        self.checked_at = -math.inf


def repository(backend: Backend) -> MountRepository:
    """The mount repository over ``backend``'s store, MACs and rejection reports."""
    return MountRepository(backend.vault.mount_tables(), backend.access.tokens.rowmac,
                           on_reject=backend.access.rejections.note)


class MountRepository:
    """The mount table's reads and writes, over the narrow :class:`MountTables`.

    A mount decides where requests are routed and which keyring they reach, so every row carries
    a MAC (:mod:`~..rowmac`) over all its fields; a row that fails (inserted or edited by a
    database writer, or written before schema v10) is not routed and is reported through
    ``on_reject`` (audited as ``server.row_rejected.server_mounts``).
    """

    def __init__(self, tables: MountTables, rowmac: RowMac,
                 on_reject: Callable[[str, str, str], None] | None = None) -> None:
        self._tables = tables
        self.rowmac = rowmac
        self.on_reject = on_reject

    def _signed(self, row: MountRow) -> MountRow:
        return replace(row, mac=self.rowmac.mac(MOUNT_TABLE, (row.kind, row.path), mount_mac_fields(row)))

    def verified(self, row: MountRow) -> bool:
        """Whether a stored row's MAC holds (a failure is reported)."""
        if self.rowmac.verify(MOUNT_TABLE, (row.kind, row.path), mount_mac_fields(row), row.mac):
            return True
        if self.on_reject is not None:
            self.on_reject(MOUNT_TABLE, f"{row.kind} {row.path}", "MAC mismatch" if row.mac else "missing MAC")
        return False

    def generation(self) -> int:
        with self._tables.read() as tx:
            return tx.mount_generation()

    def snapshot(self) -> tuple[int, list[MountRow]]:
        """The generation and the mounts whose MAC holds (a refused row is not routed)."""
        with self._tables.read() as tx:
            generation, rows = tx.mount_generation(), tx.mount_list()
        return generation, [r for r in rows if self.verified(r)]

    def insert(self, row: MountRow) -> bool:
        """Store a new mount; False when its path is already taken (another process won)."""
        row = self._signed(row)

        def go(tx: Any) -> bool:
            if tx.mount_get(row.kind, row.path) is not None:
                return False
            tx.mount_insert(row)
            return True

        return self._tables.run(go)

    def update(self, row: MountRow) -> bool:
        """Tune a stored mount (description, options, config); False when it is absent or refused.

        The new MAC binds the stored row's identity (type, accessor, keyring, created_at), read and
        verified first: a row edited in between keeps those edited fields and fails its new MAC."""
        with self._tables.read() as tx:
            stored = tx.mount_get(row.kind, row.path)
        if stored is None or not self.verified(stored):
            return False
        changed = self._signed(replace(stored, description=row.description, options=row.options, config=row.config))
        return self._tables.run(lambda tx: tx.mount_update(changed))

    def delete(self, kind: str, path: str) -> bool:
        return self._tables.run(lambda tx: tx.mount_delete(kind, path))


def table_of(request: Request) -> MountTable:
    table: MountTable = request.app.state.mounts
    return table


# ---- dispatch -----------------------------------------------------------------------------------
class MountDispatcher:
    """The ASGI app under ``/v1`` for every mount outside ``sys/`` and ``auth/token/``.

    The /v1 request path (:mod:`.dispatch`) finds the mount first and leaves
    it in the scope (:data:`RESOLVED`) when Starlette routes the request after
    all, so both route to the same mount.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resolved = scope.get(RESOLVED)
        if resolved is None:
            app = scope["app"]
            resolved = await app.state.mounts.resolve(app.state.backend, str(scope.get(VPATH, "")))
        entry, router, _ = resolved
        if entry is None or router is None:
            raise HTTPException(404)
        if str(scope.get(VPATH, "")) == entry.route:  # the mount itself (LIST kv/): its router's "/" route
            scope["path"] = scope["path"] + "/"
        match, child = router.matches(scope)
        if match is Match.NONE:
            raise HTTPException(404)
        scope.update(child)
        await router.handle(scope, receive, send)


# ---- sys/mounts, sys/auth -----------------------------------------------------------------------
def _kind(request: Request) -> str:
    return "auth" if request.url.path.startswith("/v1/sys/auth") else "secret"


def _check_path(raw: str, kind: str, verb: str = "mount") -> str:
    path = raw.strip("/")
    parts = path.split("/")
    if not path or len(parts) > MAX_DEPTH or not all(NAME_RE.fullmatch(p) for p in parts):
        raise bad_request(f"mount path {raw[:80]!r} is not allowed: 1 to {MAX_DEPTH} segments of {NAME_RULE}")
    if kind == "secret" and parts[0] in RESERVED:
        raise bad_request(f'cannot {verb} "{parts[0]}/"')
    return path


def _listing(table: MountTable, kind: str) -> dict[str, Any]:
    return {f"{e.path}/": e.listing() for e in table.entries(kind)}


def _config_in(body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    config = dict(current)
    for name in ("default_lease_ttl", "max_lease_ttl"):
        if name in body:
            value = body[name]
            if value in ("", None):
                continue
            if value in (0, "0", "system"):
                config.pop(name, None)
                continue
            parsed = duration_field(body, name)
            config[name] = int(parsed.total_seconds()) if parsed is not None else 0
    default, maximum = config.get("default_lease_ttl", 0), config.get("max_lease_ttl", 0)
    if default and maximum and maximum < default:
        raise bad_request(f"backend max lease TTL of {maximum} would be less than backend default lease TTL "
                          f"of {default}")
    return config


async def list_mounts(request: Request, ctx: Ctx) -> Response:
    ctx.require("read")
    table = table_of(request)
    await table.refresh(ctx.backend, force=True)
    listing = _listing(table, _kind(request))
    return ctx.reply(listing, **listing)


async def mount(request: Request, ctx: Ctx) -> Response:
    kind = _kind(request)
    table = table_of(request)
    verb = {"DELETE": "unmount", "GET": "read"}.get(request.method, "mount")
    path = _check_path(str(request.path_params["path"]), kind, verb)
    await table.refresh(ctx.backend, force=True)
    if request.method == "GET":
        ctx.require("read")
        found = table.get(kind, path)
        if found is None:
            raise bad_request(f"No {'auth' if kind == 'auth' else 'secret engine'} mount at {path}/")
        return ctx.reply(found.listing(), **found.listing())
    if request.method == "DELETE":
        return await _disable(ctx, table, kind, path)
    return await _enable(request, ctx, table, kind, path)


def draft_mount(kind: str, path: str, body: dict[str, Any], table: MountTable) -> MountEntry:
    """The mount ``POST sys/mounts/:path`` or ``sys/auth/:path`` would add, checked against
    ``table``: a registered type, its options and config, a free path.  Raises a 400 otherwise."""
    type_ = body.get("type")
    if not isinstance(type_, str) or not type_:
        raise bad_request("backend type must be specified as a string")
    options = body.get("options", {})  # absent: {} -- null stays null, as Vault keeps them
    if options is not None and not isinstance(options, dict):
        raise bad_request("options must be an object")
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise bad_request("config must be an object")
    if type_ in ALIASES:
        type_, preset = ALIASES[type_]
        options = {**(options or {}), **preset}
    registry = AUTH_METHODS if kind == "auth" else SECRET_ENGINES
    engine = registry.get(type_)
    if engine is None or engine.factory is None:
        known = ", ".join(sorted(n for n, e in registry.items() if e.factory is not None))
        raise bad_request(f"plugin not found in the catalog: {type_} (this server has: {known})")
    route = f"auth/{path}" if kind == "auth" else path
    taken = table.overlapping(route)
    if taken is not None:
        raise bad_request(f"path is already in use at {taken.route}/")
    accessor = f"{'auth_' if kind == 'auth' else ''}{type_}_{uuid.uuid4().hex[:8]}"
    description = body.get("description") or engine.description
    if not isinstance(description, str):
        raise bad_request("description must be a string")
    draft = MountEntry(kind, path, type_, description, accessor, str(uuid.uuid4()),
                       config=_config_in(config, {}))
    return replace(draft, options=engine.options(options, None),
                   keyring=f"{route}/{accessor}" if engine.own_keyring else "")


def insert_mount(repo: MountRepository, draft: MountEntry, now: float) -> MountEntry:
    """Store a drafted mount; a 400 when another process took its path first."""
    if not repo.insert(_row(draft, now)):
        raise bad_request(f"path is already in use at {draft.route}/")
    return draft


def enable_mount(repo: MountRepository, table: MountTable, kind: str, path: str, body: dict[str, Any],
                 now: float) -> MountEntry:
    """Enable a mount that needs nothing prepared first (every auth method): the operation
    ``POST sys/auth/:path`` and ``nebula-credential auth enable`` both run."""
    draft = draft_mount(kind, _check_path(path, kind), body, table)
    if draft.keyring:
        raise bad_request(f"{draft.type} mounts are enabled through the HTTP API (sys/mounts)")
    return insert_mount(repo, draft, now)


def disable_mount(repo: MountRepository, table: MountTable, kind: str, path: str,
                  purge: Callable[[MountEntry], None] | None) -> MountEntry | None:
    """Disable a mount and remove its data (``purge``, which may refuse with a 400: then the
    mount stays); None when there was none (Vault: disabling nothing succeeds).  The operation
    ``DELETE sys/mounts/:path``, ``sys/auth/:path`` and ``nebula-credential auth disable`` run."""
    found = table.get(kind, _check_path(path, kind, "unmount"))
    if found is None:
        return None
    if found.type == "token":
        raise bad_request("token credential backend cannot be disabled")
    if found.builtin:
        verb = "unmount" if kind == "secret" else "disable"
        raise bad_request(f'cannot {verb} "{found.route}/": {found.builtin}')
    if purge is not None:
        purge(found)
    repo.delete(kind, found.path)
    if purge is not None:  # a write routed by a process that had not yet seen the change
        purge(found)
    return found


async def _enable(request: Request, ctx: Ctx, table: MountTable, kind: str, path: str) -> Response:
    if kind == "auth":
        ctx.require("sudo")
    ctx.require("update")
    body = await read_json(request)
    repo = repository(ctx.backend)
    now = ctx.backend.vault.clock().timestamp()
    try:
        if kind == "auth":
            await ctx.backend.write(enable_mount, repo, table, kind, path, body, now)
        else:
            draft = draft_mount(kind, path, body, table)
            if draft.keyring:  # the mount's own keyring gets its first key version before anything routes to it
                await ctx.backend.write(ctx.backend.keyring(draft.keyring).keys.initialize)
            kv_fields = _kv_config_fields(draft, body)
            if kv_fields:
                await apply_mount_options(ctx, draft.keyring, kv_fields)
            await ctx.backend.write(insert_mount, repo, draft, now)
    except HTTPError:
        raise
    except Exception:  # PostgreSQL: another process inserted the same path between our check and insert
        await table.refresh(ctx.backend, force=True)
        if table.get(kind, path) is None:
            raise
        raise bad_request(f"path is already in use at {'auth/' if kind == 'auth' else ''}{path}/") from None
    await table.refresh(ctx.backend, force=True)
    return Response(status_code=NO_CONTENT)


async def _disable(ctx: Ctx, table: MountTable, kind: str, path: str) -> Response:
    if kind == "auth":
        ctx.require("sudo")
    ctx.require("delete")
    found = table.get(kind, path)
    registry = AUTH_METHODS if kind == "auth" else SECRET_ENGINES
    engine = registry.get(found.type) if found is not None else None
    backend = ctx.backend
    purge = engine.purge if engine is not None else None
    await backend.write(disable_mount, repository(backend), table, kind, path,
                        None if purge is None else lambda entry: purge(backend, entry))
    await table.refresh(ctx.backend, force=True)
    return Response(status_code=NO_CONTENT)


def _kv_config_fields(entry: MountEntry, body: dict[str, Any]) -> dict[str, Any]:
    """The KV config fields (``max_versions``...) a v2 mount's enable/tune body gives in ``options`` or ``config``.

    They stay in the mount's ``options`` too, as Vault shows them there; the engine's config
    (``<mount>/config``) is what the engine obeys.
    """
    if entry.type != "kv" or (entry.options or {}).get("version") != "2":
        return {}
    fields: dict[str, Any] = {}
    for source in (body, body.get("config"), body.get("options")):
        if isinstance(source, dict):
            fields.update({k: source[k] for k in MOUNT_KV_FIELDS if source.get(k) not in (None, "")})
    return fields


def _tune_json(entry: MountEntry) -> dict[str, Any]:
    return {
        "default_lease_ttl": int(entry.config.get("default_lease_ttl") or SYSTEM_TTL),
        "description": entry.description,
        "force_no_cache": False,
        "max_lease_ttl": int(entry.config.get("max_lease_ttl") or SYSTEM_TTL),
        **({"options": entry.options} if entry.options else {}),
    }


async def tune(request: Request, ctx: Ctx) -> Response:
    kind = _kind(request)
    table = table_of(request)
    raw = str(request.path_params["path"])
    if kind == "secret" and raw.startswith("auth/"):  # as Vault: `bao auth tune` sends sys/mounts/auth/:path/tune
        kind, raw = "auth", raw.removeprefix("auth/")
    path = _check_path(raw, kind)
    await table.refresh(ctx.backend, force=True)
    found = table.get(kind, path)
    if request.method == "GET":
        ctx.require("read")
        if found is None:
            raise bad_request(f'cannot fetch sysview for path "{path}/"')
        data = _tune_json(found)
        return ctx.reply(data, **data)
    ctx.require("update")
    if kind == "auth":
        ctx.require("sudo")
    if found is None:
        raise bad_request(f'tune of path "{path}/" failed: no mount entry found')
    if found.builtin:
        raise bad_request(f'cannot tune "{found.route}/": {found.builtin}')
    body = await read_json(request)
    description = body.get("description", found.description)
    if not isinstance(description, str):
        raise bad_request("description must be a string")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("options must be an object")
    registry = AUTH_METHODS if kind == "auth" else SECRET_ENGINES
    engine = registry.get(found.type)
    new_options = found.options
    if options and engine is not None:
        new_options = engine.options(options, found)
    elif options:
        new_options = {**(found.options or {}), **{k: str(v) for k, v in options.items()}}
    changed = replace(found, description=description, options=new_options, config=_config_in(body, found.config))
    kv_fields = _kv_config_fields(changed, body)
    if kv_fields:
        await apply_mount_options(ctx, changed.keyring, kv_fields)
    repo = repository(ctx.backend)
    if not await ctx.backend.write(repo.update, _row(changed, 0.0)):
        raise bad_request(f'tune of path "{path}/" failed: no mount entry found')
    await table.refresh(ctx.backend, force=True)
    return Response(status_code=NO_CONTENT)


# ---- sys/internal/ui/mounts ---------------------------------------------------------------------
async def ui_mounts(request: Request, ctx: Ctx) -> Response:
    """What the ``vault``/``bao`` CLI asks before a ``kv`` command: which engine serves a path."""
    ctx.operation = "read"
    table = table_of(request)
    await table.refresh(ctx.backend)
    raw = str(request.path_params.get("path", ""))
    if not raw:  # as Vault: only the mounts the token has some capability under
        return ctx.reply({kind: {f"{e.path}/": e.listing() for e in table.entries(kind)
                                 if ctx.acl.grants_under(e.route + "/")} for kind in ("auth", "secret")})
    found = table.find(raw.strip("/"))
    if found is None or found.kind != "secret" or not ctx.acl.grants_under(found.route + "/"):
        raise HTTPError(403, "preflight capability check returned 403, please ensure client's policies "
                        "grant access to path \"" + raw + "/\"")
    return ctx.reply({**found.listing(), "path": f"{found.path}/"})


def sys_routes() -> list[BaseRoute]:
    """The ``/v1/sys`` routes of this module (mounted before the rest of ``sys/``)."""
    return [
        Route("/mounts", endpoint(list_mounts), methods=["GET"]),
        Route("/mounts/{path:path}/tune", endpoint(tune), methods=["GET", "POST", "PUT"]),
        Route("/mounts/{path:path}", endpoint(mount), methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/auth", endpoint(list_mounts), methods=["GET"]),
        Route("/auth/{path:path}/tune", endpoint(tune), methods=["GET", "POST", "PUT"]),
        Route("/auth/{path:path}", endpoint(mount), methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/internal/ui/mounts", endpoint(ui_mounts), methods=["GET"]),
        Route("/internal/ui/mounts/{path:path}", endpoint(ui_mounts), methods=["GET"]),
    ]


__all__ = [
    "AUTH_METHODS",
    "SECRET_ENGINES",
    "EngineType",
    "MountDispatcher",
    "MountEntry",
    "MountTable",
    "builtin_mounts",
    "disable_mount",
    "draft_mount",
    "enable_mount",
    "insert_mount",
    "register_auth_method",
    "register_secret_engine",
    "sys_routes",
]
