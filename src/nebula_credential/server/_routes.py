"""Starlette route tables compiled once, so a ``/v1/`` request is matched without the Router's layers.

Starlette routes a request through one ``Router.app`` per level, one
``Mount.handle`` and one ``matches()`` child scope per route tried, and the
``request_response`` wrapper that builds the Request and a send wrapper:
about a fifth of a KV read's CPU before (docs/benchmarks.md, issue 27).
:func:`compile_routes` keeps, per route, what ``matches()`` reads (the
route's own compiled regex, convertors and methods) and :func:`walk`
repeats Starlette's rules on them: the routes in order, the first full
match wins (a Mount is entered and never left again), a route whose path
matches but not its method is only a "partial" one.

Only one outcome is answered here: a full match on a plain ``Route`` whose
app is Starlette's ``request_response`` of an async endpoint (the endpoint is
then called directly).  Everything else -- a partial match (405), no match
(404, or Starlette's trailing-slash redirect), a route with middleware, a
Mount of another app -- is :data:`STARLETTE`: the caller hands the request to
Starlette's own Router, which answers exactly as it always did.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Leaf:
    """A Route answered here: its endpoint is called with the Request, its Response sent."""

    route: Route
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    methods: frozenset[str] | None
    endpoint: Endpoint
    prefix: str  # the pattern's literal start: a path without it cannot match (checked before the regex)


@dataclass(frozen=True, slots=True)
class Branch:
    """A Mount of a Router: a full match enters its routes (compiled in turn)."""

    mount: Mount
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    routes: tuple[Entry, ...]
    prefix: str


@dataclass(frozen=True, slots=True)
class Handoff:
    """A Mount of the app ``app`` (the mount dispatcher): the caller decides what is under it."""

    mount: Mount
    regex: re.Pattern[str]
    convertors: dict[str, Any]
    app: Any
    prefix: str


@dataclass(frozen=True, slots=True)
class Opaque:
    """Any other route: when its own ``matches()`` says anything but NONE, Starlette routes the request.

    ``regex`` is a plain Route's or Mount's path pattern (their ``matches()`` is NONE without a match
    of it, so most requests are told apart without a copy of the scope); None for any other kind.
    """

    route: BaseRoute
    regex: re.Pattern[str] | None


Entry = Leaf | Branch | Handoff | Opaque


@dataclass(slots=True)
class Found:
    """A full match on a Leaf and the scope keys Starlette's routing would have set on the way
    (``app_root_path`` None: no Mount passed, the root paths are the scope's own)."""

    leaf: Leaf
    path_params: dict[str, Any]
    root_path: str
    app_root_path: str | None


@dataclass(slots=True)
class Reached:
    """A full match on a Handoff: the caller continues below it with :func:`walk`."""

    handoff: Handoff
    path_params: dict[str, Any]
    root_path: str
    app_root_path: str


#: The request is left to Starlette's Router (a partial match, no match, or a route answered there).
STARLETTE = None


def _plain(route: Route) -> bool:
    """``route.app`` is Starlette's ``request_response(endpoint)`` for an async function: no route
    middleware, no body limit of its own, nothing between the Route and the endpoint (an async
    callable object or a sync function is left to Starlette)."""
    app_name = getattr(route.app, "__qualname__", "")
    plain = type(route) is Route and app_name == "request_response.<locals>.app"
    return plain and inspect.iscoroutinefunction(route.endpoint)


def _literal(path: str) -> str:
    """The start of a route's path before its first parameter (Starlette compiles it into the
    regex as an escaped literal right after ``^``)."""
    return path.split("{", 1)[0]


def compile_routes(routes: list[BaseRoute], handoff: Callable[[Any], bool] = lambda app: False) -> tuple[Entry, ...]:
    """``routes`` as :func:`walk` reads them; a Mount whose app ``handoff`` accepts becomes a Handoff."""
    out: list[Entry] = []
    for route in routes:
        if isinstance(route, Route) and _plain(route):
            methods = frozenset(route.methods) if route.methods else None
            out.append(Leaf(route, route.path_regex, route.param_convertors, methods, route.endpoint,
                            _literal(route.path)))
        elif type(route) is Mount and handoff(route.app):
            out.append(Handoff(route, route.path_regex, route.param_convertors, route.app, _literal(route.path + "/")))
        elif type(route) is Mount and type(route.app) is Router:
            out.append(Branch(route, route.path_regex, route.param_convertors,
                              compile_routes(route.routes, handoff), _literal(route.path + "/")))
        else:
            plain = type(route) in (Route, Mount)
            out.append(Opaque(route, route.path_regex if plain else None))  # type: ignore[attr-defined]
    return tuple(out)


def route_path(path: str, root_path: str) -> str:
    """Starlette's ``get_route_path``: the path below ``root_path``."""
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path):] if path[len(root_path)] == "/" else path


def walk(entries: tuple[Entry, ...], scope: Mapping[str, Any], path_params: dict[str, Any], root_path: str,
         app_root_path: str | None) -> Found | Reached | None:
    """Where Starlette's Router would send the request ``scope`` (its ``path`` and ``method``),
    starting at ``entries`` with the given path parameters and root path; :data:`STARLETTE`
    (None) for every outcome not answered here."""
    path: str = scope["path"]
    method: str = scope["method"]
    while True:
        here = route_path(path, root_path)
        for entry in entries:
            if isinstance(entry, Opaque):
                if entry.regex is not None and entry.regex.match(here) is None:
                    continue
                if entry.route.matches({**scope, "path_params": path_params, "root_path": root_path})[0].value:
                    return STARLETTE
                continue
            if not here.startswith(entry.prefix):
                continue
            match = entry.regex.match(here)
            if match is None:
                continue
            if type(entry) is Leaf:
                if entry.methods is not None and method not in entry.methods:
                    continue  # a partial match: Starlette looks further for a full one, else answers 405
                if entry.convertors:
                    params = {key: entry.convertors[key].convert(value) for key, value in match.groupdict().items()}
                    return Found(entry, {**path_params, **params}, root_path, app_root_path)
                return Found(entry, dict(path_params), root_path, app_root_path)
            if len(entry.convertors) == 1:  # a Mount without parameters of its own: only its "path"
                remaining = "/" + entry.convertors["path"].convert(match["path"])
            else:
                params = {key: entry.convertors[key].convert(value) for key, value in match.groupdict().items()}
                remaining = "/" + params.pop("path")
                path_params = {**path_params, **params}
            app_root_path = root_path if app_root_path is None else app_root_path
            root_path = root_path + here[: -len(remaining)]
            if type(entry) is Handoff:
                return Reached(entry, path_params, root_path, app_root_path)
            assert type(entry) is Branch
            entries = entry.routes
            break
        else:
            return STARLETTE  # no full match at this level: Starlette's 405, redirect or 404


__all__ = ["STARLETTE", "Found", "Handoff", "Leaf", "Reached", "compile_routes", "route_path", "walk"]
