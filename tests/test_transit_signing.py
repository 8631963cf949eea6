"""Transit key types beyond aes256-gcm96: signing, RSA-OAEP, hmac keys, export and backup under policy.

Cross-checked with code we did not write: ``cryptography`` verifies our
signatures with the public keys we return, and our server verifies
signatures made locally with an exported key.  Property tests cover every
signing type and hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import DecryptionError, KeyRevokedError
from nebula_credential.transit import Transit, TransitInputError
from nebula_credential.transit.asym import RSA_META, SIGN_HASHES, SignOptions
from nebula_credential.transit.keytypes import SUPPORTED_TYPES
from nebula_credential.transit.requests import handle_sign, handle_verify, read_key

from .helpers import FakeClock

CONFIG = {"retention": {"policy": "minimum-retention", "min_retention": "1h"}}
SIGNING = ("ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048")
HASHES = tuple(SIGN_HASHES)


def _open(path: Path, clock: FakeClock | None = None) -> nc.Vault:
    return nc.open(f"sqlite:///{path}", config=KeyManagementConfig.from_dict(CONFIG),
                   clock=clock or FakeClock(), create=True)


@pytest.fixture
def vault(tmp_path: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = _open(tmp_path / "s.db", clock)
    yield v
    v.close()


@pytest.fixture
def transit(vault: nc.Vault) -> Transit:
    return Transit(vault)


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transit]:
    """One key of every signing type (RSA key generation is slow: made once for the module)."""
    v = _open(tmp_path_factory.mktemp("signers") / "s.db")
    t = Transit(v)
    for kt in SIGNING:
        t.create_key(kt, type=kt, exportable=True)
    yield t
    v.close()


def _public(t: Transit, name: str, version: int = 1) -> object:
    text = read_key(t, name)["keys"][str(version)]["public_key"]
    if name == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
    return serialization.load_pem_public_key(text.encode())


def _raw(signature: str) -> bytes:
    return base64.b64decode(signature.split(":", 2)[2])


# ---- property tests ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kt=st.sampled_from(SIGNING), algo=st.sampled_from(HASHES), data=st.binary(max_size=256),
       flip=st.integers(min_value=0, max_value=10_000))
def test_sign_verify_round_trip_and_tampering_refused(signers: Transit, kt: str, algo: str, data: bytes,
                                                      flip: int) -> None:
    opts = SignOptions(algo)
    sig = signers.sign(kt, data, opts)
    assert sig.startswith("vault:v1:")
    assert signers.verify(kt, data, sig, opts)
    assert not signers.verify(kt, data + b"!", sig, opts)
    raw = bytearray(_raw(sig))
    raw[flip % len(raw)] ^= 1 << (flip % 8)
    assert not signers.verify(kt, data, "vault:v1:" + base64.b64encode(bytes(raw)).decode(), opts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kt=st.sampled_from(SIGNING[1:]), algo=st.sampled_from(HASHES), length=st.integers(0, 80))
def test_prehashed_of_the_wrong_length_is_refused(signers: Transit, kt: str, algo: str, length: int) -> None:
    size = SIGN_HASHES[algo]().digest_size
    body = {"input": base64.b64encode(b"d" * length).decode(), "prehashed": True, "hash_algorithm": algo}
    if length == size:
        handle_sign(signers, kt, body)
        return
    with pytest.raises(TransitInputError, match="prehashed input must be"):
        handle_sign(signers, kt, body)


# ---- cross-verification with cryptography ----------------------------------------------------------
@pytest.mark.parametrize("kt", SIGNING)
def test_signature_verifies_with_cryptography_and_the_public_key_we_return(signers: Transit, kt: str) -> None:
    data = b"artefact bytes"
    public = _public(signers, kt)
    sig = _raw(signers.sign(kt, data, SignOptions("sha2-512")))
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(sig, data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(sig, data, ec.ECDSA(hashes.SHA512()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(sig, data, padding.PSS(padding.MGF1(hashes.SHA512()), padding.PSS.AUTO), hashes.SHA512())
        v15 = _raw(signers.sign(kt, data, SignOptions("sha2-256", signature_algorithm="pkcs1v15")))
        public.verify(v15, data, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            public.verify(v15, b"other", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("kt", SIGNING)
def test_a_signature_made_locally_with_the_exported_key_verifies_on_the_server(signers: Transit, kt: str) -> None:
    exported = signers.export(kt, "signing-key", 1)["keys"]["1"]
    data = b"signed elsewhere"
    if kt == "ed25519":
        private = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(exported)[:32])
        sig = private.sign(data)
    else:
        loaded = serialization.load_pem_private_key(exported.encode(), password=None)
        if isinstance(loaded, ec.EllipticCurvePrivateKey):
            sig = loaded.sign(data, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(loaded, rsa.RSAPrivateKey)
            sig = loaded.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    assert signers.verify(kt, data, "vault:v1:" + base64.b64encode(sig).decode())
    assert not signers.verify(kt, b"x" + data, "vault:v1:" + base64.b64encode(sig).decode())


def test_ecdsa_prehashed_matches_a_local_prehashed_verification(signers: Transit) -> None:
    digest = hashlib.sha256(b"m").digest()
    sig = _raw(signers.sign("ecdsa-p256", digest, SignOptions("sha2-256", prehashed=True)))
    public = _public(signers, "ecdsa-p256")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))


# ---- Vault's parameters -------------------------------------------------------------------------
def test_batch_sign_and_verify_report_per_item_errors(signers: Transit) -> None:
    good = base64.b64encode(b"a").decode()
    data, result = handle_sign(signers, "ecdsa-p256", {"batch_input": [
        {"input": good, "reference": "r1"}, {"input": "!!", "reference": "r2"}]})
    items = data["batch_results"]
    assert items[0]["reference"] == "r1" and items[0]["signature"].startswith("vault:v1:")
    assert "error" in items[1] and items[1]["reference"] == "r2"
    assert result.failed == 1
    out, _ = handle_verify(signers, "ecdsa-p256", {"batch_input": [
        {"input": good, "signature": items[0]["signature"]}, {"input": good, "signature": "vault:v1:@@"},
        {"input": base64.b64encode(b"b").decode(), "signature": items[0]["signature"]}]})
    assert [i.get("valid") for i in out["batch_results"]] == [True, False, False]
    assert "error" in out["batch_results"][1] and "error" not in out["batch_results"][2]


def test_parameters_that_do_not_apply_are_refused(signers: Transit, transit: Transit) -> None:
    with pytest.raises(TransitInputError, match="jws"):
        signers.sign("rsa-2048", b"x", SignOptions(marshaling="jws"))
    with pytest.raises(TransitInputError, match="salt length"):
        signers.sign("rsa-2048", b"x", SignOptions(salt_length="lots"))
    with pytest.raises(TransitInputError, match="unsupported hash algorithm"):
        SignOptions("md5")
    transit.create_key("aes")
    with pytest.raises(TransitInputError, match="does not support signing"):
        transit.sign("aes", b"x")
    with pytest.raises(TransitInputError, match="does not support encryption"):
        signers.encrypt("ed25519", b"x")
    with pytest.raises(TransitInputError, match="key derivation"):
        transit.create_key("der", type="ecdsa-p256", derived=True)


def test_rsa_salt_lengths_and_oaep(signers: Transit) -> None:
    for salt in ("auto", "hash", 20):
        sig = signers.sign("rsa-2048", b"d", SignOptions(salt_length=salt))
        assert signers.verify("rsa-2048", b"d", sig, SignOptions(salt_length=salt))
    ct = signers.encrypt("rsa-2048", b"secret")
    assert signers.decrypt("rsa-2048", ct) == b"secret"
    private = serialization.load_pem_private_key(signers.export("rsa-2048", "signing-key", 1)["keys"]["1"].encode(),
                                                 password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    assert private.decrypt(_raw(ct), oaep) == b"secret"  # plain RSA-OAEP SHA-256, as Vault
    with pytest.raises(DecryptionError):
        signers.decrypt("rsa-2048", "vault:v1:" + base64.b64encode(b"\0" * 256).decode())


def test_derived_ed25519_signs_per_context(transit: Transit) -> None:
    transit.create_key("ctx", type="ed25519", derived=True)
    with pytest.raises(TransitInputError, match="context"):
        transit.sign("ctx", b"m")
    sig = transit.sign("ctx", b"m", context=b"tenant-a")
    assert transit.verify("ctx", b"m", sig, context=b"tenant-a")
    assert not transit.verify("ctx", b"m", sig, context=b"tenant-b")


@pytest.mark.parametrize("kt", ["aes128-gcm96", "chacha20-poly1305"])
def test_other_aead_types_encrypt_and_bind_their_context(transit: Transit, kt: str) -> None:
    transit.create_key("k", type=kt)
    ct = transit.encrypt("k", b"pt", associated_data=b"ad")
    assert transit.decrypt("k", ct, associated_data=b"ad") == b"pt"
    with pytest.raises(DecryptionError):
        transit.decrypt("k", ct, associated_data=b"other")
    transit.rotate("k")
    assert transit.rewrap("k", ct, associated_data=b"ad").startswith("vault:v2:")


def test_hmac_key_type_uses_its_own_key_size(transit: Transit) -> None:
    transit.create_key("mac", type="hmac", key_size=64, exportable=True)
    key = base64.b64decode(transit.export("mac", "hmac-key")["keys"]["1"])
    assert len(key) == 64
    mac = transit.hmac("mac", b"payload")
    import hmac as std_hmac

    assert base64.b64decode(mac.split(":", 2)[2]) == std_hmac.new(key, b"payload", hashlib.sha256).digest()
    assert transit.verify_hmac("mac", b"payload", mac)
    assert not transit.verify_hmac("mac", b"payloaD", mac)
    with pytest.raises(TransitInputError, match="key_size"):
        transit.create_key("mac2", type="hmac", key_size=16)


# ---- lifecycle: rotation, min_decryption_version, trim ---------------------------------------------
def test_rotation_min_decryption_and_trim_govern_signing_versions(transit: Transit, clock: FakeClock) -> None:
    transit.create_key("s", type="ecdsa-p256")
    v1 = transit.sign("s", b"m")
    transit.rotate("s")
    transit.rotate("s")
    assert transit.sign("s", b"m").startswith("vault:v3:")
    assert transit.verify("s", b"m", v1)
    pub = read_key(transit, "s")["keys"]
    assert sorted(pub) == ["1", "2", "3"] and len({e["public_key"] for e in pub.values()}) == 3
    transit.configure("s", __import__("nebula_credential.transit", fromlist=["KeyConfigChange"]).KeyConfigChange(
        min_decryption_version=2, min_encryption_version=2))
    with pytest.raises(TransitInputError, match="disallowed by policy"):
        transit.verify("s", b"m", v1)
    with pytest.raises(TransitInputError, match="less than the minimum encryption"):
        transit.sign("s", b"m", key_version=1)
    assert sorted(read_key(transit, "s")["keys"]) == ["2", "3"]
    clock.advance(hours=2)
    assert transit.trim("s", 2).min_available_version == 2
    with pytest.raises(TransitInputError, match="disallowed by policy"):
        transit.verify("s", b"m", v1)


def test_scheduled_rotation_of_an_rsa_key_makes_its_key_at_first_use(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("r", type="rsa-2048")
    transit.live_key("r").km.rotate(reason="scheduled")  # what maintain does: the keyring alone
    transit.forget("r")
    sig = transit.sign("r", b"m")
    assert sig.startswith("vault:v2:") and transit.verify("r", b"m", sig)


def test_rsa_private_keys_are_sealed_under_the_version_dek(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("r", type="rsa-2048", exportable=True)
    keyring = transit.keyring_of("r")
    with vault.store.read() as tx:
        stored = tx.get_meta(f"{RSA_META}{keyring}:1")
    assert stored is not None
    pem = transit.export("r", "signing-key", 1)["keys"]["1"]
    der = serialization.load_pem_private_key(pem.encode(), password=None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert der[40:80] not in base64.b64decode(stored)


def test_a_revoked_version_signs_nothing(transit: Transit) -> None:
    transit.create_key("e", type="ed25519")
    transit.rotate("e")
    transit.live_key("e").km.revoke(1)
    transit.forget("e")
    with pytest.raises((KeyRevokedError, TransitInputError)):
        transit.sign("e", b"m", key_version=1)


# ---- export and backup under policy ---------------------------------------------------------------
def test_export_needs_exportable_which_cannot_be_turned_off(transit: Transit, vault: nc.Vault) -> None:
    from nebula_credential.transit import KeyConfigChange

    transit.create_key("x", type="ed25519")
    with pytest.raises(TransitInputError, match="not exportable"):
        transit.export("x", "signing-key")
    assert "1" in transit.export("x", "public-key")["keys"]  # public keys are public
    transit.configure("x", KeyConfigChange(exportable=True))
    assert "1" in transit.export("x", "signing-key")["keys"]
    transit.configure("x", KeyConfigChange(exportable=False))
    assert read_key(transit, "x")["exportable"] is True
    with pytest.raises(TransitInputError, match="signing key not supported"):
        transit.create_key("aes", exportable=True) and transit.export("aes", "signing-key")
    with vault.store.read() as tx:
        actions = [r.action for r in tx.audit_search(keyring=transit.keyring_of("x"))]
    assert actions.count("transit.key.export") == 1  # the public key is no secret: not an export event
    assert vault.audit.verify().ok


def test_backup_restores_into_another_store(transit: Transit, tmp_path: Path) -> None:
    made = {}
    for kt in ("aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p384", "rsa-2048", "hmac"):
        transit.create_key(kt, type=kt, exportable=True, allow_plaintext_backup=True)
        transit.rotate(kt)
        made[kt] = (transit.encrypt(kt, b"pt", associated_data=b"ad") if kt in ("aes256-gcm96", "chacha20-poly1305",
                                                                              "rsa-2048") else None,
                    transit.sign(kt, b"m") if kt in SIGNING or kt.startswith("ecdsa") else None,
                    transit.hmac(kt, b"m"))
    (tmp_path / "other").mkdir()
    other = _open(tmp_path / "other" / "other.db")
    try:
        theirs = Transit(other)
        for kt, (ct, sig, mac) in made.items():
            theirs.restore(transit.backup(kt), f"{kt}-copy")
            name = f"{kt}-copy"
            if ct is not None:
                assert theirs.decrypt(name, ct, associated_data=None if kt == "rsa-2048" else b"ad") == b"pt"
            if sig is not None:
                assert theirs.verify(name, b"m", sig)
            assert theirs.verify_hmac(name, b"m", mac)
            assert read_key(theirs, name)["latest_version"] == 2
        with pytest.raises(TransitInputError, match="already exists"):
            theirs.restore(transit.backup("ed25519"), "ed25519-copy")
        with other.store.read() as tx:
            assert "transit.key.restore" in [r.action for r in tx.audit_search(keyring=theirs.keyring_of("hmac-copy"))]
        assert other.audit.verify().ok
    finally:
        other.close()


def test_backup_needs_allow_plaintext_backup_and_is_checked_on_restore(transit: Transit) -> None:
    transit.create_key("b", exportable=True)
    with pytest.raises(TransitInputError, match="plaintext backup is disallowed"):
        transit.backup("b")
    transit.create_key("nb", allow_plaintext_backup=True)
    with pytest.raises(TransitInputError, match="exporting is disallowed"):
        transit.backup("nb")
    transit.create_key("ok", exportable=True, allow_plaintext_backup=True)
    doc = json.loads(base64.b64decode(transit.backup("ok")))
    doc["versions"][0]["dek"] = base64.b64encode(b"\0" * 32).decode()
    with pytest.raises(TransitInputError, match="digest does not match"):
        transit.restore(base64.b64encode(json.dumps(doc).encode()).decode(), "evil")
    with pytest.raises(TransitInputError, match="not base64 JSON"):
        transit.restore("%%%", "evil")
    from nebula_credential.transit.portable import _digest

    for field, bad in (("min_decryption_version", "1"), ("type", "rsa-1"), ("origin", "transit/other")):
        crafted = json.loads(base64.b64decode(transit.backup("ok")))
        crafted["key"][field] = bad
        crafted["sha256"] = _digest(crafted)
        with pytest.raises(TransitInputError, match="invalid backup|unknown key type"):
            transit.restore(base64.b64encode(json.dumps(crafted).encode()).decode(), "evil")
    assert "evil" not in transit.key_names()


def test_every_supported_type_is_listed() -> None:
    assert set(SUPPORTED_TYPES) == {"aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256",
                                    "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096", "hmac"}


# ---- the CLI ------------------------------------------------------------------------------------------
def test_cli_keys_create_sign_and_verify_files_and_stdin(tmp_path: Path) -> None:
    from .helpers import cli_env, run_cli

    db = f"sqlite:///{tmp_path / 'c.db'}"
    nc.open(db, create=True).close()
    env_ = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"))

    def cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
        r = run_cli("--db", db, *args, cwd=tmp_path, env=env_, input=input)
        return r.returncode, r.stdout, r.stderr

    code, out, err = cli("--json", "transit", "keys", "create", "signer", "--type", "ed25519")
    assert code == 0, err
    public = json.loads(out)["keys"]["1"]["public_key"]
    artefact = tmp_path / "artefact.bin"
    artefact.write_bytes(b"release 1.0")
    code, sig, err = cli("transit", "sign", str(artefact), "--key", "signer")
    assert code == 0, err and sig.startswith("vault:v1:")
    ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(_raw(sig.strip()), b"release 1.0")
    code, out, err = cli("transit", "verify", "-", "--key", "signer", "--signature", sig.strip(), input="release 1.0")
    assert (code, out.strip()) == (0, "valid"), err
    code, out, _ = cli("transit", "verify", "-", "--key", "signer", "--signature", sig.strip(), input="release 1.1")
    assert (code, out.strip()) == (1, "NOT valid")
    code, out, err = cli("transit", "keys", "create", "es", "--type", "ecdsa-p256")
    assert code == 0 and "BEGIN PUBLIC KEY" in out, err
    (tmp_path / "sig").write_text(cli("transit", "sign", "-", "--key", "es", "--hash-algorithm", "sha2-384",
                                      input="x")[1])
    code, out, err = cli("transit", "verify", "-", "--key", "es", "--hash-algorithm", "sha2-384",
                         "--signature-file", str(tmp_path / "sig"), input="x")
    assert code == 0, err


def test_console_shows_a_transit_keys_type_and_public_keys(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from nebula_credential.console import Principal, create_console

    v = nc.open(f"sqlite:///{tmp_path / 'c.db'}", create=True)
    try:
        t = Transit(v)
        t.create_key("webhooks", type="ecdsa-p256")
        t.rotate("webhooks")
        t.create_key("plain")
        app = Starlette(routes=[Mount("/ui", app=create_console(v, lambda token: Principal("root", lambda c, p: True)))])
        c = TestClient(app, base_url="https://console.test", follow_redirects=False)
        c.post("/ui/login", data={"token": "t"})
        page = c.get(f"/ui/keyrings/{t.keyring_of('webhooks')}").text
        assert "<code>ecdsa-p256</code>" in page and page.count("BEGIN PUBLIC KEY") == 2
        public = read_key(t, "webhooks")["keys"]["2"]["public_key"].strip().splitlines()[1]
        assert public in page
        plain = c.get(f"/ui/keyrings/{t.keyring_of('plain')}").text
        assert "<code>aes256-gcm96</code>" in plain and "BEGIN PUBLIC KEY" not in plain
        assert "Transit key" not in c.get("/ui/keyrings/default").text
    finally:
        v.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kt=st.sampled_from(["aes128-gcm96", "aes256-gcm96", "chacha20-poly1305"]), data=st.binary(max_size=200),
       ad=st.none() | st.binary(min_size=1, max_size=20), flip=st.integers(0, 10_000))
def test_aead_types_round_trip_and_tampering_refused(aeads: Transit, kt: str, data: bytes, ad: bytes | None,
                                                     flip: int) -> None:
    ct = aeads.encrypt(kt, data, associated_data=ad)
    assert aeads.decrypt(kt, ct, associated_data=ad) == data
    raw = bytearray(_raw(ct))
    raw[8 + flip % (len(raw) - 8)] ^= 1 << (flip % 8)  # past the header: nonce, ciphertext or tag
    with pytest.raises((DecryptionError, TransitInputError)):
        aeads.decrypt(kt, "vault:v1:" + base64.b64encode(bytes(raw)).decode(), associated_data=ad)


@pytest.fixture(scope="module")
def aeads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transit]:
    v = _open(tmp_path_factory.mktemp("aeads") / "s.db")
    t = Transit(v)
    for kt in ("aes128-gcm96", "aes256-gcm96", "chacha20-poly1305"):
        t.create_key(kt, type=kt)
    yield t
    v.close()


@pytest.mark.parametrize("kt", ["rsa-3072", "rsa-4096"])
def test_larger_rsa_types_sign_encrypt_and_show_their_size(transit: Transit, kt: str) -> None:
    transit.create_key("big", type=kt)
    public = serialization.load_pem_public_key(read_key(transit, "big")["keys"]["1"]["public_key"].encode())
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == int(kt.split("-")[1])
    sig = transit.sign("big", b"m", SignOptions("sha2-512", signature_algorithm="pkcs1v15"))
    public.verify(_raw(sig), b"m", padding.PKCS1v15(), hashes.SHA512())
    assert transit.decrypt("big", transit.encrypt("big", b"pt")) == b"pt"
