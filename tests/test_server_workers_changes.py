"""Two workers of one ``serve`` see each other's revocations, policy changes and new mounts at once.

Each worker caches tokens and ACLs for ``cache_ttl`` (2 s) and its mount table
for a second.  Before, a child token still answered on the other worker right
after its parent was revoked, and ``bao kv put`` right after ``secrets enable``
could reach a worker that did not know the mount.  Now a change made through
one worker bumps a counter in the table the serve's workers share, and every
worker drops its caches before its next request.  Requests go over new
connections, so the two workers share them.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .server_proc import Server, sqlite_serve

TRIES = 24  # new connections: the kernel spreads them over both workers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-two-workers", "--workers", "2") as s:
        yield s


def _status(server: Server, method: str, path: str, token: str, body: object = None) -> int:
    with httpx.Client(base_url=server.url, headers={"X-Vault-Token": token}, timeout=10) as http:
        return http.request(method, path, json=body).status_code


def test_a_revoked_token_is_refused_by_every_worker_at_once(server: Server) -> None:
    root = server.token("root")
    for _ in range(3):
        token = server.hvac(root).auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
        assert all(_status(server, "GET", "/v1/auth/token/lookup-self", token) == 200 for _ in range(8))  # cached on both
        server.hvac(root).auth.token.revoke(token)
        statuses = [_status(server, "GET", "/v1/auth/token/lookup-self", token) for _ in range(TRIES)]
        assert statuses == [403] * TRIES, statuses


def test_a_new_mount_and_a_new_policy_are_known_to_every_worker_at_once(server: Server) -> None:
    root = server.token("root")
    for i in range(3):
        assert _status(server, "POST", f"/v1/sys/mounts/kvw{i}", root, {"type": "kv", "options": {"version": "2"}}) == 204
        statuses = [_status(server, "POST", f"/v1/kvw{i}/data/x{n}", root, {"data": {"a": "b"}}) for n in range(TRIES)]
        assert statuses == [200] * TRIES, statuses
    reader = server.hvac(root).auth.token.create(policies=["later"], ttl="1h")["auth"]["client_token"]
    assert all(_status(server, "GET", "/v1/kvw0/data/x0", reader) == 403 for _ in range(8))  # cached on both
    server.hvac(root).sys.create_or_update_acl_policy("later", 'path "kvw0/data/*" { capabilities = ["read"] }')
    statuses = [_status(server, "GET", "/v1/kvw0/data/x0", reader) for _ in range(TRIES)]
    assert statuses == [200] * TRIES, statuses
