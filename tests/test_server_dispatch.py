"""The /v1 request path answers what Starlette's Router answered, and answers the hot routes itself.

:class:`~nebula_credential.server.dispatch.VaultRequestPath` finds a /v1
route in tables compiled from the same Route objects and calls its endpoint
directly; what those tables do not answer goes on through Starlette.  Every
request below is sent twice to one app, once as served and once with the
compiled tables turned off (everything through Starlette's Router, the code
before): status, headers that matter, body and the audit event must be the
same, for the routes answered directly and for the boundary cases (405
partial matches, 404 outside any mount, Starlette's trailing-slash
redirect, the mount itself, LIST by query).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.server import dispatch
from nebula_credential.server._routes import Leaf, compile_routes, walk
from nebula_credential.server.app import create_app
from nebula_credential.server.dispatch import VaultRequestPath


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Routing does not depend on the store (SQLite only)."""
    return sqlite_url


@pytest.fixture
def served(vault: nc.Vault) -> Iterator[tuple[Any, TestClient, dict[str, str]]]:
    app = create_app(vault)
    token, _ = app.state.backend.tokens.create(["root"])
    h = {"X-Vault-Token": token}
    with TestClient(app, follow_redirects=False) as client:
        assert client.post("/v1/sys/mounts/tr", json={"type": "transit"}, headers=h).status_code == 204, "mount"
        assert client.post("/v1/tr/keys/k", json={}, headers=h).status_code in (200, 204)
        assert client.post("/v1/secret/data/a/b", json={"data": {"v": 1}}, headers=h).status_code == 200
        assert client.post("/v1/cubbyhole/c", json={"v": 1}, headers=h).status_code == 204
        yield app, client, h


def _events(vault: nc.Vault) -> list[tuple[str, dict[str, Any]]]:
    with vault.store.read() as tx:
        rows = tx.audit_rows()
    return [(r.action, json.loads(r.details)) for r in rows if r.action.startswith("server.")]


def _comparable(response: Any) -> tuple[int, str | None, str | None, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body.pop("request_id", None)
    return response.status_code, response.headers.get("location"), response.headers.get("allow"), body


#: (method, path, token?) requests whose answer does not change when asked twice.
SAME: list[tuple[str, str, bool]] = [
    ("GET", "/v1/secret/data/a/b", True),
    ("GET", "/v1/secret/metadata/a/b", True),
    ("LIST", "/v1/secret/metadata/a", True),
    ("GET", "/v1/secret/metadata/a?list=true", True),
    ("GET", "/v1/secret/metadata?list=true", True),
    ("GET", "/v1/secret?list=true", True),
    ("GET", "/v1/secret", True),  # the mount itself
    ("GET", "/v1/secret/data", True),  # only the trailing-slash form would match: Starlette's redirect
    ("GET", "/v1/secret/config", True),
    ("PATCH", "/v1/secret/config", True),  # a partial match: 405
    ("GET", "/v1//secret/%64ata/a/b/", True),  # normalised before routing
    ("GET", "/v1/secret/bogus/x", True),
    ("GET", "/v1/no/such/engine", True),
    ("GET", "/v1/sys", True),
    ("GET", "/v1/auth/token", True),
    ("GET", "/v1", True),
    ("GET", "/v1/", True),
    ("GET", "/v1/sys/health", False),
    ("DELETE", "/v1/sys/health", False),
    ("GET", "/v1/sys/mounts", True),
    ("POST", "/v1/sys/mounts", True),
    ("GET", "/v1/sys/mounts/secret", True),
    ("GET", "/v1/sys/mounts/secret/tune", True),
    ("GET", "/v1/sys/policies/acl/default", True),
    ("GET", "/v1/sys/policies/acl", True),
    ("GET", "/v1/sys/policies/acl?list=true", True),
    ("GET", "/v1/sys/internal/ui/mounts/secret/a", True),
    ("GET", "/v1/auth/token/lookup-self", True),
    ("GET", "/v1/cubbyhole/c", True),
    ("GET", "/v1/cubbyhole", True),
    ("GET", "/v1/cubbyhole?list=true", True),
    ("GET", "/v1/tr/keys/k", True),
    ("GET", "/v1/tr/keys?list=true", True),
    ("PUT", "/v1/tr/keys", True),
    ("GET", "/v1/secret/data/a/b", False),  # denied
    ("GET", "/v1/no/such/engine", False),
]


@pytest.mark.parametrize(("method", "path", "with_token"), SAME)
def test_the_compiled_tables_answer_as_starlette_does(vault: nc.Vault, served: tuple[Any, TestClient,
                                                      dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                                                      method: str, path: str, with_token: bool) -> None:
    _, client, h = served
    headers = h if with_token else {}
    before = len(_events(vault))
    fast = client.request(method, path, headers=headers)
    between = len(_events(vault))
    again = client.request(method, path, headers=headers)  # routed from the remembered route
    third = len(_events(vault))
    monkeypatch.setattr(VaultRequestPath, "_answer", _never)  # everything through Starlette's Router
    slow = client.request(method, path, headers=headers)
    events = _events(vault)
    assert _comparable(fast) == _comparable(again) == _comparable(slow)
    # the same audit event, or none, for all three
    assert events[before:between] == events[between:third] == events[third:]


def test_a_remembered_route_follows_the_mount_table(served: tuple[Any, TestClient, dict[str, str]]) -> None:
    """A path routed once is not routed from memory after its mount was disabled, moved or replaced by
    another engine: the next request goes where the mount table says now."""
    _, client, h = served
    assert client.post("/v1/sys/mounts/m", json={"type": "kv", "options": {"version": "2"}}, headers=h).status_code == 204
    assert client.post("/v1/m/data/s", json={"data": {"v": 1}}, headers=h).status_code == 200
    assert client.get("/v1/m/data/s", headers=h).json()["data"]["data"] == {"v": 1}
    assert client.get("/v1/m/keys/k", headers=h).status_code == 404  # no such KV route
    assert client.delete("/v1/sys/mounts/m", headers=h).status_code == 204
    assert client.get("/v1/m/data/s", headers=h).status_code == 404  # gone, not served from memory
    assert client.post("/v1/sys/mounts/m", json={"type": "transit"}, headers=h).status_code == 204
    assert client.post("/v1/m/keys/k", json={}, headers=h).status_code in (200, 204)
    assert client.get("/v1/m/data/s", headers=h).status_code == 404  # transit has no data/ route
    assert client.get("/v1/m/keys/k", headers=h).json()["data"]["name"] == "k"
    assert client.delete("/v1/sys/mounts/m", headers=h).status_code == 204
    assert client.post("/v1/sys/mounts/m", json={"type": "kv", "options": {"version": "2"}}, headers=h).status_code == 204
    assert client.put("/v1/m/data/s", json={"data": {"v": 2}}, headers=h).status_code == 200  # PUT: not yet seen
    assert client.get("/v1/m/data/s", headers=h).json()["data"]["data"] == {"v": 2}  # the new mount's


def test_remembered_routes_are_bounded(served: tuple[Any, TestClient, dict[str, str]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Made-up paths cost a worker at most :data:`dispatch.KNOWN_LIMIT` remembered routes, and a path
    longer than :data:`dispatch.KNOWN_PATH_LIMIT` is never remembered."""
    app, client, h = served
    monkeypatch.setattr(dispatch, "KNOWN_LIMIT", 8)
    path_router = _path_router(app)
    for i in range(30):
        assert client.get(f"/v1/secret/data/made-up-{i}", headers=h).status_code == 404
        assert len(path_router._known) <= 8
    long = "/v1/secret/data/" + "x" * dispatch.KNOWN_PATH_LIMIT
    path_router._known.clear()
    assert client.get(long, headers=h).status_code == 404
    assert not path_router._known


def _path_router(app: Any) -> VaultRequestPath:
    layer = app.middleware_stack
    while not isinstance(layer, VaultRequestPath):
        layer = layer.app
    return layer


async def _never(self: Any, *args: Any) -> bool:
    return False


def test_the_hot_routes_are_answered_without_starlettes_router(
        served: tuple[Any, TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """KV, Transit, sys and token routes are called directly: Starlette's Router is not entered."""
    app, client, h = served
    entered: list[str] = []
    inner = app.router.middleware_stack

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope["path"])
        await inner(scope, receive, send)

    monkeypatch.setattr(app.router, "middleware_stack", counting)
    for method, path, body in [
        ("GET", "/v1/secret/data/a/b", None),
        ("POST", "/v1/secret/data/a/b", {"data": {"v": 2}}),
        ("LIST", "/v1/secret/metadata/a", None),
        ("GET", "/v1/secret/metadata?list=true", None),
        ("POST", "/v1/tr/encrypt/k", {"plaintext": "QUJD"}),
        ("GET", "/v1/sys/health", None),
        ("GET", "/v1/sys/mounts", None),
        ("GET", "/v1/auth/token/lookup-self", None),
        ("GET", "/v1/cubbyhole/c", None),
    ]:
        assert client.request(method, path, headers=h, json=body).status_code in (200, 204), path
    assert entered == []
    assert client.get("/v1/secret/bogus/x", headers=h).status_code == 404
    assert client.get("/v1/secret/data", headers=h).status_code == 307
    assert len(entered) == 2  # what the tables do not answer goes to Starlette, once each


def test_the_walk_keeps_starlettes_order(served: tuple[Any, TestClient, dict[str, str]]) -> None:
    """The first full match wins over an earlier partial one; a partial one alone is Starlette's 405."""
    from starlette.responses import Response
    from starlette.routing import Route

    async def one(request: Any) -> Response:
        return Response("one")

    async def two(request: Any) -> Response:
        return Response("two")

    table = compile_routes([Route("/x", one, methods=["POST"]), Route("/x", two, methods=["GET"])])
    found = walk(table, {"path": "/x", "method": "GET", "type": "http"}, {}, "", None)
    assert found is not None and isinstance(found.leaf, Leaf) and found.leaf.endpoint is two
    assert walk(table, {"path": "/x", "method": "PUT", "type": "http"}, {}, "", None) is None
    assert walk(table, {"path": "/y", "method": "GET", "type": "http"}, {}, "", None) is None

    def sync(request: Any) -> Response:  # Starlette runs it in a thread: left to Starlette
        return Response("sync")

    assert walk(compile_routes([Route("/s", sync)]), {"path": "/s", "method": "GET", "type": "http"},
                {}, "", None) is None


def test_an_endpoints_exception_is_answered_by_the_apps_handlers(
        served: tuple[Any, TestClient, dict[str, str]]) -> None:
    """An exception from an endpoint called directly is answered as Starlette's exception middleware
    would: the app's audited 404 handler, Starlette's default for another HTTPException, raised on else."""
    import asyncio

    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    app, _, _ = served
    request = Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "app": app,
                       "nc.vpath": "x", "query_string": b"", "client": ("127.0.0.1", 1)})
    answer = asyncio.run(dispatch._handled(app, request, HTTPException(404)))
    assert answer.status_code == 404 and b"no handler for route" in answer.body
    teapot = asyncio.run(dispatch._handled(app, request, HTTPException(418, "short and stout")))
    assert teapot.status_code == 418 and teapot.body == b"short and stout"
    with pytest.raises(KeyError):
        asyncio.run(dispatch._handled(app, request, KeyError("x")))


def test_an_opaque_route_under_v1_is_left_to_starlette(vault: nc.Vault) -> None:
    """A route the tables cannot call directly (a Mount of a plain ASGI app) still gets its requests,
    the path rules applied first; the routes after it are still answered directly."""
    from starlette.routing import Mount

    seen: list[str] = []

    async def custom(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"custom"})

    app = create_app(vault, extra_routes=[Mount("/v1/custom", app=custom)])
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        assert client.get("/v1//custom/x/").text == "custom"
        assert seen == ["/v1/custom/x"]
        assert client.get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}).status_code == 200


def test_a_route_added_after_the_first_request_is_routed(served: tuple[Any, TestClient, dict[str, str]]) -> None:
    """The app's route list is compiled again when it grows, as Starlette's Router reads it each time."""
    from starlette.responses import Response
    from starlette.routing import Route

    app, client, h = served
    assert client.get("/v1/added", headers=h).status_code == 404

    async def added(request: Any) -> Response:
        return Response("added")

    app.router.routes.insert(0, Route("/v1/added", added))
    assert client.get("/v1/added", headers=h).text == "added"


def test_a_directly_called_endpoint_keeps_the_request_timeout(vault: nc.Vault) -> None:
    """``request_timeout`` still bounds an endpoint called by the request path: 503, audited."""
    import asyncio

    from starlette.responses import Response
    from starlette.routing import Route

    from nebula_credential.server._request import Ctx, endpoint

    async def slow(request: Any, ctx: Ctx) -> Response:
        ctx.require("read")
        await asyncio.sleep(5)
        return ctx.reply({})

    app = create_app(vault, extra_routes=[Route("/v1/slow", endpoint(slow), methods=["GET"])])
    app.state.request_timeout = 0.1
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app) as client:
        response = client.get("/v1/slow", headers={"X-Vault-Token": token})
    assert (response.status_code, response.json()) == (503, {"errors": ["request timed out"]})
    action, event = _events(vault)[-1]
    assert (action, event["path"], event["status"]) == ("server.request", "slow", 503)
