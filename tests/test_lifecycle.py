"""The lifecycle driven by an injectable clock: rotate, re-encrypt, grace, revoked, destroyed."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import nebula_credential as nc
from nebula_credential.lifecycle import advance, cleanup
from nebula_credential.models import KeyStatus
from nebula_credential.policies import MinimumRetention, UntilReEncrypted

from .helpers import FakeClock


def statuses(vault: nc.Vault) -> dict[int, str]:
    return {kv.version: kv.status.value for kv in vault.keys.list()}


def test_full_lifecycle_by_the_clock(vault: nc.Vault, clock: FakeClock) -> None:
    for i in range(20):
        vault.put(f"c{i}", {"v": i}, scope=["production", "user"][i % 2])
    clock.advance(days=91)
    report = vault.maintain()
    assert report.rotated == (1, 2) and report.rotation_reason and report.rotation_reason.startswith("periodic")
    assert report.reencryption is not None and report.reencryption.reencrypted == 20
    assert statuses(vault) == {1: "grace", 2: "active"}  # unreferenced after the pass
    assert vault.maintain().lifecycle == []  # idempotent: nothing more until grace runs out
    clock.advance(hours=24)
    r = vault.maintain()
    assert [(a.version, a.new_status) for a in r.lifecycle] == [(1, "revoked")]
    assert statuses(vault)[1] == "revoked"
    clock.advance(days=89)
    assert vault.maintain().cleanup == []  # minimum-retention (90d) is measured from revocation
    clock.advance(days=1)
    destroyed = vault.maintain().cleanup
    assert [a.version for a in destroyed] == [1] and destroyed[0].reason.startswith("minimum-retention")
    kv1 = vault.keys.version(1)
    assert kv1.status is KeyStatus.DESTROYED and kv1.wrapped_key is None  # tombstone, material erased
    assert all(vault.get(f"c{i}") == {"v": i} for i in range(20))
    actions = [r.action for r in vault.audit.rows()]
    assert {"key.rotate", "key.status", "key.cleanup"} <= set(actions)
    assert vault.audit.verify().ok


def test_write_under_a_valid_version_during_transition_still_reads(vault: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"x": 1})
    stale = nc.open(vault.store.url, clock=clock)  # a second app process with v1 cached as active
    try:
        stale.put("warm", {"x": 0})  # reserves a block of encryptions under v1
        vault.keys.rotate()
        vault.reencrypt()
        stale.put("b", {"x": 2})  # still under v1: the stale process has not refreshed yet
        assert stale.get_record("b").key_version == 1
        clock.advance(days=2)
        assert [a.new_status for a in advance(vault.keys, clock(), timedelta(hours=24))] == []  # v1 referenced
        assert statuses(vault)[1] == "valid"
        assert vault.get("b") == {"x": 2}
        assert vault.reencrypt().reencrypted == 1  # "b", written by the stale process
        assert [a.new_status for a in advance(vault.keys, clock(), timedelta(hours=24))] == ["grace"]
    finally:
        stale.close()


def test_grace_version_referenced_again_returns_to_valid(vault: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"x": 1})
    blob = vault.keys.encrypt(b'{"x": 9}', nc.credential_context(vault.keyring_name, "late", "default"))
    vault.keys.rotate()
    vault.reencrypt()
    advance(vault.keys, clock(), timedelta(hours=24))
    assert statuses(vault)[1] == "grace"
    with vault.store.transaction() as tx:  # a writer that encrypted under v1 just before the rotation
        tx.put_credential(vault.keyring_name, "late", "default", 1, blob, {}, clock())
    clock.advance(days=2)
    actions = advance(vault.keys, clock(), timedelta(hours=24))
    assert [(a.version, a.new_status) for a in actions] == [(1, "valid")]
    assert vault.get("late") == {"x": 9}


def test_grace_use_is_audited_as_warning(vault: nc.Vault, clock: FakeClock) -> None:
    ctx = b"backup-context"
    old_blob = vault.keys.encrypt(b"from a backup", ctx)
    vault.keys.rotate()
    advance(vault.keys, clock(), timedelta(hours=24))
    assert statuses(vault)[1] == "grace"
    assert vault.keys.decrypt(old_blob, ctx) == b"from a backup"
    events = [r for r in vault.audit.rows() if r.action == "key.grace_use"]
    assert len(events) == 1 and events[0].outcome == "warning" and events[0].key_version == 1


def test_cleanup_never_destroys_a_referenced_version(vault: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"x": 1})
    vault.keys.rotate()
    vault.keys.revoke(1)  # an operator revoked it with a credential still on it
    clock.advance(days=365)
    assert cleanup(vault.keys, UntilReEncrypted(), clock()) == []
    assert cleanup(vault.keys, MinimumRetention(timedelta(0)), clock()) == []
    assert vault.keys.version(1).status is KeyStatus.REVOKED


def test_cli_cleanup_dry_run_names_the_policy(tmp_path: Path) -> None:
    from .helpers import cli_env, run_cli

    # every process on the store reads c.toml: the floor is the largest refresh_interval any process announced
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}", NEBULA_CREDENTIAL_CONFIG="c.toml")
    # refresh_interval 0s: the destroy floor (twice that) does not hold a test up; keep_versions 1 lets v1 go
    (tmp_path / "c.toml").write_text(
        '[retention]\npolicy = "until-reencrypted"\nkeep_versions = 1\n[keys]\nrefresh_interval = "0s"\n')
    for args in (("init",), ("keys", "rotate"), ("keys", "revoke", "1")):
        assert run_cli(*args, cwd=tmp_path, env=env).returncode == 0
    dry = run_cli("--config", "c.toml", "--json", "keys", "cleanup", "--dry-run", cwd=tmp_path, env=env)
    import json

    out = json.loads(dry.stdout)
    assert out["policy"] == "until-reencrypted" and out["would_destroy"][0]["version"] == 1
    assert "until-reencrypted" in out["would_destroy"][0]["reason"]
    assert json.loads(run_cli("--json", "keys", "show", "1", cwd=tmp_path, env=env).stdout)["status"] == "revoked"
    done = run_cli("--config", "c.toml", "keys", "cleanup", cwd=tmp_path, env=env)
    assert "destroyed v1: until-reencrypted" in done.stdout


class LifecycleMachine(RuleBasedStateMachine):
    """Random operations; invariant: every credential decrypts to its last value
    unless an operator explicitly revoked or force-destroyed its version."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        path = Path(self.dir.name)
        cfg = nc.KeyManagementConfig.from_dict({
            "provider": {"type": "local", "key_file": str(path / "m.key")},
            "retention": {"policy": "until-reencrypted"},
            "rotation": {"strategy": "periodic", "interval": "10d"},
        })
        self.vault = nc.open(f"sqlite:///{path / 's.db'}", config=cfg, clock=self.clock, create=True)
        self.values: dict[str, int] = {}
        self.operator_revoked: set[int] = set()
        self.n = 0

    def teardown(self) -> None:
        self.vault.close()
        self.dir.cleanup()

    @rule(i=st.integers(0, 7))
    def put(self, i: int) -> None:
        self.n += 1
        self.vault.put(f"c{i}", {"n": self.n})
        self.values[f"c{i}"] = self.n

    @rule()
    def rotate(self) -> None:
        self.vault.keys.rotate()

    @rule()
    def reencrypt(self) -> None:
        self.vault.reencrypt()

    @rule(hours=st.sampled_from([1, 12, 25, 24 * 11]))
    def advance_clock_and_maintain(self, hours: int) -> None:
        self.clock.advance(hours=hours)
        self.vault.maintain()

    @precondition(lambda self: len(self.vault.keys.list()) > 1)
    @rule(data=st.data())
    def operator_revokes(self, data: st.DataObject) -> None:
        candidates = [kv.version for kv in self.vault.keys.list() if kv.status in (KeyStatus.VALID, KeyStatus.GRACE)]
        if candidates:
            v = data.draw(st.sampled_from(candidates))
            self.vault.keys.revoke(v)
            self.operator_revoked.add(v)

    @rule()
    def reinstate_all(self) -> None:
        for kv in self.vault.keys.list():
            if kv.status is KeyStatus.REVOKED:
                self.vault.keys.reinstate(kv.version)
                self.operator_revoked.discard(kv.version)

    @invariant()
    def one_active(self) -> None:
        assert [kv.status for kv in self.vault.keys.list()].count(KeyStatus.ACTIVE) == 1

    @invariant()
    def audit_chain_explains_the_key_table(self) -> None:
        result = self.vault.audit.verify()
        assert result.ok, result.unexplained

    @invariant()
    def everything_referenced_still_decrypts(self) -> None:
        for cid, n in self.values.items():
            with self.vault.store.read() as tx:
                row = tx.get_credential(self.vault.keyring_name, cid)
            assert row is not None
            version = row.key_version
            status = self.vault.keys.version(version).status
            if version in self.operator_revoked:
                continue
            assert status is not KeyStatus.DESTROYED, f"v{version} destroyed while referenced"
            assert self.vault.get(cid) == {"n": n}


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_maintain_report_json_shape(vault: nc.Vault, clock: FakeClock) -> None:
    clock.advance(days=91)
    data = vault.maintain().to_json()
    assert data["rotated"] == {"old_version": 1, "new_version": 2}
    assert set(data) >= {"keyring", "rotated", "reencryption", "lifecycle", "cleanup"}
    assert dataclasses.is_dataclass(vault.maintain())


@pytest.mark.parametrize("strategy", ["manual", "usage"])
def test_no_time_based_rotation_for_manual_and_usage(tmp_path: Path, key_file: Path, strategy: str) -> None:
    clock = FakeClock()
    cfg = nc.KeyManagementConfig.from_dict({"rotation": {"strategy": strategy}})
    with nc.open(f"sqlite:///{tmp_path / 's.db'}", config=cfg, clock=clock, create=True) as v:
        clock.advance(days=1000)
        assert v.maintain().rotated is None


def test_cli_destroy_inside_keep_versions_is_one_error_line_naming_it(tmp_path: Path) -> None:
    from .helpers import store_runner

    # refresh_interval 0s: no destroy floor; the default keep_versions = 2 keeps v1 after one rotation
    (tmp_path / "c.toml").write_text('[retention]\npolicy = "until-reencrypted"\n[keys]\nrefresh_interval = "0s"\n')
    # every process on the store reads c.toml: the floor is the largest refresh_interval any process announced
    run = store_runner(tmp_path, NEBULA_CREDENTIAL_CONFIG="c.toml")
    for args in (("init",), ("keys", "rotate"), ("keys", "revoke", "1")):
        run(*args)
    res = run("--config", "c.toml", "keys", "destroy", "1", ok=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "keep_versions = 2" in res.stderr and "--force --yes-destroy-key-version 1" in res.stderr
    assert "destroyed v1" in run("--config", "c.toml", "keys", "destroy", "1", "--force",
                                 "--yes-destroy-key-version", "1").stdout
