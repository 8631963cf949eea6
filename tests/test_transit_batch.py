"""Transit batches: each item answers what the same request alone would, under one key lookup.

The batch loops of :mod:`nebula_credential.transit.requests` parse items in
line and share one :class:`~nebula_credential.transit.crypto.Sealer` (or
``Opener``) per request; these tests hold them to the single-request path
item by item, and check what a batch must not share: nonces, usage counts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nebula_credential as nc
from nebula_credential import envelope as env
from nebula_credential.config import KeyManagementConfig
from nebula_credential.exceptions import NebulaCredentialError
from nebula_credential.transit import Transit, TransitInputError, crypto
from nebula_credential.transit.requests import (
    handle_configure,
    handle_decrypt,
    handle_encrypt,
    handle_hmac,
    handle_rewrap,
    handle_verify,
    read_key,
)
from nebula_credential.transit.wire import HASHES, _parse_ciphertext_checked, parse_ciphertext, strict_b64decode

from .helpers import FakeClock

CONFIG = {"retention": {"policy": "minimum-retention", "min_retention": "1h"}}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def vault(tmp_path: Path, clock: FakeClock) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 's.db'}", config=KeyManagementConfig.from_dict(CONFIG),
                clock=clock, create=True)
    yield v
    v.close()


@pytest.fixture
def transit(vault: nc.Vault) -> Transit:
    return Transit(vault)


def alone(handle: Any, transit: Transit, name: str, item: dict[str, Any]) -> dict[str, Any]:
    """The answer of ``item`` sent as a request of its own: its data, or ``{"error": message}``."""
    try:
        return dict(handle(transit, name, dict(item))[0])
    except NebulaCredentialError as exc:
        return {"error": str(exc)}


# ---- base64 and ciphertext parsing: the fast paths answer as the checks do ---------------------------
def _mutations() -> st.SearchStrategy[str]:
    valid = st.binary(max_size=48).map(lambda b: b64(b))
    noise = st.text(alphabet=_ALPHABET + "= \n\t-_.é\x00\u0660\uff41", max_size=24)
    return st.one_of(noise, st.tuples(valid, noise, st.integers(0, 70)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]), valid.map(lambda s: s + "="), valid.map(lambda s: "=" + s))


def _outcome(fn: Any, text: Any) -> Any:
    try:
        return fn(text)
    except TransitInputError as exc:
        return ("error", str(exc))
    except ValueError as exc:  # binascii.Error is one
        return ("error", type(exc).__name__)


@settings(max_examples=1500, deadline=None)
@given(text=_mutations())
def test_strict_b64decode_is_binascii_strict_mode(text: str) -> None:
    def reference(t: str) -> bytes:
        return binascii.a2b_base64(t, strict_mode=True)

    assert _outcome(strict_b64decode, text) == _outcome(reference, text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ciphertext_fast_parse_answers_as_every_check_does(transit: Transit, data: st.DataObject) -> None:
    if not transit.key_names():
        transit.create_key("app")
    good = transit.encrypt("app", data.draw(st.binary(max_size=32)))
    cut = data.draw(st.integers(0, len(good)))
    text = data.draw(st.one_of(
        st.just(good),
        st.text(max_size=3).map(lambda s: good[:cut] + s + good[cut:]),
        st.just(good[:cut] + good[cut + 1:]),
        st.sampled_from(["vault:v01:", "vault:v0:", "vault:v-1:", "vault:v4294967296:", "vault:v1", "vault:v²:",
                         "vault:v0000000001:", "vault:v00000000001:", "vault:v:", "vault:v1::", "vault:v 1:",
                         "vault:v1:=", "vault:v+1:"]).map(lambda head: head + good.split(":", 2)[2]),
        st.sampled_from(["vault:v2:", "vault:v1:"]).map(lambda head: head + b64(env.version_prefix(2) + bytes(28))),
    ))
    assert _outcome(parse_ciphertext, text) == _outcome(_parse_ciphertext_checked, text)


# ---- encrypt -------------------------------------------------------------------------------------------
ENCRYPT_ITEMS: list[dict[str, Any]] = [
    {"plaintext": b64(b"plain")},
    {"plaintext": b64(b"referenced"), "reference": "r1"},
    {"plaintext": ""},
    {"plaintext": None},
    {},
    {"reference": "no plaintext"},
    {"plaintext": "!!"},
    {"plaintext": 5},
    {"plaintext": b64(b"x"), "associated_data": b64(b"ad")},
    {"plaintext": b64(b"x"), "associated_data": "%%"},
    {"plaintext": b64(b"x"), "associated_data": ""},
    {"plaintext": b64(b"x"), "context": b64(b"ignored on a key that is not derived")},
    {"plaintext": b64(b"x"), "context": "%%"},
    {"plaintext": b64(b"x"), "key_version": 1},
    {"plaintext": b64(b"x"), "key_version": "1"},
    {"plaintext": b64(b"x"), "key_version": 2},
    {"plaintext": b64(b"x"), "key_version": 9},
    {"plaintext": b64(b"x"), "key_version": -1},
    {"plaintext": b64(b"x"), "key_version": "two"},
    {"plaintext": b64(b"x"), "key_version": None},
]


@pytest.mark.parametrize("derived", [False, True])
def test_each_encrypt_item_answers_as_its_own_request(transit: Transit, derived: bool) -> None:
    transit.create_key("app", derived=derived)
    transit.rotate("app")
    items = [*ENCRYPT_ITEMS, {"plaintext": b64(b"y"), "context": b64(b"tenant")},
             {"plaintext": b64(b"y"), "context": b64(b"tenant"), "associated_data": b64(b"a")}]
    data, result = handle_encrypt(transit, "app", {"batch_input": items})
    answers = data["batch_results"]
    assert len(answers) == len(items) and result.batched
    assert result.failed == sum("error" in a for a in answers) > 0
    for item, answer in zip(items, answers, strict=True):
        single = alone(handle_encrypt, transit, "app", item)
        assert answer["reference"] == item.get("reference", "")
        if "error" in single:
            assert answer == {"error": single["error"], "reference": item.get("reference", "")}, item
            continue
        assert answer.keys() == {"ciphertext", "key_version", "reference"}
        assert answer["key_version"] == single["key_version"] == 2
        assert answer["ciphertext"].startswith("vault:v2:")
        back = {k: item[k] for k in ("associated_data", "context") if k in item}
        plain = alone(handle_decrypt, transit, "app", {"ciphertext": answer["ciphertext"], **back})
        assert plain == {"plaintext": item.get("plaintext") or ""}
    assert result.versions == {2}


def test_a_batch_never_repeats_a_nonce(transit: Transit) -> None:
    transit.create_key("app")
    body = {"batch_input": [{"plaintext": b64(b"same")}] * 3000}  # more than one buffer of nonces
    data, _ = handle_encrypt(transit, "app", body)
    blobs = [base64.b64decode(r["ciphertext"].split(":", 2)[2]) for r in data["batch_results"]]
    assert len({env.parse(b).nonce for b in blobs}) == len(blobs) == 3000


def test_a_batch_counts_each_encryption_against_the_bound(transit: Transit) -> None:
    transit.create_key("app")
    handle_configure(transit, "app", {"max_encryptions": 5, "auto_rotation": False})
    data, result = handle_encrypt(transit, "app", {"batch_input": [{"plaintext": b64(b"s")}] * 8})
    answers = data["batch_results"]
    assert [a.get("key_version") for a in answers] == [1] * 5 + [None] * 3
    assert all("reached max_encryptions (5)" in a["error"] for a in answers[5:])
    assert result.failed == 3 and result.versions == {1}
    usage = read_key(transit, "app")["nebula"]["usage"]
    assert (usage["active_version"], usage["encryptions"]) == (1, 5)


def test_a_batch_rotates_at_the_bound_between_items(transit: Transit) -> None:
    transit.create_key("app")
    handle_configure(transit, "app", {"max_encryptions": 3})
    data, result = handle_encrypt(transit, "app", {"batch_input": [{"plaintext": b64(b"s")}] * 8})
    assert [a["key_version"] for a in data["batch_results"]] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert [int(a["ciphertext"].split(":")[1][1:]) for a in data["batch_results"]] == [1, 1, 1, 2, 2, 2, 3, 3]
    assert result.versions == {1, 2, 3} and result.failed == 0
    dec, _ = handle_decrypt(transit, "app", {"batch_input": [
        {"ciphertext": a["ciphertext"]} for a in data["batch_results"]]})
    assert {r["plaintext"] for r in dec["batch_results"]} == {b64(b"s")}


def test_the_metrics_observer_sees_a_batch_once(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("app")
    seen: list[tuple[str, str, bool]] = []
    vault.observer = lambda keyring, op, seconds, ok: seen.append((keyring, op, ok))
    data, _ = handle_encrypt(transit, "app", {"batch_input": [{"plaintext": b64(b"s")}] * 10})
    handle_encrypt(transit, "app", {"batch_input": [{"plaintext": b64(b"s")}, {"plaintext": "!"}]})
    handle_decrypt(transit, "app", {"batch_input": [{"ciphertext": r["ciphertext"]} for r in data["batch_results"]]})
    handle_encrypt(transit, "app", {"plaintext": b64(b"s")})
    assert seen == [("transit/app", "encrypt", True), ("transit/app", "encrypt", False),
                    ("transit/app", "decrypt", True), ("transit/app", "encrypt", True)]


# ---- decrypt -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("derived", [False, True])
def test_each_decrypt_item_answers_as_its_own_request(transit: Transit, derived: bool) -> None:
    transit.create_key("app", derived=derived)
    ctx = {"context": b64(b"tenant")} if derived else {}
    old = transit.encrypt("app", b"old", **({"context": b"tenant"} if derived else {}))
    transit.rotate("app")
    transit.rotate("app")
    good = handle_encrypt(transit, "app", {"plaintext": b64(b"good"), **ctx})[0]["ciphertext"]
    with_ad = handle_encrypt(transit, "app", {"plaintext": b64(b"ad"), "associated_data": b64(b"a"), **ctx}
                             )[0]["ciphertext"]
    handle_configure(transit, "app", {"min_decryption_version": 2})
    head, body = good.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    items: list[dict[str, Any]] = [
        {"ciphertext": good, **ctx},
        {"ciphertext": good, "reference": "r", **ctx},
        {"ciphertext": good},
        {"ciphertext": good, "context": b64(b"other")},
        {"ciphertext": good, "context": "%%"},
        {"ciphertext": good, "associated_data": "%%", **ctx},
        {"ciphertext": with_ad, "associated_data": b64(b"a"), **ctx},
        {"ciphertext": with_ad, **ctx},
        {"ciphertext": f"{head}:{b64(bytes(raw))}", **ctx},
        {"ciphertext": old, **ctx},
        {"ciphertext": good.replace("vault:v3:", "vault:v9:"), **ctx},
        {"ciphertext": "vault:v9:" + b64(env.version_prefix(9) + bytes(40)), **ctx},
        {"ciphertext": "x", **ctx},
        {"ciphertext": "", **ctx},
        {"ciphertext": 7, **ctx},
        {**ctx},
    ]
    data, result = handle_decrypt(transit, "app", {"batch_input": items})
    answers = data["batch_results"]
    assert result.failed == sum("error" in a for a in answers) > 0
    for item, answer in zip(items, answers, strict=True):
        single = alone(handle_decrypt, transit, "app", item)
        assert answer == {**single, "reference": item.get("reference", "")}, item
    assert answers[0]["plaintext"] == b64(b"good") and answers[6]["plaintext"] == b64(b"ad")
    assert result.versions == {3}


# ---- rewrap --------------------------------------------------------------------------------------------
def test_each_rewrap_item_answers_as_its_own_request(transit: Transit, vault: nc.Vault) -> None:
    transit.create_key("app")
    old = transit.encrypt("app", b"old")
    old_ad = transit.encrypt("app", b"old", associated_data=b"a")
    transit.rotate("app")
    current = transit.encrypt("app", b"new")
    items: list[dict[str, Any]] = [
        {"ciphertext": old}, {"ciphertext": old_ad, "associated_data": b64(b"a")}, {"ciphertext": old_ad},
        {"ciphertext": current, "reference": "r"}, {"ciphertext": "x"}, {"ciphertext": old, "context": "%%"}, {},
    ]
    seen: list[str] = []
    vault.observer = lambda keyring, op, seconds, ok: seen.append(op)
    data, result = handle_rewrap(transit, "app", {"batch_input": items})
    assert seen == ["rewrap"]
    answers = data["batch_results"]
    assert result.failed == 4 and result.versions == {2}
    assert answers[3] == {"ciphertext": current, "key_version": 2, "reference": "r"}  # current: left as it is
    for item, answer in zip(items, answers, strict=True):
        single = alone(handle_rewrap, transit, "app", item)
        if "error" in single:
            assert answer == {**single, "reference": item.get("reference", "")}
            continue
        assert answer["key_version"] == single["key_version"] == 2
        back = {k: item[k] for k in ("associated_data",) if k in item}
        assert alone(handle_decrypt, transit, "app", {"ciphertext": answer["ciphertext"], **back}) == \
            alone(handle_decrypt, transit, "app", item)


# ---- hmac ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", ["aes256-gcm96", "hmac"])
def test_hmacs_are_the_versions_keyed_hash_from_any_thread(transit: Transit, key_type: str) -> None:
    transit.create_key("m", type=key_type)
    transit.rotate("m")
    key = transit.live_key("m")
    inputs = [os.urandom(n) for n in range(1, 300, 7)]  # an empty input is an error, as in Vault
    for algorithm in ("sha2-256", "sha2-512", "sha3-256"):
        for version in (1, 2):
            mac_key = crypto.hmac_key(key, version)
            expected = [f"vault:v{version}:{b64(hmac.new(mac_key, d, HASHES[algorithm]).digest())}" for d in inputs]
            body = {"batch_input": [{"input": b64(d)} for d in inputs], "key_version": version}

            def answers(body: dict[str, Any] = body, algorithm: str = algorithm) -> list[str]:
                return [r["hmac"] for r in handle_hmac(transit, "m", body, algorithm)[0]["batch_results"]]

            with ThreadPoolExecutor(4) as pool:
                assert all(got == expected for got in pool.map(lambda _: answers(), range(8)))
            verify = {"batch_input": [{"input": b64(d), "hmac": h} for d, h in zip(inputs, expected, strict=True)]}
            assert all(r["valid"] for r in handle_verify(transit, "m", verify, algorithm)[0]["batch_results"])
