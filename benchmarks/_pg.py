"""A throwaway PostgreSQL cluster for the benchmarks (the test suite's recipe)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fixtures_postgres import PostgresCluster


def throwaway_cluster(tmp: str) -> PostgresCluster:
    """A started cluster under ``tmp`` with the test database created; stop it when done."""
    from tests.fixtures_postgres import DATABASE, PostgresCluster

    (Path(tmp) / "pg").mkdir()
    os.chmod(tmp, 0o755)
    cluster = PostgresCluster(Path(tmp) / "pg")
    cluster.init()
    cluster.start()
    cluster.admin(f"CREATE DATABASE {DATABASE}", database="postgres")
    return cluster
