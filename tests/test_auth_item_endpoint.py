"""One shape for a role's or user's GET/DELETE/create-or-update: ``authcommon.item_endpoint``.

AppRole roles, JWT roles and userpass users answered the same way from three
copies of one block; they now share one helper, and answer alike: GET of a
missing item 404, DELETE 204 whether or not it exists, a write needs
``create`` for a new item and ``update`` for an existing one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from nebula_credential.server import auth_approle, auth_jwt, auth_userpass, authcommon

from .server_proc import Server, sqlite_serve

HANDLERS = [auth_approle.AppRoleEngine.role, auth_jwt.JWTEngine.role, auth_userpass.UserpassEngine.user]


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda h: h.__qualname__)
def test_the_three_handlers_use_the_one_helper(handler: object) -> None:
    source = inspect.getsource(handler)  # type: ignore[arg-type]
    assert "item_endpoint(" in source
    assert 'require("update" if' not in source and 'request.method == "GET"' not in source
    assert callable(authcommon.item_endpoint)


BODIES = {
    "approle/role/r": {"token_policies": ["p"]},
    "jwt/role/r": {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["a"], "token_policies": ["p"]},
    "userpass/users/r": {"password": "pw", "token_policies": ["p"]},
}
CREATOR = "".join(f'path "auth/{p}" {{ capabilities = ["create", "read"] }}\n' for p in BODIES)
UPDATER = "".join(f'path "auth/{p}" {{ capabilities = ["update", "delete"] }}\n' for p in BODIES)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "auth-item-endpoint") as s:
        s.root = s.token("root")
        s.enable_auth("approle", "jwt", "userpass")
        with s.http(s.root) as http:
            for name, hcl in (("creator", CREATOR), ("updater", UPDATER)):
                assert http.put(f"/v1/sys/policies/acl/{name}", json={"policy": hcl}).status_code == 204
        yield s


@pytest.mark.parametrize("path", list(BODIES))
def test_every_method_answers_alike(server: Server, path: str) -> None:
    creator, updater = server.token("creator"), server.token("updater")
    body = BODIES[path]
    with server.http(creator) as c, server.http(updater) as u:
        assert c.get(f"/v1/auth/{path}").status_code == 404
        assert u.post(f"/v1/auth/{path}", json=body).status_code == 403  # a new item needs create
        assert c.post(f"/v1/auth/{path}", json=body).status_code == 204
        assert c.get(f"/v1/auth/{path}").json()["data"]["token_policies"] == ["p"]
        assert c.post(f"/v1/auth/{path}", json=body).status_code == 403  # an existing one needs update
        assert u.post(f"/v1/auth/{path}", json={**body, "token_policies": ["q"]}).status_code == 204
        assert c.get(f"/v1/auth/{path}").json()["data"]["token_policies"] == ["q"]
        assert c.delete(f"/v1/auth/{path}").status_code == 403
        assert u.delete(f"/v1/auth/{path}").status_code == 204
        assert u.delete(f"/v1/auth/{path}").status_code == 204  # nothing to delete: still 204
        assert c.get(f"/v1/auth/{path}").status_code == 404
