"""100 expired leases swept by two processes at once on one store: each is revoked exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.database import DatabaseEngine

from .fixtures_dbengine import DbTarget
from .helpers import SRC

CHILD = Path(__file__).with_name("db_sweep_child.py")


@pytest.fixture
def shared_store(postgres_store_url_factory: Any) -> str:
    """A PostgreSQL store: the shared deployment where several instances sweep at once."""
    return str(postgres_store_url_factory())


@pytest.fixture
def real_vault(shared_store: str, key_file: Any) -> Iterator[nc.Vault]:
    v = nc.open(shared_store, create=True)
    try:
        yield v
    finally:
        v.close()


def test_hundred_leases_two_sweepers_each_revoked_once(real_vault: nc.Vault, shared_store: str,
                                                      db_target: DbTarget, tmp_path: Path) -> None:
    engine = DatabaseEngine(real_vault, "database")
    engine.write_connection("pg", db_target.connection_fields())
    engine.write_role("short", {"db_name": "pg", "default_ttl": 2, "max_ttl": 60, "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]})
    made = [engine.creds("short")[0]["username"] for _ in range(100)]
    assert all(db_target.role_exists(u) for u in made[:3])
    time.sleep(2.2)  # every lease has expired
    start = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parents[1]}"}
    procs = [subprocess.Popen([sys.executable, str(CHILD), shared_store, str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)  # both have opened the store
    start.touch()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\nsweepers: {reports}")
    assert sum(r["revoked"] for r in reports) == 100 and sum(r["failed"] for r in reports) == 0
    events = real_vault.audit_events(limit=1000, action="lease.revoke")
    revoked = Counter(json.loads(e.details)["lease"] for e in events if e.outcome == "ok")
    assert len(revoked) == 100 and set(revoked.values()) == {1}
    left = db_target.admin("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-token-short-%'")
    assert left == [(0,)]
