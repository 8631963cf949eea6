"""Schema-driven fuzzing of every endpoint in the OpenAPI document (schemathesis).

For each generated request: never a 5xx, never a traceback, errors in
Vault's ``{"errors": [...]}`` shape, and a rejected request (4xx) leaves
every table but the audit trail exactly as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .server_proc import Server, sqlite_serve

TABLES = ("credentials", "key_versions", "server_tokens", "server_policies", "meta")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-fuzz", "--workers", "2") as s:
        s.root = s.token("root")
        with s.http(s.root) as c:
            c.post("/v1/secret/data/seed", json={"data": {"k": "v"}})
        yield s


def snapshot(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows: list[tuple[Any, ...]] = []
        for table in TABLES:
            rows += [(table, *r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")]
        return rows


def check(case: Any, server: Server, seen: dict[int, int]) -> None:
    db = server.folder / "store.db"
    before = snapshot(db)
    headers = {"X-Vault-Token": server.root}
    response = case.call(base_url=f"{server.url}/v1", headers=headers, timeout=30)
    seen[response.status_code] = seen.get(response.status_code, 0) + 1
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("errors"), list)
        assert snapshot(db) == before, (case.method, case.formatted_path, response.status_code)


def test_fuzz_every_endpoint(fuzz_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/v1/sys/internal/specs/openapi")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    seen: dict[int, int] = {}
    for operation in operations:
        run = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))(
            given(case=operation.as_strategy())(lambda case: check(case, fuzz_server, seen)))
        run()
    # the fuzzer got past the front door as well as being turned away
    assert sum(n for code, n in seen.items() if code < 300) >= 40, seen
    assert sum(n for code, n in seen.items() if 400 <= code < 500) >= 40, seen
