"""Two ``serve`` processes on one PostgreSQL store behave as one server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from hvac import exceptions

from .helpers import cli_env
from .server_proc import Server, serve


def _pair(tmp_path: Path, url: str, stack: ExitStack) -> tuple[Server, Server]:
    # cache_ttl 0: a process re-reads a token on every request, so the test needs no clock
    config = tmp_path / "server.toml"
    config.write_text('[server]\ncache_ttl = "0s"\n\n[keys]\nrefresh_interval = "1s"\n')
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"),
                  NEBULA_CREDENTIAL_CONFIG=str(config))
    a = stack.enter_context(serve(tmp_path, url, "--maintain", "--interval", "1h", env=env))
    b = stack.enter_context(serve(tmp_path, url, env=env, init=False))
    return a, b


def test_token_revoked_on_one_is_refused_by_the_other(
        tmp_path: Path, postgres_store_url_factory: Callable[[], str]) -> None:
    with ExitStack() as stack:
        a, b = _pair(tmp_path, postgres_store_url_factory(), stack)
        root = a.hvac(a.token("root"))
        child = root.auth.token.create(policies=["root"], ttl="1h")["auth"]
        on_b = b.hvac(child["client_token"])
        assert on_b.auth.token.lookup_self()["data"]["accessor"] == child["accessor"]
        root.auth.token.revoke_accessor(child["accessor"])
        with pytest.raises(exceptions.Forbidden):
            on_b.auth.token.lookup_self()
        # the daemon's scheduler runs inside the first (on the asyncio store's engine, from its own thread)
        deadline = time.monotonic() + 60
        with a.http() as anon:
            while (health := anon.get("/healthz").json())["passes"] < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert health["passes"] >= 1 and health["last_error"] is None, health
        # and a policy written through one is enforced by the other
        root.sys.create_or_update_acl_policy("ro", 'path "secret/data/*" { capabilities = ["read"] }')
        reader = b.hvac(root.auth.token.create(policies=["ro"])["auth"]["client_token"])
        with pytest.raises(exceptions.Forbidden):
            reader.secrets.kv.v2.create_or_update_secret("x", secret={"a": 1})


def test_cas_across_instances(tmp_path: Path, postgres_store_url_factory: Callable[[], str]) -> None:
    with ExitStack() as stack:
        a, b = _pair(tmp_path, postgres_store_url_factory(), stack)
        token = a.token("root")
        kv_a, kv_b = a.hvac(token).secrets.kv.v2, b.hvac(token).secrets.kv.v2
        kv_a.create_or_update_secret("shared", secret={"n": 0}, cas=0)
        with pytest.raises(exceptions.InvalidRequest, match="check-and-set"):  # 400, as Vault answers
            kv_b.create_or_update_secret("shared", secret={"n": -1}, cas=0)

        # 16 writers, all expecting version 1, half through each server: exactly one wins
        def write(i: int) -> bool:
            kv = (kv_a if i % 2 else kv_b)
            try:
                kv.create_or_update_secret("shared", secret={"n": i}, cas=1)
                return True
            except exceptions.InvalidRequest:
                return False

        with ThreadPoolExecutor(16) as pool:
            wins = [i for i, ok in enumerate(pool.map(write, range(1, 17)), 1) if ok]
        assert len(wins) == 1
        read = kv_b.read_secret_version("shared", raise_on_deleted_version=True)["data"]
        assert read["data"] == {"n": wins[0]} and read["metadata"]["version"] == 2

        # plain writes (no cas) through both never lose one another's version bump
        def plain(i: int) -> int:
            kv = (kv_a if i % 2 else kv_b)
            return int(kv.create_or_update_secret("shared", secret={"n": i})["data"]["version"])

        with ThreadPoolExecutor(8) as pool:
            versions = sorted(pool.map(plain, range(8)))
        assert versions == list(range(3, 11))


def test_rotation_through_the_cli_is_used_by_both(tmp_path: Path,
                                                  postgres_store_url_factory: Callable[[], str]) -> None:
    with ExitStack() as stack:
        a, b = _pair(tmp_path, postgres_store_url_factory(), stack)
        token = a.token("root")
        a.hvac(token).secrets.kv.v2.create_or_update_secret("before", secret={"n": 0})
        assert a.cli("keys", "rotate").returncode == 0
        deadline = time.monotonic() + 60  # refresh_interval is 1s here; the bound, not a timing assertion
        versions: dict[str, int] = {}
        while len(versions) < 2 and time.monotonic() < deadline:
            for name, server in (("a", a), ("b", b)):
                server.hvac(token).secrets.kv.v2.create_or_update_secret(f"after-{name}", secret={"n": 1})
                got = json.loads(a.cli("--json", "get", f"after-{name}").stdout)
                if got["key_version"] == 2:
                    versions[name] = 2
        assert versions == {"a": 2, "b": 2}


def test_concurrent_first_requests_do_not_hang(tmp_path: Path, postgres_store_url_factory: Callable[[], str]) -> None:
    """Eight clients' first requests at once: the token key's lock was a thread lock held by a
    greenlet across a database await, which blocked the loop (every request timed out)."""
    with serve(tmp_path, postgres_store_url_factory()) as server:
        token = server.token("root")

        def first(n: int) -> int | str:
            with server.http(token) as client:
                client.timeout = httpx.Timeout(15)
                try:
                    return client.post(f"/v1/secret/data/first/{n}", json={"data": {"n": n}}).status_code
                except httpx.HTTPError as exc:
                    return type(exc).__name__

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(first, range(8))) == [200] * 8
