"""The least-privilege roles docs/operations/postgresql.md documents really are enough, and no more.

The schema owner (here the superuser) runs ``init``: migrations and the first
key.  An app role and an operator role then get exactly
``store.postgres.GRANTS`` and do their jobs; what they must not do fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import StoreError
from nebula_credential.models import KeyStatus
from nebula_credential.store import open_store
from nebula_credential.store.postgres import grant_statements

from .fixtures_postgres import PostgresCluster
from .helpers import FakeClock

pytestmark = pytest.mark.services


def _role_url(cluster: PostgresCluster, schema: str, kind: str) -> str:
    role = f"{kind}_{schema}"
    cluster.admin(f'CREATE ROLE "{role}" LOGIN')
    for stmt in grant_statements(kind, f'"{role}"', f'"{schema}"'):
        cluster.admin(stmt)
    return cluster.url(schema=schema).replace(f"//{cluster.user}@", f"//{role}@")


@pytest.fixture
def owner_url(postgres_store_url_factory: Callable[[], str], key_file: Path) -> str:
    url = postgres_store_url_factory()
    nc.open(url, create=True).close()  # the schema owner: migrations, provider record, v1
    return url


def _schema(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


def test_app_role_reads_writes_and_rotates_at_the_usage_bound(
    owner_url: str, postgres_cluster: PostgresCluster, clock: FakeClock
) -> None:
    url = _role_url(postgres_cluster, _schema(owner_url), "app")
    config = KeyManagementConfig.from_dict(
        {"audit": {"credentials": True}, "rotation": {"max_encryptions": 3}}
    )
    with nc.open(url, config=config, clock=clock) as app:  # migrate() is only a read here
        for _ in range(4):  # three encryptions under v1 reach the bound; the fourth rotates: v2
            app.put("db", {"password": "p"}, scope="production")
        assert app.get("db") == {"password": "p"}
        assert [c.id for c in app.list()] == ["db"]
        app.delete("db")
        assert app.keys.active_version().version == 2
        assert app.audit.verify().ok
        with pytest.raises(StoreError, match="permission denied"):
            app.keys.transition(1, KeyStatus.REVOKED, action="key.revoke")
        store = app.store
        with pytest.raises(StoreError, match="permission denied"), store.transaction() as tx:
            tx.acquire_lease("rotation", "app", 60, clock())
        with pytest.raises(StoreError, match="permission denied"), store.transaction() as tx:
            tx._exec("DELETE FROM audit_events")  # type: ignore[attr-defined]


def test_operator_role_runs_the_lifecycle(
    owner_url: str, postgres_cluster: PostgresCluster, clock: FakeClock
) -> None:
    with nc.open(owner_url, clock=clock) as owner:
        owner.put_many((f"c{i}", {"i": i}, "user", None) for i in range(20))
    url = _role_url(postgres_cluster, _schema(owner_url), "operator")
    with nc.open(url, clock=clock) as ops:
        ops.keys.rotate(reason="test")
        result = ops.reencrypt(batch_size=7)
        assert result.ok and result.reencrypted == 20
        ops.keys.transition(1, KeyStatus.GRACE, action="key.grace")
        ops.keys.transition(1, KeyStatus.REVOKED, action="key.revoke")
        clock.advance(seconds=10)  # the destroy floor
        ops.keys.destroy(1, force_retention=True)
        with ops.store.transaction() as tx:
            assert tx.acquire_lease("rotation", "ops", 60, clock())
            tx.release_lease("rotation", "ops")
        with ops.store.transaction() as tx:
            ops.audit.rewrap_key(tx)  # what `provider rotate` does to the audit key
        assert ops.audit.verify().ok
        with pytest.raises(StoreError, match="permission denied"), ops.store.transaction() as tx:
            tx._exec("UPDATE audit_events SET outcome = 'x'")  # type: ignore[attr-defined]


def test_runtime_roles_cannot_migrate_a_new_schema(
    postgres_store_url_factory: Callable[[], str], postgres_cluster: PostgresCluster
) -> None:
    fresh = postgres_store_url_factory()
    schema = _schema(fresh)
    role = f"nobody_{schema}"
    postgres_cluster.admin(f'CREATE ROLE "{role}" LOGIN')
    postgres_cluster.admin(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    url = fresh.replace(f"//{postgres_cluster.user}@", f"//{role}@")
    with pytest.raises(StoreError, match="permission denied"):
        open_store(url)
