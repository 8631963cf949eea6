"""Shared fixtures. Service fixtures (PostgreSQL, SoftHSM, moto, OpenBao, the Azure
test server) live in their own plugin modules listed in ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nebula_credential as nc

from .helpers import KEEP_ONE, FakeClock

pytest_plugins: list[str] = [
    "tests.fixtures_postgres",
    "tests.fixtures_hsm_kms",
    "tests.fixtures_transit",
    "tests.fixtures_azure",
]

STORE_KINDS = ["sqlite", "postgres"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL of each kind; store-level tests take this fixture."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    factory = request.getfixturevalue(f"{kind}_store_url_factory")
    return str(factory())


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "master.key"
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(path))
    return path


@pytest.fixture
def vault(store_url: str, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    """An initialised vault on each store kind, local root key, injectable clock."""
    v = nc.open(store_url, create=True, clock=clock)
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def keep1_vault(store_url: str, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    """Like ``vault``, with ``keep_versions = 1`` (see :data:`tests.helpers.KEEP_ONE`)."""
    v = nc.open(store_url, create=True, clock=clock, config=KEEP_ONE)
    try:
        yield v
    finally:
        v.close()
