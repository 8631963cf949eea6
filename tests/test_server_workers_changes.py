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


def test_a_route_remembered_by_a_worker_follows_a_mount_changed_through_another(server: Server) -> None:
    """Each worker remembers where a path was routed; a mount disabled and enabled again through any
    worker makes every worker route the path to the new mount before its next request."""
    root = server.token("root")
    kv2 = {"type": "kv", "options": {"version": "2"}}
    assert _status(server, "POST", "/v1/sys/mounts/kvmoved", root, kv2) == 204
    assert _status(server, "POST", "/v1/kvmoved/data/s", root, {"data": {"v": 1}}) == 200
    assert [_read(server, root, "/v1/kvmoved/data/s") for _ in range(TRIES)] == [(200, {"v": 1})] * TRIES
    assert _status(server, "DELETE", "/v1/sys/mounts/kvmoved", root) == 204
    assert _status(server, "POST", "/v1/sys/mounts/kvmoved", root, kv2) == 204
    assert _status(server, "PUT", "/v1/kvmoved/data/s", root, {"data": {"v": 2}}) == 200  # PUT: not remembered
    assert [_read(server, root, "/v1/kvmoved/data/s") for _ in range(TRIES)] == [(200, {"v": 2})] * TRIES


def _read(server: Server, token: str, path: str) -> tuple[int, object]:
    """A KV read on a new connection (the kernel spreads new connections over both workers)."""
    with httpx.Client(base_url=server.url, headers={"X-Vault-Token": token}, timeout=10) as http:
        answer = http.get(path)
        return answer.status_code, answer.json().get("data", {}).get("data") if answer.is_success else None


def _encrypt(server: Server, token: str, key: str) -> tuple[int, str]:
    with httpx.Client(base_url=server.url, headers={"X-Vault-Token": token}, timeout=10) as http:
        answer = http.post(f"/v1/transit/encrypt/{key}", json={"plaintext": "aGVsbG8="})
        return answer.status_code, answer.json().get("data", {}).get("ciphertext", "") if answer.is_success else ""


def test_a_transit_key_changed_through_one_worker_is_used_as_changed_by_every_worker_at_once(server: Server) -> None:
    """Vault: after ``keys/:name/rotate`` the next encrypt uses the new version; after ``config`` raises
    ``min_decryption_version`` an old ciphertext is refused; after a delete the key is gone.  Before,
    the other worker kept its loaded key for ``refresh_interval`` (5 s): v1 ciphertexts, decrypts of
    versions below the minimum, encrypts with a deleted key."""
    root = server.token("root")
    with httpx.Client(base_url=server.url, headers={"X-Vault-Token": root}, timeout=10) as http:
        assert http.post("/v1/transit/keys/spread").status_code in (200, 204)
        answers = [_encrypt(server, root, "spread") for _ in range(8)]  # loaded on both workers
        assert {c.split(":")[1] for _, c in answers} == {"v1"}
        old = answers[0][1]
        for version in (2, 3):
            assert http.post("/v1/transit/keys/spread/rotate").status_code == 200
            seen = {c.split(":")[1] for _, c in (_encrypt(server, root, "spread") for _ in range(TRIES))}
            assert seen == {f"v{version}"}, seen
        assert http.post("/v1/transit/keys/spread/config", json={"min_decryption_version": 2}).status_code == 200
        statuses = []
        for _ in range(TRIES):
            with httpx.Client(base_url=server.url, headers={"X-Vault-Token": root}, timeout=10) as fresh:
                statuses.append(fresh.post("/v1/transit/decrypt/spread", json={"ciphertext": old}).status_code)
        assert statuses == [400] * TRIES, statuses
        assert http.post("/v1/transit/keys/spread/config", json={"deletion_allowed": True}).status_code == 200
        assert http.delete("/v1/transit/keys/spread").status_code == 204
    reader = server.hvac(root).auth.token.create(policies=["transit-user"], ttl="1h")["auth"]["client_token"]
    server.hvac(root).sys.create_or_update_acl_policy(
        "transit-user", 'path "transit/encrypt/*" { capabilities = ["update"] }')  # update only: no upsert
    statuses = [_encrypt(server, reader, "spread")[0] for _ in range(TRIES)]
    assert statuses == [403] * TRIES, statuses  # the key is gone everywhere (Vault: no create, 403)


def test_serve_starts_one_worker_per_core_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27: ``serve``'s default is one worker per core (at most 8); a number given is kept."""
    import os

    from nebula_credential.config import KeyManagementConfig
    from nebula_credential.exceptions import ConfigError
    from nebula_credential.server.run import MAX_DEFAULT_WORKERS, worker_count

    assert KeyManagementConfig.from_dict({}).server.workers == 0
    assert KeyManagementConfig.from_dict({"server": {"workers": 3}}).server.workers == 3
    with pytest.raises(ConfigError):
        KeyManagementConfig.from_dict({"server": {"workers": -1}})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert worker_count(0) == 2
    assert worker_count(5) == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert worker_count(0) == MAX_DEFAULT_WORKERS


def test_a_revocation_reloads_no_key_and_a_key_change_keeps_the_token_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of change drops only its own caches: a revocation (``access``) used to make every worker
    reload every Transit key, an unwrap each (a provider round trip for KMS or an HSM)."""
    from types import SimpleNamespace

    from nebula_credential.server import ratelimit, workers

    class Caches:
        def __init__(self) -> None:
            self.dropped: list[str] = []

        def forget_cached(self) -> None:
            self.dropped.append("tokens")

        def stale(self) -> None:
            self.dropped.append("mounts")

        def forget_keys(self) -> None:
            self.dropped.append("keys")

    with ratelimit.serve_table():
        monkeypatch.setattr(ratelimit, "_shared", None)
        caches = Caches()
        workers.on_change(caches.forget_keys)
        state = SimpleNamespace(changes=ratelimit.ChangeWatch(), backend=caches, mounts=caches)
        workers.follow_changes(state)
        assert caches.dropped == []
        ratelimit.note_change()  # a revocation, a policy, a mount
        workers.follow_changes(state)
        assert caches.dropped == ["tokens", "mounts"]
        ratelimit.note_change("keys")
        workers.follow_changes(state)
        assert caches.dropped == ["tokens", "mounts", "keys"]
        ratelimit.note_change("keys")
        ratelimit.note_change("access")
        workers.follow_changes(state)
        workers.follow_changes(state)  # once per change
        assert caches.dropped == ["tokens", "mounts", "keys", "tokens", "mounts", "keys"]
    monkeypatch.setattr(ratelimit, "_shared", None)
