"""Envelope format v1: layout, known-answer vectors, and a parser that never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import nebula_credential as nc
from nebula_credential import envelope as env
from nebula_credential.providers.base import WrapContext

VECTORS = json.loads((Path(__file__).parent / "vectors" / "envelope_v1.json").read_text())["vectors"]
KM = nc.KeyManager.ephemeral()
TYPED = (nc.EnvelopeFormatError, nc.DecryptionError, nc.KeyNotFoundError)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["description"] for v in VECTORS])
def test_known_answer_vectors(vec: dict[str, str]) -> None:
    blob = bytes.fromhex(vec["envelope"])
    parsed = env.parse(blob)
    assert blob[:2] == b"NC" and blob[2] == 1 and blob[3] == 1
    assert parsed.key_version == vec["key_version"] == int.from_bytes(blob[4:8], "big")
    assert parsed.nonce.hex() == vec["nonce"] and parsed.header == blob[:20]
    ctx = bytes.fromhex(vec["context"])
    plaintext = AESGCM(bytes.fromhex(vec["key"])).decrypt(parsed.nonce, parsed.ciphertext, parsed.header + ctx)
    assert plaintext.hex() == vec["plaintext"]
    assert len(blob) == 20 + len(plaintext) + 16


def test_key_manager_output_follows_the_spec() -> None:
    km = nc.KeyManager.ephemeral()
    km.rotate()
    blob = km.encrypt(b"hello", b"ctx")
    assert blob[:8] == b"NC\x01\x01\x00\x00\x00\x02" and len(blob) == 20 + 5 + 16
    kv = km.version(2)
    assert kv.wrapped_key is not None
    with km.provider.unwrap(kv.wrapped_key, WrapContext(km.keyring, 2)) as dek:
        by_hand = AESGCM(bytes(dek.buffer)).decrypt(blob[8:20], blob[20:], blob[:20] + b"ctx")
    assert by_hand == b"hello"
    assert blob[8:20] != km.encrypt(b"hello", b"ctx")[8:20]  # random nonces


def test_credential_context_is_length_prefixed() -> None:
    assert env.credential_context("ab", "c", "s") != env.credential_context("a", "bc", "s")
    assert env.credential_context("k", "id", "production") != env.credential_context("k", "id", "user")


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short"),
        (b"NC\x01\x01" + b"\x00" * 31, "too short"),
        (b"XX\x01\x01" + b"\x00" * 40, "bad magic"),
        (b"NC\x02\x01" + b"\x00" * 40, "format version 2"),
        (b"NC\x01\x09" + b"\x00" * 40, "algorithm id 9"),
        (b"NC\x01\x01\x00\x00\x00\x00" + b"\x00" * 40, "version 0"),
    ],
)
def test_malformed_envelopes_raise_typed_errors(blob: bytes, message: str) -> None:
    with pytest.raises(nc.EnvelopeFormatError, match=message):
        env.parse(blob)
    with pytest.raises(nc.EnvelopeFormatError, match=message):
        env.peek_version(blob)
    with pytest.raises(nc.EnvelopeFormatError):
        KM.decrypt(blob)


def test_peek_version_reads_the_header_parse_reads() -> None:
    blob = KM.encrypt(b"x", b"ctx")
    assert env.peek_version(blob) == env.parse(blob).key_version == 1
    assert env.peek_version(bytearray(blob)) == env.peek_version(memoryview(blob)) == 1


def test_header_version_reads_stored_rows_leniently() -> None:
    """A stored row's version comes from its header even when the rest is damaged; no envelope: None."""
    blob = KM.encrypt(b"x", b"ctx")
    assert env.header_version(blob) == 1
    assert env.header_version(blob[: env.KEY_VERSION_END]) == 1  # too short to decrypt, header still named
    assert env.header_version(b"NC\x09\x09\x00\x00\x00\x07") == 7  # format and algorithm left to decryption
    assert env.header_version(b"XX\x01\x01\x00\x00\x00\x07" + b"\x00" * 40) is None
    assert env.header_version(blob[: env.KEY_VERSION_END - 1]) is None
    assert env.header_version(b"") is None


def test_key_version_field_decodes_what_a_query_cuts_out() -> None:
    blob = env.version_prefix(0x01020304) + b"\x00" * 28
    assert env.key_version_field(blob[env.KEY_VERSION_OFFSET:env.KEY_VERSION_END]) == 0x01020304
    assert env.key_version_field(b"\x00\x00\x02") is None


def test_non_bytes_refused() -> None:
    with pytest.raises(nc.EnvelopeFormatError):
        env.parse("NC..." * 10)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        KM.decrypt(data, b"ctx")
    except TYPED:
        return
    raise AssertionError("random bytes decrypted")


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutations_of_a_valid_envelope_are_refused(data: st.DataObject) -> None:
    blob = bytearray(KM.encrypt(b"secret value", b"ctx"))
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "truncate":
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    elif op == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(TYPED):
        KM.decrypt(bytes(blob), b"ctx")


def test_bytearray_and_memoryview_envelopes_decrypt() -> None:
    blob = KM.encrypt(b"v", b"c")
    assert KM.decrypt(bytearray(blob), b"c") == b"v"
    assert KM.decrypt(memoryview(blob), b"c") == b"v"
    with pytest.raises(nc.EnvelopeFormatError):
        KM.decrypt(12345, b"c")  # type: ignore[arg-type]
