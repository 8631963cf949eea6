"""Issue 14 items 13-18: keep_versions, access counters, provider retries, custom retention,
cron time zones across DST, and root keys without entropy."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import nebula_credential as nc
from nebula_credential._secret import SecretBytes
from nebula_credential.access import AccessCounter, access_totals
from nebula_credential.lifecycle import advance, cleanup
from nebula_credential.metrics import render
from nebula_credential.models import KeyStatus, KeyVersion
from nebula_credential.policies.retention import retention_from_config
from nebula_credential.policies.rotation import ScheduledRotation, strategy_from_config
from nebula_credential.providers import open_provider
from nebula_credential.providers.base import KeyProvider, RetryPolicy, TransientProviderError, WrapContext
from nebula_credential.providers.local import LocalKeyProvider, _key_id

from .helpers import FakeClock


@pytest.fixture
def sq(tmp_path: Path, key_file: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    """An initialised SQLite vault with the injectable clock."""
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", create=True, clock=clock)
    try:
        yield v
    finally:
        v.close()


def _with(vault: nc.Vault, data: dict[str, object], clock: FakeClock) -> nc.Vault:
    return nc.open(vault.store.url, config=nc.KeyManagementConfig.from_dict(data), clock=clock)


# ---- 13. keep_versions --------------------------------------------------------------------
def test_keep_versions_keeps_the_previous_version_whatever_the_policy(sq: nc.Vault, clock: FakeClock) -> None:
    cfg = {"retention": {"policy": "until-reencrypted"}, "keys": {"grace_period": "1s"}}
    v = _with(sq, cfg, clock)
    try:
        assert v.config.retention.keep_versions == 2
        v.put("a", 1)
        v.keys.rotate()
        v.reencrypt()
        advance(v.keys, clock(), timedelta(seconds=1))
        clock.advance(seconds=5)
        advance(v.keys, clock(), timedelta(seconds=1))
        assert v.keys.version(1).status is KeyStatus.REVOKED
        policy = retention_from_config(v.config)
        assert cleanup(v.keys, policy, clock()) == []  # v1 is the one before the active v2: kept
        v.keys.rotate()  # v3 active: v1 is now outside keep_versions
        clock.advance(minutes=1)  # past the destroy floor (twice refresh_interval)
        assert [a.version for a in cleanup(v.keys, policy, clock())] == [1]
        assert v.keys.version(2).status is not KeyStatus.DESTROYED
    finally:
        v.close()


def test_destroy_refuses_a_version_inside_keep_versions(sq: nc.Vault, clock: FakeClock) -> None:
    """The one destroy guard applies keep_versions, not only cleanup: revoked,
    unreferenced, past the floor, allowed by the policy, and still kept."""
    v = _with(sq, {"retention": {"policy": "until-reencrypted"}}, clock)
    try:
        v.put("a", 1)
        v.keys.rotate()
        assert v.reencrypt().ok
        v.keys.revoke(1)
        clock.advance(minutes=1)  # past the destroy floor (twice refresh_interval)
        with pytest.raises(nc.PolicyViolationError, match=r"keep_versions = 2.*--force --yes-destroy-key-version 1"):
            v.keys.destroy(1)
        assert v.keys.version(1).status is KeyStatus.REVOKED and v.keys.version(1).wrapped_key is not None
        kv = v.keys.destroy(1, force_retention=True)  # the operator may waive a retention setting
        assert kv.status is KeyStatus.DESTROYED
        with v.store.read() as tx:
            event = tx.audit_search(limit=1, action="key.destroy")[0]
        assert "until-reencrypted" in event.details and "forced past keep_versions = 2" in event.details
        assert v.get("a") == 1
    finally:
        v.close()


def test_force_never_skips_the_floor_or_references_for_keep_versions(sq: nc.Vault, clock: FakeClock) -> None:
    v = _with(sq, {"retention": {"policy": "until-reencrypted"}}, clock)
    try:
        v.put("a", 1)
        v.keys.rotate()
        v.keys.revoke(1)
        clock.advance(minutes=1)
        with pytest.raises(nc.PolicyViolationError, match="still used by 1 credential"):
            v.keys.destroy(1, force_retention=True)
        v.keys.reinstate(1)
        assert v.reencrypt().ok
        v.keys.revoke(1)
        with pytest.raises(nc.PolicyViolationError, match="floor"):
            v.keys.destroy(1, force_retention=True)
        assert v.keys.version(1).status is KeyStatus.REVOKED
    finally:
        v.close()


def test_keep_versions_one_lets_the_previous_version_go(sq: nc.Vault, clock: FakeClock) -> None:
    v = _with(sq, {"retention": {"policy": "until-reencrypted", "keep_versions": 1}}, clock)
    try:
        v.keys.rotate()
        v.keys.revoke(1)
        clock.advance(minutes=1)
        assert v.keys.destroy(1).status is KeyStatus.DESTROYED
    finally:
        v.close()


def test_keep_versions_is_validated() -> None:
    with pytest.raises(nc.ConfigError, match="retention.keep_versions"):
        nc.KeyManagementConfig.from_dict({"retention": {"keep_versions": 0}})


# ---- 14. key access counters ----------------------------------------------------------------
def test_counters_are_flushed_in_blocks(sq: nc.Vault, clock: FakeClock) -> None:
    counter = AccessCounter(sq.store, clock, block=3, max_age=3600)
    counter.record("default", 1, True)
    counter.record("default", 1, False)
    assert access_totals(sq.store, "default") == (0, 0)  # still in memory
    counter.record("default", 1, True)
    assert access_totals(sq.store, "default") == (3, 1)  # one block written
    counter.record("default", 2, True)
    counter.flush()
    with sq.store.read() as tx:
        assert tx.key_access_totals() == {("default", 1): (3, 1), ("default", 2): (1, 0)}


def test_access_error_alert_fires_with_the_default_config(sq: nc.Vault, clock: FakeClock) -> None:
    for i in range(50):
        sq.put(f"c{i}", i)
    for i in range(50):
        assert sq.get(f"c{i}") == i
    kr = sq.keyring_name
    with sq.store.transaction() as tx:  # a tampered row: its reads fail
        a, b = tx.get_credential(kr, "c0"), tx.get_credential(kr, "c1")
        assert a is not None and b is not None
        tx.cas_update_envelopes(kr, [(b.id, b.revision, a.key_version, a.envelope)])
    assert not [x for x in sq.status()["alerts"] if x["name"] == "KeyAccessErrors"]
    for _ in range(2):
        with pytest.raises(nc.DecryptionError):
            sq.get("c1")
    sq.access.flush()  # done every 1,000 reads or 10 s, and at close; here by hand
    other = nc.open(sq.store.url, clock=clock)  # another process sees the counts
    try:
        alerts = [x for x in other.status()["alerts"] if x["name"] == "KeyAccessErrors"]
        assert alerts and "2 of 52" in alerts[0]["message"]
        text = render(other)[0].decode()
        assert 'nebula_credential_store_key_accesses_total{keyring="default",version="1"} 52.0' in text
        assert 'nebula_credential_store_key_access_failures_total{keyring="default",version="1"} 2.0' in text
    finally:
        other.close()


# ---- 15. provider retries --------------------------------------------------------------------
class _Flaky(KeyProvider):
    """A backend whose first ``failures`` calls fail transiently (the template is what is tested)."""

    name = "flaky"

    def __init__(self, failures: int, retry: RetryPolicy) -> None:
        super().__init__(retry=retry)
        self.failures = failures

    def _wrap(self, dek: SecretBytes, ctx: WrapContext) -> bytes:
        if self.failures:
            self.failures -= 1
            raise TransientProviderError("backend busy")
        return b"wrapped"

    def _unwrap(self, wrapped: bytes, ctx: WrapContext) -> SecretBytes:
        raise NotImplementedError

    def _rotate(self) -> str:
        return ""


def test_each_retry_is_a_warning_and_the_final_error_names_attempts_and_time(
        caplog: pytest.LogCaptureFixture) -> None:
    fast = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
    ctx = WrapContext("default", 1)
    with caplog.at_level(logging.WARNING, logger="nebula_credential.providers.base"):
        assert _Flaky(2, fast).wrap(SecretBytes.random(32), ctx) == b"wrapped"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "attempt 1 of 3" in warnings[0] and "attempt 2 of 3" in warnings[1]
    assert all("TransientProviderError" in w and "backend busy" not in w for w in warnings)
    with pytest.raises(nc.ProviderUnavailableError, match=r"after 3 attempts over \d+\.\d\ds"):
        _Flaky(5, fast).wrap(SecretBytes.random(32), ctx)


def test_retry_settings_come_from_the_config_and_default_to_about_two_seconds(tmp_path: Path) -> None:
    default = RetryPolicy()
    nominal = sum(min(default.max_delay, default.base_delay * 2**i) for i in range(default.attempts - 1))
    assert 1.5 <= nominal <= 3.0  # with jitter: between half and all of it
    cfg = nc.KeyManagementConfig.from_dict({"provider": {
        "type": "local", "key_file": str(tmp_path / "k.key"),
        "retry_attempts": 9, "retry_backoff": "0.5s", "retry_max": "4s"}})
    provider = open_provider(cfg.provider, create=True)
    assert provider.retry == RetryPolicy(9, 0.5, 4.0)
    with pytest.raises(nc.ConfigError, match="provider.retry_attempts"):
        nc.KeyManagementConfig.from_dict({"provider": {"retry_attempts": 0}})
    # retry settings alone do not make the section name a provider
    assert not nc.KeyManagementConfig.from_dict({"provider": {"retry_attempts": 3}}).provider.explicit


# ---- 16. custom retention from the config ------------------------------------------------------------
def test_custom_retention_sees_every_retired_version_and_the_guard_still_applies(
        sq: nc.Vault, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "opx_retention.py").write_text(
        "SEEN = []\n"
        "def allow(kv, ctx):\n"
        "    SEEN.append((kv.version, kv.status.value, ctx.references.get(kv.version, 0)))\n"
        "    return 'site rule: always'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import opx_retention  # type: ignore[import-not-found]

    v = _with(sq, {"retention": {"policy": "custom", "callable": "opx_retention:allow"}}, clock)
    try:
        v.put("a", 1)
        for _ in range(3):
            v.keys.rotate()  # v4 active; v1 (referenced by "a"), v2 and v3 valid
        v.keys.revoke(2)
        clock.advance(minutes=1)  # past the destroy floor (twice refresh_interval)
        done = cleanup(v.keys, retention_from_config(v.config), clock())
        assert {(n, status) for n, status, _ in opx_retention.SEEN} == {(1, "valid"), (2, "revoked"), (3, "valid")}
        assert (1, "valid", 1) in opx_retention.SEEN  # referenced versions are shown too
        assert [a.version for a in done] == [2] and done[0].reason == "custom:opx_retention:allow: site rule: always"
        assert v.get("a") == 1
    finally:
        v.close()


def test_custom_retention_needs_a_callable_path() -> None:
    with pytest.raises(nc.ConfigError, match="retention.callable"):
        nc.KeyManagementConfig.from_dict({"retention": {"policy": "custom", "callable": "not a path"}})
    cfg = nc.KeyManagementConfig.from_dict({"retention": {"policy": "custom", "callable": "no_such_mod:f"}})
    with pytest.raises(nc.ConfigError, match="cannot load"):
        retention_from_config(cfg)


# ---- 17. cron with a time zone, across DST -------------------------------------------------------
def _rotations_over(strategy: ScheduledRotation, start: datetime, hours: int, step: timedelta) -> list[datetime]:
    """A scheduler pass every ``step``: rotate (a new version created now) whenever it is due."""
    active = KeyVersion(keyring="k", version=1, status=KeyStatus.ACTIVE, wrapped_key=b"x", provider="local",
                        created_at=start)
    fired: list[datetime] = []
    now = start
    while now < start + timedelta(hours=hours):
        if strategy.due(active, now):
            fired.append(now)
            active = KeyVersion(keyring="k", version=active.version + 1, status=KeyStatus.ACTIVE,
                                wrapped_key=b"x", provider="local", created_at=now)
        now += step
    return fired


BERLIN = ZoneInfo("Europe/Berlin")


def test_a_0230_job_fires_once_on_the_spring_forward_day() -> None:
    s = ScheduledRotation("30 2 * * *", "Europe/Berlin")
    fired = _rotations_over(s, datetime(2026, 3, 28, 12, tzinfo=BERLIN).astimezone(UTC), 24, timedelta(minutes=5))
    assert len(fired) == 1  # 02:30 does not exist on 2026-03-29: once, at the end of the gap
    assert fired[0].astimezone(BERLIN) == datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)


def test_a_0230_job_fires_once_on_the_fall_back_day() -> None:
    s = ScheduledRotation("30 2 * * *", "Europe/Berlin")
    fired = _rotations_over(s, datetime(2026, 10, 24, 12, tzinfo=BERLIN).astimezone(UTC), 24, timedelta(minutes=5))
    assert len(fired) == 1 and fired[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, not CET


def test_time_zone_and_seconds_from_the_config() -> None:
    cfg = nc.KeyManagementConfig.from_dict({"rotation": {
        "strategy": "scheduled", "cron": "15 0 9 * * *", "timezone": "America/New_York"}})
    s = strategy_from_config(cfg)
    active = KeyVersion(keyring="k", version=1, status=KeyStatus.ACTIVE, wrapped_key=b"x", provider="local",
                        created_at=datetime(2026, 6, 1, 14, tzinfo=UTC))
    assert s.due(active, datetime(2026, 6, 2, 13, 0, 14, tzinfo=UTC)) is None  # 09:00:14 EDT
    assert s.due(active, datetime(2026, 6, 2, 13, 0, 15, tzinfo=UTC)) is not None
    with pytest.raises(nc.ConfigError, match="rotation.timezone"):
        nc.KeyManagementConfig.from_dict({"rotation": {"timezone": "Mars/Olympus"}})


# ---- 18. root keys without entropy --------------------------------------------------------------------
@pytest.mark.parametrize("material", [bytes(32), b"\x41" * 32, bytes(range(15)) * 2 + b"\x00\x01", b"abcd" * 8])
def test_a_key_file_without_entropy_is_refused(tmp_path: Path, material: bytes) -> None:
    path = tmp_path / "hand.key"
    path.write_bytes(b"nckey1 %s %s\n" % (_key_id(material).hex().encode(), base64.b64encode(material)))
    path.chmod(0o600)
    with pytest.raises(nc.ConfigError, match="distinct bytes") as err:
        LocalKeyProvider.load(path)
    assert base64.b64encode(material).decode() not in str(err.value)


def test_a_random_key_file_is_accepted(tmp_path: Path) -> None:
    LocalKeyProvider.create(tmp_path / "r.key")
    assert LocalKeyProvider.load(tmp_path / "r.key").describe()["type"] == "local"
    assert json.dumps(LocalKeyProvider.load(tmp_path / "r.key").describe())


# ---- the new store queries on every backend -------------------------------------------------------
def test_key_access_counters_and_list_heads_on_every_store(store_url: str, key_file: Path, clock: FakeClock) -> None:
    with nc.open(store_url, create=True, clock=clock) as v:
        for i in range(7):
            v.put(f"id-{i}", i, scope="user")
        heads = list(v.list_heads(after="id-2", limit=3, page=2))
        assert [(h[0], h[1], h[2], h[3]) for h in heads] == [("id-3", "user", 1, 1), ("id-4", "user", 1, 1),
                                                              ("id-5", "user", 1, 1)]
        assert heads[0][4] == clock().timestamp()
        with v.store.read() as tx:
            assert tx.existing_ids("default", [f"id-{i}" for i in range(5, 1200)]) == {"id-5", "id-6"}
        with v.store.transaction() as tx:
            tx.add_key_access("default", 1, 100, 5, 1)
            tx.add_key_access("default", 1, 100, 2, 0)
            tx.add_key_access("default", 1, 101, 1, 1)
            tx.add_key_access("other", 3, 90, 4, 0)
        with v.store.read() as tx:
            assert tx.key_access_totals() == {("default", 1): (8, 2), ("other", 3): (4, 0)}
            assert tx.key_access_totals(101) == {("default", 1): (1, 1)}
