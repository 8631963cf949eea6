"""KeyManager: versions side by side, one active per keyring (also across processes), lifecycle rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.models import KeyStatus

from .helpers import FakeClock, cli_env


def test_round_trip_and_re_encrypt() -> None:
    km = nc.KeyManager.ephemeral()
    blob = km.encrypt(b"secret", aad=b"ctx")
    assert km.decrypt(blob, aad=b"ctx") == b"secret"
    with pytest.raises(nc.DecryptionError):
        km.decrypt(blob, aad=b"other")
    km.rotate()
    moved = km.re_encrypt(blob, aad=b"ctx")
    assert int.from_bytes(moved[4:8], "big") == 2 and km.decrypt(moved, aad=b"ctx") == b"secret"


def test_many_versions_decrypt_side_by_side(vault: nc.Vault) -> None:
    expected = {}
    for v in range(1, 7):
        for i in range(5):
            vault.put(f"v{v}-{i}", {"v": v, "i": i})
            expected[f"v{v}-{i}"] = {"v": v, "i": i}
        vault.keys.rotate()
    assert vault.keys.active_version().version == 7
    assert set(vault.keys.credential_counts()) == {1, 2, 3, 4, 5, 6}
    fresh = nc.open(vault.store.url)  # another process: nothing cached
    try:
        assert all(fresh.get(k) == val for k, val in expected.items())
    finally:
        fresh.close()


def test_one_active_per_keyring(vault: nc.Vault) -> None:
    other = vault.keyring("tenant-b")
    other.keys.initialize()
    for _ in range(3):
        vault.keys.rotate()
    other.keys.rotate()
    for km in (vault.keys, other.keys):
        assert [kv.status for kv in km.list()].count(KeyStatus.ACTIVE) == 1
    assert vault.keys.active_version().version == 4 and other.keys.active_version().version == 2


ROTATOR = """
import sys, nebula_credential as nc
v = nc.open(sys.argv[1])
sys.stdin.readline()  # barrier: start together
for _ in range(int(sys.argv[2])):
    v.keys.rotate(reason="race")
print("done")
"""


def test_two_processes_rotating_at_once_never_make_two_active(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    nc.open(url, create=True).close()
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(key_file))
    procs = [subprocess.Popen([sys.executable, "-c", ROTATOR, url, "5"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    with nc.open(url) as v:
        versions = v.keys.list()
        assert [kv.version for kv in versions] == list(range(1, 12))
        assert [kv.status for kv in versions].count(KeyStatus.ACTIVE) == 1
        assert versions[-1].status is KeyStatus.ACTIVE
        rotations = [r for r in v.audit.rows() if r.action == "key.rotate"]
        assert len(rotations) == 10 and v.audit.verify().ok


def test_revoked_version_names_itself_and_the_fix(vault: nc.Vault) -> None:
    vault.put("a", {"x": 1})
    vault.keys.rotate()
    vault.keys.revoke(1)
    with pytest.raises(nc.KeyRevokedError) as err:
        vault.get("a")
    assert "version 1" in str(err.value) and "keys reinstate 1" in str(err.value)
    assert err.value.version == 1
    vault.keys.reinstate(1)
    assert vault.get("a") == {"x": 1}


def test_lifecycle_rules(vault: nc.Vault, clock: FakeClock) -> None:
    vault.put("a", {"x": 1})
    with pytest.raises(nc.PolicyViolationError, match="rotate first"):
        vault.keys.revoke(1)
    vault.keys.rotate()
    with pytest.raises(nc.PolicyViolationError, match="keys revoke 1"):
        vault.keys.destroy(1)
    with pytest.raises(nc.PolicyViolationError, match="not revoked"):
        vault.keys.reinstate(1)
    vault.keys.revoke(1)
    clock.advance(seconds=10)
    with pytest.raises(nc.PolicyViolationError, match="still used by 1"):
        vault.keys.destroy(1, force_retention=True)  # no flag skips the reference check
    with vault.store.transaction() as tx:  # an attacker with write access to the table strands "a"
        tx._exec("UPDATE key_versions SET status = 'destroyed', wrapped_key = NULL WHERE version = 1")  # type: ignore[attr-defined]
    vault.keys.refresh()
    kv = vault.keys.version(1)
    assert kv.status is KeyStatus.DESTROYED and kv.wrapped_key is None
    with pytest.raises(nc.KeyDestroyedError, match="destroyed"):
        vault.get("a")
    with pytest.raises(nc.PolicyViolationError, match="cannot be reinstated"):
        vault.keys.reinstate(1)
    with pytest.raises(nc.KeyNotFoundError):
        vault.keys.version(42)


def test_encryption_counter_is_reserved_in_blocks(vault: nc.Vault) -> None:
    from nebula_credential.keys import RESERVATION_BLOCK

    writes_before = vault.keys.version(1).encryptions
    for i in range(1000):
        vault.keys.encrypt(b"x", b"%d" % i)
    reserved = vault.keys.version(1).encryptions
    assert writes_before == 0 and 1000 <= reserved <= 1000 + RESERVATION_BLOCK
    # blocks grow 16, 16, 32, 64, ...: about log2(1000/16)+2 store round trips, not 1000
    assert reserved < 2 * 1000 + 16


def test_usage_bound_rotates_automatically(tmp_path: Path, key_file: Path) -> None:
    cfg = nc.KeyManagementConfig.from_dict({"rotation": {"max_encryptions": 100}})
    with nc.open(f"sqlite:///{tmp_path / 'u.db'}", config=cfg, create=True) as v:
        for i in range(300):
            v.put(f"c{i}", i)
        assert v.keys.active_version().version >= 2
        assert all(kv.encryptions <= 300 for kv in v.keys.list())
        assert all(v.get(f"c{i}") == i for i in range(300))


def test_refresh_sees_rotation_by_another_process(vault: nc.Vault, tmp_path: Path) -> None:
    other = nc.open(vault.store.url)
    try:
        other.put("warm", 1)
        vault.keys.rotate()
        other.keys._refresh_at = 0.0  # the refresh interval elapsed
        other.put("after", 2)
        assert other.get_record("after").key_version == 2
    finally:
        other.close()


def test_revocation_by_another_process_stops_a_cached_decrypt(vault: nc.Vault) -> None:
    """The hot path's per-version decrypt map is dropped with the version (issue 27, target 4)."""
    other = nc.open(vault.store.url)
    try:
        vault.put("a", {"x": 1})
        assert other.get("a") == {"x": 1}  # v1 cached in the other instance, decrypt bound
        vault.keys.rotate()
        vault.keys.revoke(1)
        assert other.get("a") == {"x": 1}  # within refresh_interval: the cached version still serves
        other.keys._refresh_at = 0.0  # the refresh interval elapsed
        with pytest.raises(nc.KeyRevokedError):
            other.get("a")
        vault.keys.reinstate(1)
        other.keys._refresh_at = 0.0
        assert other.get("a") == {"x": 1}
    finally:
        other.close()


def test_failed_authentication_names_the_version_and_short_blobs_too() -> None:
    km = nc.KeyManager.ephemeral()
    km.rotate()
    blob = km.encrypt(b"secret", aad=b"ctx")
    with pytest.raises(nc.DecryptionError, match="key version 2"):
        km.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), aad=b"ctx")
    with pytest.raises(nc.DecryptionError, match="key version 2"):
        km.decrypt(blob[:30], aad=b"ctx")  # a cached version's header, too short for a tag
