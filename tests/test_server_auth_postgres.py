"""Auth methods on two ``serve`` processes sharing one PostgreSQL store: a single-use secret id or wrapping
token answers exactly once across both, and a user written through one logs in through the other."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from .test_server_postgres import _pair


def test_single_use_across_two_processes(tmp_path: Path, postgres_store_url_factory: Callable[[], str]) -> None:
    with ExitStack() as stack:
        a, b = _pair(tmp_path, postgres_store_url_factory(), stack)
        root = a.hvac(a.token("root"))
        for kind in ("approle", "userpass"):  # on one process: the mount table is shared through the store
            root.sys.enable_auth_method(kind)
        root.auth.approle.create_or_update_approle("once", token_policies=["p"], secret_id_num_uses=1)
        role_id = root.auth.approle.read_role_id("once")["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id("once")["data"]["secret_id"]

        def login(i: int) -> int:
            with (a if i % 2 else b).http() as http:
                return http.post("/v1/auth/approle/login",
                                 json={"role_id": role_id, "secret_id": secret_id}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(login, range(16)))
        assert codes.count(200) == 1 and codes.count(400) == 15, codes

        with a.http(root.token) as http:
            info = http.post("/v1/auth/approle/role/once/secret-id", json={},
                             headers={"X-Vault-Wrap-TTL": "1m"}).json()["wrap_info"]

        def unwrap(i: int) -> int:
            with (a if i % 2 else b).http() as http:
                return http.post("/v1/sys/wrapping/unwrap", json={"token": info["token"]}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(unwrap, range(16)))
        assert codes.count(200) == 1 and codes.count(400) == 15, codes

        root.auth.userpass.create_or_update_user("pg-user", password="pg-pass", policies=["p"])
        assert b.hvac().auth.userpass.login("pg-user", "pg-pass")["auth"]["client_token"]
