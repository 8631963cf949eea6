"""Transit operations at the facade level: keys as keyrings, Vault's shapes, our lifecycle."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nebula_credential as nc
from nebula_credential import envelope as env
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import (
    DecryptionError,
    NebulaCredentialError,
    PolicyViolationError,
    StoreError,
)
from nebula_credential.models import KeyStatus
from nebula_credential.transit import (
    Transit,
    TransitInputError,
    TransitKeyNotFoundError,
    crypto,
    parse_ciphertext,
)
from nebula_credential.transit.crypto import derive
from nebula_credential.transit.requests import (
    handle_configure,
    handle_datakey,
    handle_decrypt,
    handle_encrypt,
    handle_rewrap,
    read_key,
)

from .helpers import FakeClock, cli_env, run_cli

B = base64.b64encode
CONFIG = {"retention": {"policy": "minimum-retention", "min_retention": "1h"}}


def b64(data: bytes) -> str:
    return B(data).decode()


@pytest.fixture
def vault(tmp_path: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", config=KeyManagementConfig.from_dict(CONFIG),
                clock=clock, create=True)
    yield v
    v.close()


@pytest.fixture
def transit(vault: nc.Vault) -> Transit:
    return Transit(vault)


def statuses(transit: Transit, name: str) -> dict[int, str]:
    return {v["version"]: v["status"] for v in read_key(transit, name)["nebula"]["versions"]}


# ---- keys -------------------------------------------------------------------------------
def test_create_and_read_in_vaults_shape(transit: Transit, clock: FakeClock) -> None:
    cfg = transit.create_key("app")
    assert cfg.keyring == "transit/app"
    data = read_key(transit, "app")
    assert data["keys"] == {"1": int(clock.now.timestamp())}
    assert data["type"] == "aes256-gcm96"
    assert (data["latest_version"], data["min_decryption_version"], data["min_encryption_version"],
            data["min_available_version"]) == (1, 1, 0, 0)
    assert data["deletion_allowed"] is False and data["exportable"] is False and data["derived"] is False
    assert data["supports_encryption"] and data["supports_decryption"] and data["supports_derivation"]
    assert data["nebula"]["versions"][0]["status"] == "active"
    assert data["nebula"]["rotation"]["strategy"] == "usage"
    # the key is a keyring: the ordinary key manager sees the same version
    assert [v.version for v in transit.vault.keyring("transit/app").keys.list()] == [1]
    assert transit.create_key("app") == cfg  # creating an existing key changes nothing
    assert transit.key_names() == ["app"]


@pytest.mark.parametrize("key_type", ["rsa-1024", "chacha20", "aes192-gcm96", "bogus"])
def test_unsupported_type_names_the_supported_ones(transit: Transit, key_type: str) -> None:
    # issue 26 made rsa-*, chacha20-poly1305, aes128-gcm96 and the others supported; unknown types still name them
    with pytest.raises(TransitInputError, match="supported types: aes128-gcm96, aes256-gcm96, chacha20-poly1305"):
        transit.create_key("k", type=key_type)
    assert transit.key_names() == []


def test_convergent_refused(transit: Transit) -> None:
    # exportable keys are supported since issue 26 (export under policy); convergent encryption is not
    with pytest.raises(TransitInputError, match="convergent"):
        transit.create_key("k", derived=True, convergent_encryption=True)
    assert transit.key_names() == []


@pytest.mark.parametrize("name", ["", "a/b", "../x", "-lead", "x" * 129, "spa ce", "é", "app\n"])
def test_bad_names_refused(transit: Transit, name: str) -> None:
    with pytest.raises(TransitInputError, match="invalid key name"):
        transit.create_key(name)


def test_unknown_key(transit: Transit) -> None:
    with pytest.raises(TransitKeyNotFoundError):
        read_key(transit, "nope")
    with pytest.raises(TransitInputError, match="encryption key not found"):
        handle_decrypt(transit, "nope", {"ciphertext": "vault:v1:AAAA"})


# ---- data ---------------------------------------------------------------------------------
def test_encrypt_decrypt_and_the_envelope_inside(transit: Transit) -> None:
    transit.create_key("app")
    ct = transit.encrypt("app", b"secret")
    assert ct.startswith("vault:v1:")
    version, blob = parse_ciphertext(ct)
    assert version == 1 and env.parse(blob).key_version == 1
    assert transit.decrypt("app", ct) == b"secret"


def test_a_keys_sealer_and_opener_are_kept_until_its_settings_change(transit: Transit) -> None:
    """Built once per loaded settings, not per request; a reload that replaces the settings
    (another worker changed them) is followed at the next use."""
    transit.create_key("app")
    key = transit.live_key("app")
    sealer, opener = crypto.sealer(key), crypto.opener(key)
    assert crypto.sealer(key) is sealer and crypto.opener(key) is opener
    ct = transit.encrypt("app", b"secret")
    key.config = replace(key.config, derived=True)  # settings read again, here ones the old pair would ignore
    with pytest.raises(TransitInputError, match="missing 'context'"):
        crypto.sealer(key).seal(b"secret", None, None)
    with pytest.raises(TransitInputError, match="missing 'context'"):
        crypto.opener(key).open(ct, None, None)


def test_ciphertext_of_another_key_or_context_fails(transit: Transit) -> None:
    transit.create_key("a")
    transit.create_key("b")
    transit.create_key("d", derived=True)
    ct = transit.encrypt("a", b"secret", associated_data=b"row-1")
    with pytest.raises(DecryptionError):
        transit.decrypt("b", ct, associated_data=b"row-1")  # same version number, other key
    with pytest.raises(DecryptionError):
        transit.decrypt("a", ct, associated_data=b"row-2")
    with pytest.raises(DecryptionError):
        transit.decrypt("a", ct)
    dct = transit.encrypt("d", b"secret", context=b"tenant-1")
    assert transit.decrypt("d", dct, context=b"tenant-1") == b"secret"
    with pytest.raises(DecryptionError):
        transit.decrypt("d", dct, context=b"tenant-2")
    with pytest.raises(TransitInputError, match="missing 'context'"):
        transit.encrypt("d", b"secret")
    # a version edited in the prefix or in the header never decrypts
    _, blob = parse_ciphertext(ct)
    with pytest.raises(TransitInputError, match="does not match"):
        transit.decrypt("a", "vault:v2:" + b64(blob), associated_data=b"row-1")
    edited = blob[:4] + (2).to_bytes(4, "big") + blob[8:]
    with pytest.raises((TransitInputError, NebulaCredentialError)):
        transit.decrypt("a", "vault:v2:" + b64(edited), associated_data=b"row-1")


def test_derived_subkeys_differ_per_context(transit: Transit) -> None:
    transit.create_key("d", derived=True)
    key = transit.live_key("d")
    k1 = derive(key, 1, b"d", b"ctx-1")
    k2 = derive(key, 1, b"d", b"ctx-2")
    assert k1 != k2 and len(k1) == 32
    assert read_key(transit, "d")["kdf"] == "hkdf_sha256"


@pytest.mark.parametrize("text", ["", "garbage", "vault:v1:", "vault:vx:AAAA", "vault:v1:!!!!",
                                  "vault:v0:AAAA", "vault:v1:" + b64(b"NC\x01\x01" + b"\x00" * 40)])
def test_malformed_ciphertexts_are_input_errors(transit: Transit, text: str) -> None:
    transit.create_key("app")
    with pytest.raises(TransitInputError):
        transit.decrypt("app", text)


def test_rotate_rewrap_and_key_version(transit: Transit) -> None:
    transit.create_key("app")
    old = transit.encrypt("app", b"s", associated_data=b"ad")
    assert transit.rotate("app").version == 2
    assert transit.encrypt("app", b"s").startswith("vault:v2:")
    new = transit.rewrap("app", old, associated_data=b"ad")
    assert new.startswith("vault:v2:") and transit.decrypt("app", new, associated_data=b"ad") == b"s"
    assert transit.rewrap("app", new, associated_data=b"ad") == new  # already current: unchanged
    with pytest.raises(TransitInputError, match="higher than the latest"):
        transit.encrypt("app", b"s", key_version=3)
    with pytest.raises(PolicyViolationError, match="only the active version"):
        transit.encrypt("app", b"s", key_version=1)
    assert transit.encrypt("app", b"s", key_version=2).startswith("vault:v2:")


def test_min_decryption_version_revokes_through_the_lifecycle(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("app")
    v1 = transit.encrypt("app", b"s")
    transit.rotate("app")
    transit.rotate("app")
    handle_configure(transit, "app", {"min_decryption_version": 2})
    assert statuses(transit, "app") == {1: "revoked", 2: "valid", 3: "active"}
    assert set(read_key(transit, "app")["keys"]) == {"2", "3"}
    with pytest.raises(TransitInputError, match="disallowed by policy"):
        transit.decrypt("app", v1)
    with vault.store.read() as tx:
        events = [r.action for r in tx.audit_search(keyring="transit/app")]
    assert "key.revoke" in events and "transit.key.config" in events
    handle_configure(transit, "app", {"min_decryption_version": 1})  # lowering reinstates
    assert statuses(transit, "app")[1] == "valid"
    assert transit.decrypt("app", v1) == b"s"
    with pytest.raises(TransitInputError, match="latest key version is 3"):
        handle_configure(transit, "app", {"min_decryption_version": 4})
    with pytest.raises(TransitInputError, match="latest key version is 3"):
        handle_configure(transit, "app", {"min_encryption_version": 9})
    with pytest.raises(TransitInputError, match="greater than minimum encryption"):
        handle_configure(transit, "app", {"min_decryption_version": 3, "min_encryption_version": 2})
    assert statuses(transit, "app") == {1: "valid", 2: "valid", 3: "active"}  # nothing applied


def test_trim_destroys_through_the_destroy_guard(transit: Transit, clock: FakeClock) -> None:
    transit.create_key("app")
    transit.rotate("app")
    transit.rotate("app")
    with pytest.raises(TransitInputError, match="minimum encryption version is not set"):
        transit.trim("app", 2)
    handle_configure(transit, "app", {"min_decryption_version": 2, "min_encryption_version": 2})
    with pytest.raises(TransitInputError, match="greater than minimum"):
        transit.trim("app", 3)
    clock.advance(hours=2)  # past the floor and the retention minimum (1h)
    cfg = transit.trim("app", 2)
    assert cfg.min_available_version == 2
    assert statuses(transit, "app") == {1: "destroyed", 2: "valid", 3: "active"}
    assert read_key(transit, "app")["min_available_version"] == 2
    with pytest.raises(TransitInputError, match="decremented"):
        transit.trim("app", 1)


def test_trim_refuses_what_the_guard_refuses(transit: Transit, vault: nc.Vault, clock: FakeClock) -> None:
    transit.create_key("app")
    vault.keyring("transit/app").put("row", {"x": 1})  # a stored credential under v1
    transit.rotate("app")
    transit.rotate("app")
    handle_configure(transit, "app", {"min_decryption_version": 2, "min_encryption_version": 2})
    clock.advance(hours=2)
    with pytest.raises(PolicyViolationError, match="still used by 1 credential"):
        transit.trim("app", 2)
    assert statuses(transit, "app")[1] == "revoked"
    assert read_key(transit, "app")["min_available_version"] == 0


def test_trim_honours_keep_versions(transit: Transit, clock: FakeClock) -> None:
    """Stricter than Vault on purpose: the previous version is inside keep_versions (default 2),
    so trimming it right after one rotation is refused, naming the setting; nothing is destroyed."""
    transit.create_key("app")
    transit.rotate("app")
    handle_configure(transit, "app", {"min_decryption_version": 2, "min_encryption_version": 2})
    clock.advance(hours=2)  # past the floor and the retention minimum (1h)
    with pytest.raises(PolicyViolationError, match="keep_versions = 2"):
        transit.trim("app", 2)
    assert statuses(transit, "app") == {1: "revoked", 2: "active"}
    assert read_key(transit, "app")["min_available_version"] == 0
    transit.rotate("app")  # v3 active: v1 is outside keep_versions now
    assert transit.trim("app", 2).min_available_version == 2
    assert statuses(transit, "app")[1] == "destroyed"


def test_delete_needs_deletion_allowed_and_no_stored_credentials(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("app")
    old = transit.encrypt("app", b"s")
    with pytest.raises(TransitInputError, match="deletion is not allowed"):
        transit.delete_key("app")
    handle_configure(transit, "app", {"deletion_allowed": True})
    vault.keyring("transit/app").put("cred", {"x": 1})
    with pytest.raises(PolicyViolationError, match="stored credential"):
        transit.delete_key("app")
    vault.keyring("transit/app").delete("cred")
    transit.delete_key("app")
    assert transit.key_names() == []
    with pytest.raises(TransitKeyNotFoundError):
        read_key(transit, "app")
    versions = vault.keyring("transit/app").keys.list()
    assert [v.status for v in versions] == [KeyStatus.REVOKED]  # material left to retention
    again = transit.create_key("app")
    assert again.keyring == "transit/app#2"
    with pytest.raises(DecryptionError):
        transit.decrypt("app", old)  # a re-created key never accepts the old key's ciphertexts
    # the daemon's pass over every keyring copes with the deleted one
    assert vault.keyring("transit/app").maintain().rotated is None


# ---- usage, rotation schedules, maintain ---------------------------------------------------------
def test_max_encryptions_with_auto_rotation_off_refuses(transit: Transit) -> None:
    transit.create_key("app")
    handle_configure(transit, "app", {"max_encryptions": 3, "auto_rotation": False})
    for _ in range(3):
        transit.encrypt("app", b"s")
    with pytest.raises(PolicyViolationError, match=r"reached max_encryptions \(3\) and auto_rotation is off"):
        transit.encrypt("app", b"s")
    transit.rotate("app")
    assert transit.encrypt("app", b"s").startswith("vault:v2:")


def test_max_encryptions_with_auto_rotation_rotates(transit: Transit) -> None:
    transit.create_key("app")
    handle_configure(transit, "app", {"max_encryptions": 3})
    cts = [transit.encrypt("app", b"s") for _ in range(5)]
    assert [c.split(":")[1] for c in cts] == ["v1", "v1", "v1", "v2", "v2"]
    assert all(transit.decrypt("app", c) == b"s" for c in cts)


def test_auto_rotate_period_via_maintain_and_no_reference_lifecycle(
        transit: Transit, vault: nc.Vault, clock: FakeClock) -> None:
    transit.create_key("app")
    with pytest.raises(TransitInputError, match="at least an hour"):
        handle_configure(transit, "app", {"auto_rotate_period": "10m"})
    handle_configure(transit, "app", {"auto_rotate_period": "24h"})
    assert read_key(transit, "app")["auto_rotate_period"] == 86400
    kr = vault.keyring("transit/app")
    assert kr.maintain().rotated is None
    clock.advance(hours=25)
    assert kr.maintain().rotated == (1, 2)
    clock.advance(days=30)  # far past the grace period: clients may still hold v1 ciphertexts
    report = kr.maintain()
    assert report.lifecycle == [] and statuses(transit, "app")[1] == "valid"


def test_rotation_cron_in_a_time_zone(transit: Transit, vault: nc.Vault, clock: FakeClock) -> None:
    transit.create_key("app")  # 2026-01-01 00:00 UTC = 01:00 in Berlin
    handle_configure(transit, "app", {"rotation_cron": "0 2 * * *", "rotation_timezone": "Europe/Berlin"})
    assert read_key(transit, "app")["nebula"]["rotation"]["strategy"] == "scheduled+usage"
    kr = vault.keyring("transit/app")
    clock.advance(minutes=50)  # 01:50 Berlin
    assert kr.maintain().rotated is None
    clock.advance(minutes=15)  # 02:05 Berlin, 01:05 UTC: a UTC cron would not have fired
    assert kr.maintain().rotated == (1, 2)
    with pytest.raises(TransitInputError, match="time zone"):
        handle_configure(transit, "app", {"rotation_timezone": "Mars/Base"})
    with pytest.raises(TransitInputError, match="cron"):
        handle_configure(transit, "app", {"rotation_cron": "every day"})


# ---- Vault request bodies ---------------------------------------------------------------------
def test_batch_with_one_bad_item_reports_its_position(transit: Transit) -> None:
    transit.create_key("app")
    body = {"batch_input": [{"plaintext": b64(b"a"), "reference": "r0"}, {"plaintext": "!!", "reference": "r1"},
                            {"plaintext": b64(b"c")}]}
    data, batch = handle_encrypt(transit, "app", body)
    assert batch.batched and batch.failed == 1
    results = data["batch_results"]
    assert [("error" in r) for r in results] == [False, True, False]
    assert [r["reference"] for r in results] == ["r0", "r1", ""]
    dec, _ = handle_decrypt(transit, "app", {"batch_input": [{"ciphertext": results[0]["ciphertext"]},
                                                            {"ciphertext": "x"}]})
    assert dec["batch_results"][0]["plaintext"] == b64(b"a")
    assert dec["batch_results"][1]["error"] == "invalid ciphertext: no prefix"


def test_encrypt_creates_the_key_on_first_use(transit: Transit) -> None:
    data, _ = handle_encrypt(transit, "fresh", {"plaintext": b64(b"x")})
    assert data["key_version"] == 1 and transit.key_names() == ["fresh"]
    with pytest.raises(TransitKeyNotFoundError):
        handle_encrypt(transit, "other", {"plaintext": b64(b"x")}, create=False)


def test_datakey_random_hash_hmac(transit: Transit) -> None:
    transit.create_key("app")
    for bits in (128, 256, 512):
        out = handle_datakey(transit, "app", "plaintext", {"bits": bits})
        key = base64.b64decode(out["plaintext"])
        assert len(key) == bits // 8 and transit.decrypt("app", out["ciphertext"]) == key
    wrapped = handle_datakey(transit, "app", "wrapped", {})
    assert "plaintext" not in wrapped
    with pytest.raises(TransitInputError, match="invalid bit length"):
        handle_datakey(transit, "app", "plaintext", {"bits": 100})
    from nebula_credential.transit import hash_input, random_bytes

    assert len(bytes.fromhex(random_bytes({"format": "hex"}, 16)["random_bytes"])) == 16
    assert len(base64.b64decode(random_bytes({})["random_bytes"])) == 32
    with pytest.raises(TransitInputError):
        random_bytes({}, 0)
    assert hash_input({"input": b64(b"abc")})["sum"] == hashlib.sha256(b"abc").hexdigest()
    assert hash_input({"input": b64(b"abc"), "format": "base64"}, "sha2-512")["sum"] == b64(
        hashlib.sha512(b"abc").digest())
    h1 = transit.hmac("app", b"data")
    assert h1.startswith("vault:v1:") and transit.hmac("app", b"data") == h1
    transit.rotate("app")
    assert transit.hmac("app", b"data").startswith("vault:v2:") and transit.hmac("app", b"data") != h1
    assert transit.hmac("app", b"data", key_version=1) == h1


def test_secrets_never_in_errors_or_audit(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("app")
    transit.create_key("d", derived=True)
    secret = b"TOP-SECRET-PLAINTEXT"
    ct = transit.encrypt("app", secret, associated_data=b"AD-VALUE-XYZ")
    transit.encrypt("d", secret, context=b"CTX-VALUE-XYZ")
    with pytest.raises(DecryptionError) as err:
        transit.decrypt("app", ct, associated_data=b"AD-VALUE-OTHER")
    assert "AD-VALUE" not in str(err.value) and secret.decode() not in str(err.value)
    with vault.store.read() as tx:
        rows = tx.audit_search(limit=1000)
    dump = json.dumps([r.details for r in rows])
    for needle in ("TOP-SECRET", "AD-VALUE", "CTX-VALUE", b64(secret)):
        assert needle not in dump


# ---- hypothesis --------------------------------------------------------------------------------
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(plaintext=st.binary(max_size=512), ad=st.none() | st.binary(max_size=64),
       context=st.binary(min_size=1, max_size=64))
def test_roundtrip_any_input(transit: Transit, plaintext: bytes, ad: bytes | None, context: bytes) -> None:
    if "d" not in transit.key_names():
        transit.create_key("app")
        transit.create_key("d", derived=True)
    ct = transit.encrypt("app", plaintext, associated_data=ad)
    assert transit.decrypt("app", ct, associated_data=ad) == plaintext
    dct = transit.encrypt("d", plaintext, associated_data=ad, context=context)
    assert transit.decrypt("d", dct, associated_data=ad, context=context) == plaintext
    with pytest.raises(DecryptionError):
        transit.decrypt("d", dct, associated_data=ad, context=context + b"x")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_fields = st.sampled_from(["plaintext", "ciphertext", "context", "associated_data", "key_version", "batch_input",
                           "bits", "min_decryption_version", "min_encryption_version", "deletion_allowed",
                           "auto_rotate_period", "rotation_cron", "max_encryptions", "reference", "type"])


@_settings
@given(body=st.dictionaries(_fields, _json | st.text(max_size=40), max_size=5))
def test_any_body_is_answered_or_refused_with_a_typed_error(transit: Transit, body: dict[str, Any]) -> None:
    if not transit.key_names():
        transit.create_key("app")
    for call in (lambda: handle_encrypt(transit, "app", body), lambda: handle_decrypt(transit, "app", body),
                 lambda: handle_rewrap(transit, "app", body), lambda: handle_datakey(transit, "app", "wrapped", body)):
        with contextlib.suppress(NebulaCredentialError):
            call()
    before = read_key(transit, "app")
    try:
        handle_configure(transit, "app", body)
    except NebulaCredentialError:
        assert read_key(transit, "app") == before  # a refused config changes nothing


@_settings
@given(text=st.text(max_size=80) | st.builds(lambda b: "vault:v1:" + b64(b), st.binary(max_size=80)))
def test_any_ciphertext_text_is_refused_with_a_typed_error(transit: Transit, text: str) -> None:
    if not transit.key_names():
        transit.create_key("app")
    with pytest.raises(NebulaCredentialError):
        transit.decrypt("app", text)


# ---- bulk rewrap and the CLI -----------------------------------------------------------------------
def test_bulk_rewrap_10000_items(transit: Transit, capsys: pytest.CaptureFixture[str]) -> None:
    transit.create_key("app")
    body = {"batch_input": [{"plaintext": b64(i.to_bytes(4, "big") * 8)} for i in range(10_000)]}
    data, _ = handle_encrypt(transit, "app", body)
    transit.rotate("app")
    start = time.perf_counter()
    out, batch = handle_rewrap(transit, "app", {"batch_input": [
        {"ciphertext": r["ciphertext"]} for r in data["batch_results"]]})
    elapsed = time.perf_counter() - start
    assert batch.batched and batch.failed == 0 and batch.versions == {2}
    assert all(r["key_version"] == 2 for r in out["batch_results"])
    with capsys.disabled():
        print(f"\nbulk rewrap: 10000 items in {elapsed:.3f}s = {10_000 / elapsed:,.0f} items/s")


def test_cli_rewrap_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    v = nc.open(db, create=True)
    t = Transit(v)
    t.create_key("app")
    lines = [json.dumps(t.encrypt("app", b"one")),
             json.dumps({"id": 7, "ciphertext": t.encrypt("app", b"two", associated_data=b"r7"),
                         "associated_data": b64(b"r7")}),
             json.dumps("vault:v1:broken")]
    t.rotate("app")
    v.close()
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    env_ = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    r = run_cli("--db", db, "--json", "transit", "rewrap-file", str(src), str(dst), "--key", "app",
                cwd=tmp_path, env=env_)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 line(s)")
    assert f"{src}:3:" in r.stderr and "broken" not in r.stderr
    assert json.loads(r.stdout) == {"key": "app", "lines": 3, "rewrapped": 2, "failed": 1}
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[0].startswith("vault:v2:") and out[1]["ciphertext"].startswith("vault:v2:") and out[1]["id"] == 7
    assert out[2] == "vault:v1:broken"
    v = nc.open(db)
    t = Transit(v)
    assert t.decrypt("app", out[0]) == b"one"
    assert t.decrypt("app", out[1]["ciphertext"], associated_data=b"r7") == b"two"
    v.close()
    r = run_cli("--db", db, "transit", "rewrap-file", str(src), str(dst), cwd=tmp_path, env=env_)
    assert r.returncode == 2 and r.stderr.startswith("error:")


def test_settings_pointing_at_another_keys_keyring_are_refused(transit: Transit, vault: nc.Vault) -> None:
    """A database writer must not let a token for key ``b`` decrypt key ``a``'s ciphertexts."""
    transit.create_key("a")
    transit.create_key("b")
    ct = transit.encrypt("a", b"tenant-a data")
    with vault.store.transaction() as tx:
        raw = json.loads(tx.get_meta("transit.key:transit/b") or "{}")
        tx.set_meta("transit.key:transit/b", json.dumps(raw | {"keyring": "transit/a"}))
    with pytest.raises(StoreError, match="another key or keyring"):
        Transit(vault).decrypt("b", ct)


def test_sequence_on_each_store_and_across_instances(store_url: str, key_file: Path, clock: FakeClock) -> None:
    """SQLite and PostgreSQL; a second process-like instance sees settings and rotations at once."""
    config = KeyManagementConfig.from_dict(CONFIG | {"keys": {"refresh_interval": "0s"}})
    with nc.open(store_url, config=config, clock=clock, create=True) as v1, \
            nc.open(store_url, config=config, clock=clock) as v2:
        a, b = Transit(v1), Transit(v2)
        a.create_key("app")
        old = b.encrypt("app", b"x", associated_data=b"r")
        a.rotate("app")
        a.rotate("app")
        assert b.encrypt("app", b"x").startswith("vault:v3:")  # b follows a's rotation
        handle_configure(a, "app", {"min_decryption_version": 2, "min_encryption_version": 2})
        with pytest.raises(TransitInputError, match="disallowed by policy"):
            b.decrypt("app", old, associated_data=b"r")
        new = b.rewrap("app", b.encrypt("app", b"y"))
        clock.advance(hours=2)
        assert b.trim("app", 2).min_available_version == 2
        assert statuses(a, "app") == {1: "destroyed", 2: "valid", 3: "active"}
        assert a.decrypt("app", new) == b"y"
        handle_configure(b, "app", {"deletion_allowed": True})
        a.delete_key("app")
        assert b.key_names() == []
        with pytest.raises(TransitInputError, match="encryption key not found"):
            handle_decrypt(b, "app", {"ciphertext": new})
        assert v1.audit.verify().ok


def test_operations_feed_the_metrics_observer(transit: Transit, vault: nc.Vault) -> None:
    seen: list[tuple[str, str, bool]] = []
    vault.observer = lambda keyring, op, seconds, ok: seen.append((keyring, op, ok))
    transit.create_key("app")
    ct = transit.encrypt("app", b"x")
    transit.decrypt("app", ct)
    with pytest.raises(DecryptionError):
        transit.decrypt("app", ct, associated_data=b"other")
    assert seen == [("transit/app", "encrypt", True), ("transit/app", "decrypt", True),
                    ("transit/app", "decrypt", False)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=140))
def test_any_key_name_is_accepted_or_refused_cleanly(transit: Transit, name: str) -> None:
    import re

    valid = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", name) is not None
    try:
        transit.check_name(name)
    except TransitInputError:
        assert not valid
    else:
        assert valid


def test_encrypt_upsert_writes_nothing_when_refused_and_derives_with_context(transit: Transit) -> None:
    with pytest.raises(TransitInputError, match="not valid base64"):
        handle_encrypt(transit, "never", {"plaintext": "!!"})
    with pytest.raises(TransitInputError, match="missing plaintext"):
        handle_encrypt(transit, "never", {"batch_input": [{"context": b64(b"c")}]})
    assert transit.key_names() == []
    data, _ = handle_encrypt(transit, "ctx", {"plaintext": b64(b"x"), "context": b64(b"c")})
    assert read_key(transit, "ctx")["derived"] is True
    assert transit.decrypt("ctx", data["ciphertext"], context=b"c") == b"x"


def test_daemon_pass_over_ordinary_live_and_deleted_transit_keyrings(
        transit: Transit, vault: nc.Vault, clock: FakeClock) -> None:
    from nebula_credential.daemon import Daemon

    vault.put("cred", {"x": 1})
    transit.create_key("live", auto_rotate_period=86400)
    transit.create_key("gone")
    handle_configure(transit, "gone", {"deletion_allowed": True})
    transit.delete_key("gone")
    clock.advance(days=2)
    reports = {r.keyring: r for r in Daemon(vault, metrics_addr=None, clock=clock).run_pass()}
    assert set(reports) == {"default", "transit/live", "transit/gone"}
    assert reports["transit/live"].rotated == (1, 2)
    assert reports["transit/gone"].rotated is None
    assert statuses(transit, "live") == {1: "valid", 2: "active"}


@pytest.mark.parametrize("auto", [True, False])
def test_usage_bound_is_exact_for_any_keyring(auto: bool) -> None:
    """Blocks stop at max_encryptions: rotation (or refusal) comes at the bound, not at the first block."""
    config = KeyManagementConfig.from_dict({"rotation": {"max_encryptions": 3}, "keys": {"auto_rotation": auto}})
    km = nc.KeyManager.ephemeral(config=config)
    versions = [env.peek_version(km.encrypt(b"x")) for _ in range(3)]
    assert versions == [1, 1, 1]
    if auto:
        assert [env.peek_version(km.encrypt(b"x")) for _ in range(4)] == [2, 2, 2, 3]
    else:
        with pytest.raises(PolicyViolationError, match="auto_rotation is off"):
            km.encrypt(b"x")


def test_server_transit_mounts_setting() -> None:
    from nebula_credential.exceptions import ConfigError

    assert KeyManagementConfig().server.transit_mounts == ("transit",)
    assert KeyManagementConfig.from_dict({"server": {"transit_mounts": ["t1", "t2"]}}).server.transit_mounts == (
        "t1", "t2")
    for bad in (["secret"], ["sys"], ["a/b"], "transit", [1]):
        with pytest.raises(ConfigError, match="server.transit_mounts"):
            KeyManagementConfig.from_dict({"server": {"transit_mounts": bad}})


def test_doctor_accepts_a_deleted_transit_key(transit: Transit, vault: nc.Vault, clock: FakeClock) -> None:
    from nebula_credential.doctor import ERROR, check_store

    transit.create_key("gone")
    handle_configure(transit, "gone", {"deletion_allowed": True})
    transit.delete_key("gone")
    findings = check_store(vault.store, vault.config, clock())
    assert [f for f in findings if f.severity == ERROR] == []
    assert any("deleted Transit key" in f.message for f in findings)


@pytest.mark.parametrize("value", ["¹", "٣", "-¹", "1¹"])
def test_non_ascii_digits_are_input_errors(transit: Transit, value: str) -> None:
    """``str.isdigit`` accepts '¹' (found by hypothesis: int() then raised a bare ValueError)."""
    transit.create_key("app")
    with pytest.raises(TransitInputError):
        handle_encrypt(transit, "app", {"plaintext": b64(b"x"), "key_version": value})
    with pytest.raises(TransitInputError):
        transit.decrypt("app", f"vault:v{value}:AAAA")


@pytest.mark.parametrize("period", [-(10**15), 10**15, "999999999999d", 10**30])
def test_huge_periods_are_input_errors(transit: Transit, period: object) -> None:
    """timedelta overflows past 999,999,999 days (found by the hypothesis test)."""
    transit.create_key("app")
    with pytest.raises(TransitInputError, match="auto_rotate_period"):
        handle_configure(transit, "app", {"auto_rotate_period": period})


def test_engine_takes_and_returns_typed_values(transit: Transit) -> None:
    """The engine's own API is typed: settings as a KeyConfigChange, a data key as a DataKey,
    the key's state as a KeyInfo; JSON bodies are only the requests module's business."""
    from nebula_credential.transit import DataKey, KeyConfigChange, KeyInfo

    transit.create_key("typed")
    transit.rotate("typed")
    cfg = transit.configure("typed", KeyConfigChange(min_decryption_version=2, max_encryptions=10))
    assert (cfg.min_decryption_version, cfg.max_encryptions) == (2, 10)
    info = transit.key_info("typed")
    assert isinstance(info, KeyInfo) and [v.version for v in info.versions] == [1, 2]
    made = transit.data_key("typed", 128, plaintext=True)
    assert isinstance(made, DataKey) and made.key_version == 2 and made.plaintext is not None
    assert len(made.plaintext) == 16 and "plaintext" not in repr(made)  # the key stays out of reprs
    assert transit.decrypt("typed", made.ciphertext) == made.plaintext
    with pytest.raises(TransitInputError, match="max_encryptions"):
        transit.configure("typed", KeyConfigChange(max_encryptions=0))
