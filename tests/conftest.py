"""Shared fixtures. Service fixtures (PostgreSQL, SoftHSM, moto, OpenBao, the Azure
test server) live in their own plugin modules listed in ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nebula_credential as nc

from . import server_proc, shared_service
from .fixtures_transit import find_bao
from .helpers import KEEP_ONE, FakeClock

pytest_plugins: list[str] = [
    "tests.fixtures_postgres",
    "tests.fixtures_dbengine",
    "tests.fixtures_hsm_kms",
    "tests.fixtures_transit",
    "tests.fixtures_azure",
    "tests.fixtures_pgauth",
]

STORE_KINDS = ["sqlite", "postgres"]

#: Fixtures that start (or stand for) a real external service: a test that uses any
#: of them, directly or through another fixture, is marked ``services``.
SERVICE_FIXTURES = frozenset({
    "postgres_cluster", "postgres_store_url_factory", "scram_postgres", "private_scram_postgres", "db_target",
    "softhsm", "moto_kms", "aws_test_env", "openbao", "azure_vault", "pgauth",
    "pkcs11_wrap_provider_factory", "pkcs11_direct_provider_factory",
    "aws_kms_provider_factory", "vault_transit_provider_factory", "azure_keyvault_provider_factory",
})
#: Parameter values that resolve a service fixture at run time (``request.getfixturevalue``):
#: the store matrix's ``postgres`` and the real key providers.
SERVICE_PARAMS = frozenset({
    "postgres", "pkcs11", "pkcs11-wrap", "pkcs11-direct", "aws-kms", "vault-transit", "azure-keyvault",
})
#: Whole files that drive something outside the interpreter besides the CLI (a browser).
SERVICE_MODULES = frozenset({"test_console_browser"})
#: Helpers that start a real ``serve`` process or run OpenBao's ``bao`` binary (its CLI, Vault Agent):
#: a file that uses one is out of the in-process tier too.
PROCESS_HELPERS = (server_proc.serve, server_proc.sqlite_serve, find_bao)


def pytest_configure(config: pytest.Config) -> None:
    """The controller (or the only process) owns the session's shared services."""
    if not hasattr(config, "workerinput"):
        shared_service.open_session()


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last worker: stop every service a worker started (tests/shared_service.py)."""
    if not hasattr(config, "workerinput"):
        shared_service.close_session()


def _needs_a_service(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(
        isinstance(v, str) and v in SERVICE_PARAMS for v in callspec.params.values()
    ):
        return True
    if item.path.stem in SERVICE_MODULES:
        return True
    module = getattr(item, "module", None)
    return module is not None and any(
        any(value is helper for helper in PROCESS_HELPERS) for value in vars(module).values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``services`` from what a test uses, not from what its author remembered to write.

    ``make check`` deselects ``services`` (and ``slow``): the edit-loop tier is the tests that
    need nothing but this interpreter, a temp folder and the CLI in a subprocess (not a
    ``serve`` process, not OpenBao's binary).
    """
    for item in items:
        if _needs_a_service(item) and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, empty SQLite store URL.

    A test file whose subject does not depend on the store (HTTP routing, adoption
    parsing) overrides ``store_url`` with this one, so the two-store matrix runs only
    where store semantics are under test.
    """
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL of each kind; store-level tests take this fixture."""
    kind = request.param
    if kind == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
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
