"""A failed init leaves nothing behind that a second attempt would trip over.

``init`` (``nc.open(url, create=True)``) writes the provider fingerprint, the
audit key, ``store.init`` and key version 1 in ONE transaction, and removes
the root key file it created when that transaction does not commit.  Before,
version 1 was written in a second transaction: a provider that refused the
data key left a fingerprint behind, and a retry with corrected settings was
refused as "this store's root of trust is provider ..." (PostgreSQL, and
SQLite through the Python API).  A database that refused the first write
left the new key file, which the retry then refused to overwrite.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.audit import AUDIT_KEY_META
from nebula_credential.exceptions import ConfigError, NebulaCredentialError, ProviderPermissionError, StoreError
from nebula_credential.fingerprint import read_fingerprint
from nebula_credential.keys import KeyManager
from nebula_credential.providers.local import LocalKeyProvider
from nebula_credential.store import open_store

from .fixtures_postgres import PostgresCluster
from .fixtures_transit import OpenBao
from .helpers import cli_env, free_port, run_cli
from .test_postgres_privileges import _role_url, _schema

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def postgres_cluster(private_postgres_cluster: PostgresCluster) -> PostgresCluster:
    """This file counts waiting locks cluster-wide: the worker's own cluster, not the shared one."""
    return private_postgres_cluster


@pytest.fixture(params=["sqlite", "postgres"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Each call: the URL of another fresh, empty store of the parametrised kind."""
    if request.param == "sqlite":
        names = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f's{next(names)}.db'}"
    factory: Callable[[], str] = request.getfixturevalue("postgres_store_url_factory")
    return factory


def _config(provider: dict[str, Any]) -> nc.KeyManagementConfig:
    return nc.KeyManagementConfig.from_dict({"provider": provider})


def _local(key: Path) -> nc.KeyManagementConfig:
    return _config({"type": "local", "key_file": str(key)})


def assert_untouched(url: str) -> None:
    """No fingerprint, audit key, audit event or key version: the store is as a first init finds it."""
    store = open_store(url)
    try:
        with store.read() as tx:
            assert read_fingerprint(tx) is None
            assert tx.get_meta(AUDIT_KEY_META) is None
            assert tx.audit_rows() == []
            assert tx.keyrings() == []
    finally:
        store.close()


def init_succeeds(url: str, key: Path) -> None:
    """A correct init (another provider than the failed attempt's) works and its audit trail verifies."""
    with nc.open(url, config=_local(key), create=True) as vault:
        assert vault.keys.active_version().version == 1
        result = vault.audit.verify()
        assert result.ok and result.events == 2, result
        with vault.store.read() as tx:
            assert [row.action for row in tx.audit_rows()] == ["store.init", "key.create"]


def test_a_provider_refusing_at_any_step_of_init_leaves_nothing(
    new_url: Callable[[], str], openbao: OpenBao, tmp_path: Path
) -> None:
    """A Vault token with a use limit runs out at each successive provider call of init in turn."""
    failures = 0
    for uses in range(1, 16):
        token = openbao.client().auth.token.create(policies=["root"], num_uses=uses)["auth"]["client_token"]
        settings = openbao.settings(token_file=str(openbao.write_secret(f"limited-{uses}", token)))
        url = new_url()
        try:
            nc.open(url, config=_config(settings), create=True).close()
        except ProviderPermissionError:
            failures += 1
            assert_untouched(url)
            init_succeeds(url, tmp_path / f"retry-{uses}.key")
        else:
            break
    else:
        pytest.fail("init never succeeded with a token of up to 15 uses")
    assert failures >= 4  # create key, wrap and unwrap the audit key, wrap v1: each refused once


@pytest.mark.parametrize("reason", ["unreachable provider", "unwritable key path"])
def test_a_failed_init_then_a_correct_one(
    reason: str, new_url: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = new_url()
    if reason == "unreachable provider":
        monkeypatch.setenv("NC_TEST_TOKEN", "t")
        bad = _config({"type": "vault-transit", "url": f"http://127.0.0.1:{free_port()}", "key_name": "k",
                       "token_env": "NC_TEST_TOKEN", "retry_attempts": 1})
    else:
        (tmp_path / "a-file").write_text("")
        bad = _local(tmp_path / "a-file" / "master.key")  # its folder is a regular file
    with pytest.raises(NebulaCredentialError):
        nc.open(url, config=bad, create=True)
    assert_untouched(url)
    init_succeeds(url, tmp_path / "master.key")


def test_an_init_the_database_refuses_removes_the_key_file_it_made(
    postgres_store_url_factory: Callable[[], str], postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """The app role may not write the provider record: its init fails and leaves no key file."""
    owner_url = postgres_store_url_factory()
    open_store(owner_url).close()  # the schema owner creates the tables, nothing more
    app_url = _role_url(postgres_cluster, _schema(owner_url), "app")
    key = tmp_path / "master.key"
    with pytest.raises(StoreError, match="permission denied"):
        nc.open(app_url, config=_local(key), create=True)
    assert not key.exists()
    assert_untouched(owner_url)
    init_succeeds(owner_url, key)  # the same key path: before, "refuses an existing key file"


def test_cli_init_the_database_refuses_keeps_the_new_key_file_for_the_retry(
    postgres_store_url_factory: Callable[[], str], postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    owner_url = postgres_store_url_factory()
    open_store(owner_url).close()
    app_url = _role_url(postgres_cluster, _schema(owner_url), "app")
    key = tmp_path / "new.key"
    failed = run_cli("--db", app_url, "init", "--key-file", str(key), cwd=tmp_path, env=cli_env())
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "permission denied" in failed.stderr
    # the new key file stays (another init may have loaded it meanwhile), and a retry adopts it
    made = LocalKeyProvider.load(key).root_key_id()
    ok = run_cli("--db", owner_url, "init", "--key-file", str(key), cwd=tmp_path, env=cli_env())
    assert ok.returncode == 0, ok.stderr
    store = open_store(owner_url)
    try:
        with store.read() as tx:
            recorded = read_fingerprint(tx)
    finally:
        store.close()
    assert recorded is not None and recorded.root_key_id == made


def test_cli_init_on_postgres_after_a_failed_one(postgres_store_url_factory: Callable[[], str],
                                                tmp_path: Path) -> None:
    url = postgres_store_url_factory()
    config = tmp_path / "transit.toml"
    config.write_text(f'[provider]\ntype = "vault-transit"\nurl = "http://127.0.0.1:{free_port()}"\n'
                      'key_name = "k"\ntoken_env = "NC_TEST_TOKEN"\nretry_attempts = 1\n')
    env = cli_env(NEBULA_CREDENTIAL_DB=url, NC_TEST_TOKEN="t",
                  NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    failed = run_cli("--config", str(config), "init", cwd=tmp_path, env=env)
    assert failed.returncode == 1 and failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    assert "Traceback" not in failed.stderr
    assert_untouched(url)
    ok = run_cli("--json", "init", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["active_version"] == 1
    verify = json.loads(run_cli("--json", "audit", "verify", cwd=tmp_path, env=env).stdout)
    assert (verify["ok"], verify["events"], verify["first_bad_seq"]) == (True, 2, None)


# ---- init --key-file NEW on an initialised store creates nothing -----------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def cli_store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of the CLI on an initialised store whose root key is ``tmp_path/store.key``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'c.db'}"
    else:
        url = request.getfixturevalue("postgres_store_url_factory")()
    env = cli_env(NEBULA_CREDENTIAL_DB=url)
    made = run_cli("init", "--key-file", str(tmp_path / "store.key"), cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    return env


def test_init_with_a_new_key_file_on_an_initialised_store_creates_no_file(
    cli_store: dict[str, str], tmp_path: Path
) -> None:
    new = tmp_path / "new.key"
    refused = run_cli("--keyring", "tenant", "init", "--key-file", str(new), cwd=tmp_path, env=cli_store)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
    assert "provider.key_file" in refused.stderr and "already" in refused.stderr
    assert not new.exists()
    again = run_cli("init", "--key-file", str(new), cwd=tmp_path, env=cli_store)  # the keyring that exists
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already" in again.stderr, again.stderr
    assert not new.exists()
    same = run_cli("init", "--key-file", str(tmp_path / "store.key"), cwd=tmp_path, env=cli_store)
    assert same.returncode == 0 and "already initialised" in same.stdout, same.stderr
    # a new keyring under the store's own key file is what --key-file is for
    added = run_cli("--json", "--keyring", "tenant", "init", "--key-file", str(tmp_path / "store.key"),
                    cwd=tmp_path, env=cli_store)
    assert added.returncode == 0 and json.loads(added.stdout)["keyring"] == "tenant", added.stderr
    assert sorted(p.name for p in tmp_path.glob("*.key")) == ["store.key"]


def test_an_init_waiting_on_a_key_file_another_init_removes_refuses(
    postgres_store_url_factory: Callable[[], str], postgres_cluster: PostgresCluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A creates the key file and fails under the init lock; B loaded that file meanwhile and waits.

    A removes its file while it still holds the lock; B, once it has the lock,
    finds the file gone and refuses.  Before, A removed the file after its
    transaction ended and B committed the store under a key no file held
    (the store unreadable from then on).
    """
    url = postgres_store_url_factory()
    key = tmp_path / "root.key"
    inside, release = threading.Event(), threading.Event()
    original = KeyManager.initialize_in

    def initialize_in(self: KeyManager, tx: Any) -> Any:
        if threading.current_thread().name == "init-a":
            inside.set()
            release.wait(30)
            raise RuntimeError("init A aborted")
        return original(self, tx)

    monkeypatch.setattr(KeyManager, "initialize_in", initialize_in)
    outcome: dict[str, BaseException | None] = {}

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                fn().close()
                outcome[name] = None
            except BaseException as exc:
                outcome[name] = exc
        thread = threading.Thread(target=target, name=name)
        thread.start()
        return thread

    a = run("init-a", lambda: nc.open(url, config=_local(key), create=True))
    assert inside.wait(30)
    b = run("init-b", lambda: nc.open(url, provider=LocalKeyProvider.load(key), create=True))
    for _ in range(300):  # B is queued on A's init lock
        if int(str(postgres_cluster.admin("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0])):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the second init never waited for the first")
    release.set()
    a.join(30)
    b.join(30)
    assert isinstance(outcome["init-a"], RuntimeError)
    assert isinstance(outcome["init-b"], ConfigError) and "removed or replaced" in str(outcome["init-b"])
    assert not key.exists()
    assert_untouched(url)
    init_succeeds(url, key)


def test_a_kms_key_a_failed_init_created_is_scheduled_for_deletion(
    new_url: Callable[[], str], moto_kms: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key_id, init creates the KMS key; a failed init used to leave it behind (billed, never
    used, another one made by every retry).  Now it is scheduled for deletion (7 days, cancellable)."""
    url = new_url()
    client = moto_kms.client()
    before = {k["KeyArn"] for k in client.list_keys()["Keys"]}

    def fail(self: KeyManager, tx: Any) -> Any:
        raise RuntimeError("init aborted")

    monkeypatch.setattr(KeyManager, "initialize_in", fail)
    settings = {"type": "aws-kms", "region": moto_kms.region, "endpoint_url": moto_kms.endpoint_url}
    with pytest.raises(RuntimeError, match="init aborted"):
        nc.open(url, config=_config(settings), create=True)
    # moto is shared by the session's workers: keys other tests create meanwhile are new too but
    # Enabled, so the key this init made is the one new key pending deletion (none on the old code).
    made = [k["KeyArn"] for k in client.list_keys()["Keys"] if k["KeyArn"] not in before]
    states = {arn: client.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] for arn in made}
    assert list(states.values()).count("PendingDeletion") == 1
    assert_untouched(url)
