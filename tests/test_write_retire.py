"""Issue 13 section 2: no write lands under a version being revoked or destroyed; the destroy guard.

An application keeps its active version cached for ``refresh_interval``;
another process (here: a second vault on the same store, with its own
cache) rotates, re-encrypts and retires the version underneath it.  The
write must notice inside its own transaction and land under a version that
still decrypts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.models import KeyStatus
from nebula_credential.policies.retention import UntilReEncrypted

from .helpers import KEEP_ONE, FakeClock, cli_env

ROOT = Path(__file__).resolve().parents[1]

FLOOR = timedelta(seconds=10)  # twice the default refresh_interval (5 s)


def header_versions(vault: nc.Vault) -> dict[str, int]:
    return {row.id: int.from_bytes(row.envelope[4:8], "big") for row in vault.list()}


@pytest.fixture
def operator(vault: nc.Vault, clock: FakeClock) -> Iterator[nc.Vault]:
    """A second process's view of the same store: its own key cache.

    keep_versions = 1: these tests destroy v1 right after one rotation; the
    previous-version rule has its own tests (test_operator_policies.py).
    """
    other = nc.open(vault.store.url, provider=vault.provider, clock=clock, config=KEEP_ONE)
    try:
        yield other
    finally:
        other.store.close()


def retire_v1(operator: nc.Vault, clock: FakeClock, *, destroy: bool) -> None:
    operator.keys.rotate(reason="test")
    assert operator.reencrypt().ok
    operator.keys.revoke(1)
    if destroy:
        clock.advance(FLOOR)
        operator.keys.destroy(1, retention=UntilReEncrypted())


@pytest.mark.parametrize("destroy", [False, True], ids=["revoked", "destroyed"])
def test_stale_put_lands_under_the_new_active_version(
    vault: nc.Vault, operator: nc.Vault, clock: FakeClock, destroy: bool
) -> None:
    vault.put("a", {"n": 1})  # the app now holds v1 as its cached active version
    retire_v1(operator, clock, destroy=destroy)
    vault.put("b", {"n": 2})
    assert header_versions(vault) == {"a": 2, "b": 2}
    assert operator.get("b") == {"n": 2} and vault.get("b") == {"n": 2}


def test_stale_import_batch_is_encrypted_again(vault: nc.Vault, operator: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"n": 0})
    retire_v1(operator, clock, destroy=True)
    assert vault.put_many((f"i{n}", {"n": n}, "default", None) for n in range(5)) == 5
    assert set(header_versions(vault).values()) == {2}
    assert [operator.get(f"i{n}") for n in range(5)] == [{"n": n} for n in range(5)]


def test_reencryption_drops_a_batch_whose_version_was_revoked_meanwhile(
    vault: nc.Vault, operator: nc.Vault
) -> None:
    vault.put("a", {"n": 1})
    vault.keys.rotate(reason="test")  # v2 active; "a" waits under v1
    real_encrypt = vault.keys.encrypt
    retired: list[int] = []

    def encrypt_then_retire(plaintext: bytes, aad: bytes = b"") -> bytes:
        blob = real_encrypt(plaintext, aad)
        if not retired:  # between this pass's encryption and its write, another process retires v2
            operator.keys.rotate(reason="test")
            operator.keys.revoke(2)
            retired.append(2)
        return blob

    vault.keys.encrypt = encrypt_then_retire  # type: ignore[method-assign]
    result = vault.reencrypt()
    assert retired and result.reencrypted == 0 and result.conflicts == 1
    assert header_versions(vault) == {"a": 1}  # left as it was, never under the revoked v2
    del vault.keys.encrypt
    assert vault.reencrypt().reencrypted == 1
    assert header_versions(vault) == {"a": 3} and vault.get("a") == {"n": 1}


def test_write_keeps_failing_cleanly_when_every_version_is_retired(
    vault: nc.Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The typed error, and nothing written, when no writable version can be had."""
    vault.put("a", {"n": 1})
    monkeypatch.setattr("nebula_credential.vault.WRITABLE", frozenset())  # every version found retired
    monkeypatch.setattr("nebula_credential.keys.WRITABLE", frozenset())
    with pytest.raises(nc.ConcurrencyError, match="nothing was written"):
        vault.put("b", {"n": 2})
    with pytest.raises(nc.ConcurrencyError, match="nothing was written"):
        vault.put_many([("c", {"n": 3}, "default", None)])
    assert set(header_versions(vault)) == {"a"}


# ---- the destroy guard -------------------------------------------------------------------
def test_destroy_refuses_every_status_but_revoked_naming_the_command(vault: nc.Vault) -> None:
    with pytest.raises(nc.PolicyViolationError, match="rotate first"):
        vault.keys.destroy(1)
    vault.keys.rotate(reason="test")
    assert vault.reencrypt().ok
    with pytest.raises(nc.PolicyViolationError, match="keys revoke 1"):
        vault.keys.destroy(1)  # valid: today this succeeded at once
    vault.keys.transition(1, KeyStatus.GRACE, action="key.status")
    with pytest.raises(nc.PolicyViolationError, match="keys revoke 1"):
        vault.keys.destroy(1, force_retention=True)
    assert vault.keys.version(1).status is KeyStatus.GRACE


def test_destroy_floor_and_retention_minimum(operator: nc.Vault, clock: FakeClock) -> None:
    vault = operator  # keep_versions = 1: v1 is outside it after one rotation
    vault.keys.rotate(reason="test")
    vault.keys.revoke(1)
    clock.advance(seconds=9)
    with pytest.raises(nc.PolicyViolationError, match="floor"):
        vault.keys.destroy(1, force_retention=True)  # --force never lowers the floor
    clock.advance(seconds=1)
    with pytest.raises(nc.PolicyViolationError, match="--force --yes-destroy-key-version 1"):
        vault.keys.destroy(1)  # default policy: 90 days of minimum retention
    kv = vault.keys.destroy(1, force_retention=True)
    assert kv.status is KeyStatus.DESTROYED and vault.keys.version(1).wrapped_key is None
    with vault.store.read() as tx:
        event = tx.audit_search(limit=1, action="key.destroy")[0]
    assert '"forced":true' in event.details and "forced past retention" in event.details


def test_destroy_counts_references_by_envelope_header(vault: nc.Vault, clock: FakeClock) -> None:
    """A row whose key_version column lies still keeps its real version alive."""
    vault.put("a", {"n": 1})
    vault.keys.rotate(reason="test")
    with vault.store.transaction() as tx:
        tx._exec("UPDATE credentials SET key_version = 2")  # type: ignore[attr-defined]
    vault.keys.revoke(1)
    clock.advance(FLOOR)
    with pytest.raises(nc.PolicyViolationError, match="still used by 1 credential"):
        vault.keys.destroy(1, force_retention=True)
    assert vault.keys.version(1).status is KeyStatus.REVOKED


def test_cleanup_uses_the_same_guard(vault: nc.Vault, clock: FakeClock) -> None:
    from nebula_credential.lifecycle import cleanup

    vault.keys.rotate(reason="test")
    vault.keys.rotate(reason="test")  # v3 active: v1 is outside keep_versions (active and previous)
    vault.keys.revoke(1)
    assert cleanup(vault.keys, UntilReEncrypted(), clock(), dry_run=True) == []  # inside the floor
    assert cleanup(vault.keys, UntilReEncrypted(), clock()) == []
    clock.advance(FLOOR)
    planned = cleanup(vault.keys, UntilReEncrypted(), clock(), dry_run=True)
    assert [a.version for a in planned] == [1] and "until-reencrypted" in planned[0].reason
    assert [a.version for a in cleanup(vault.keys, UntilReEncrypted(), clock())] == [1]
    assert vault.keys.version(1).status is KeyStatus.DESTROYED


# ---- max_encryptions without auto rotation (section 5) -------------------------------------
def test_max_encryptions_is_enforced_without_auto_rotation(tmp_path: object) -> None:
    cfg = nc.KeyManagementConfig.from_dict(
        {"keys": {"auto_rotation": False}, "rotation": {"max_encryptions": 40}}
    )
    km = nc.KeyManager.ephemeral(config=cfg)
    for _ in range(40):
        km.encrypt(b"x")
    with pytest.raises(nc.PolicyViolationError, match="max_encryptions .40.* keys rotate"):
        km.encrypt(b"x")
    with pytest.raises(nc.PolicyViolationError):  # and stays refused
        km.encrypt(b"x")
    assert km.active_version().version == 1 and km.version(1).encryptions == 40
    km.rotate(reason="usage")
    assert km.decrypt(km.encrypt(b"y")) == b"y"


# ---- the race with real processes ------------------------------------------------------------
def race(store_url: str, tmp_path: Path, cycles: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """An app process writing through its cache while an operator process retires versions under it.

    The app re-reads key statuses every second; the operator's own config
    says 0.1 s.  So the app keeps writing under a version for up to a second
    after it was revoked: only the check inside the write transaction saves
    those writes.  The destroy floor is the app's (2 s): the largest
    ``refresh_interval`` announced to the store, not the operator's.
    """
    def config_file(name: str, refresh: str) -> Path:
        path = tmp_path / name
        path.write_text(
            f'[provider]\ntype = "local"\nkey_file = "{tmp_path / "race.key"}"\n'
            f'[keys]\nrefresh_interval = "{refresh}"\n[retention]\npolicy = "until-reencrypted"\n'
            "keep_versions = 1\n"  # the operator destroys v1 right after one rotation
        )
        return path

    config = config_file("race.toml", "0.1s")
    app_config = config_file("app.toml", "1s")
    stop = tmp_path / "stop"
    stop.unlink(missing_ok=True)
    with nc.open(store_url, config=str(config), create=True) as v:
        v.put("c0", {"n": 0})
    env = cli_env()

    def actor(role: str, cfg: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tests.retire_actor", role, store_url, str(cfg), str(stop),
                                 *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    app = actor("app", app_config)
    operator = actor("operator", config, str(cycles))
    try:
        op_out, op_err = operator.communicate(timeout=300)
        app_out, app_err = app.communicate(timeout=60)
    finally:
        stop.touch()
        for p in (app, operator):
            if p.poll() is None:
                p.kill()
    assert operator.returncode == 0, op_err
    assert app.returncode == 0, app_err
    return json.loads(app_out.splitlines()[-1]), json.loads(op_out.splitlines()[-1])


def check_after_race(store_url: str, tmp_path: Path, last: dict[str, int]) -> None:
    """0 rows under a version that does not decrypt; every value the last one written."""
    with nc.open(store_url, config=str(tmp_path / "race.toml")) as v:
        statuses = {kv.version: kv.status for kv in v.keys.list()}
        stranded = {cid: ver for cid, ver in header_versions(v).items()
                    if statuses.get(ver) not in (KeyStatus.ACTIVE, KeyStatus.VALID)}
        assert stranded == {}
        assert {cid: v.get(cid)["n"] for cid in last} == last


def test_app_and_operator_race_with_real_processes(store_url: str, tmp_path: Path) -> None:
    app, operator = race(store_url, tmp_path, cycles=3)
    assert (operator["destroyed"], operator["destroy_refused"]) == (3, 0) and app["writes"] > 0
    check_after_race(store_url, tmp_path, app["last"])
    print(f"race: {app['writes']} writes, {app['retired_in_tx']} redone in the transaction, "
          f"{operator['destroyed']} versions destroyed, {operator['revoke_retries']} revokes refused")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NEBULA_SOAK") != "1", reason="soak: NEBULA_SOAK=1 (make soak)")
@pytest.mark.parametrize("round_", range(5))
def test_app_and_operator_race_repeated(store_url: str, tmp_path: Path, round_: int) -> None:
    app, operator = race(store_url, tmp_path, cycles=15)
    assert (operator["destroyed"], operator["destroy_refused"]) == (15, 0)
    check_after_race(store_url, tmp_path, app["last"])
    print(f"race {round_}: {app['writes']} writes, {app['retired_in_tx']} redone in the transaction, "
          f"{operator['revoke_retries']} revokes refused")


def test_lifecycle_never_retires_a_version_a_lying_column_hides(vault: nc.Vault, clock: FakeClock) -> None:
    """valid -> grace -> revoked also counts by header: the row under v1 keeps v1 valid."""
    from nebula_credential.lifecycle import advance

    vault.put("a", {"n": 1})
    vault.keys.rotate(reason="test")
    with vault.store.transaction() as tx:
        tx._exec("UPDATE credentials SET key_version = 2")  # type: ignore[attr-defined]
    clock.advance(days=2)
    advance(vault.keys, clock(), timedelta(hours=24))  # plans v1 -> grace by the column; the guard refuses
    assert vault.keys.version(1).status is KeyStatus.VALID and vault.get("a") == {"n": 1}
