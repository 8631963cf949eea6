"""The audit chain's encodings stay byte for byte what they were: the MAC of every stored event depends on them.

``canonical`` and ``encode_details`` write the usual field types directly
instead of through ``json.dumps`` (issue 27: a server pays them once per
request).  The references below are the encodings as they were written
before, copied verbatim; every event written now must verify with them.
"""

from __future__ import annotations

import collections
import datetime
import enum
import hmac
import json
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nebula_credential as nc
from nebula_credential.audit import Event, _detail_default, canonical, encode_details


def _old_canonical(seq: int, ts: float, actor: str, action: str, keyring: str | None, key_version: int | None,
                   credential_id: str | None, outcome: str, details: str) -> bytes:
    return json.dumps(
        [seq, repr(ts), actor, action, keyring, key_version, credential_id, outcome, details],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _old_details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=_detail_default)


class _Colour(enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Text(str):
    pass


#: every kind of text json escapes differently: quotes, backslashes, controls, non-ASCII, astral, lone surrogates
_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20) | st.sampled_from(
    ["", '"', "\\", "\x00\x1f\x7f", "é", "日本", "\U0001f600", "\ud800", "a/b", "</script>", "\u2028"])
_SCALAR = st.none() | st.booleans() | st.integers() | _TEXT | st.floats(allow_nan=True, allow_infinity=True)
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                      max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_TEXT.filter(lambda n: n.lower() not in {"value", "plaintext", "secret", "password", "pin",
                                                                "token", "dek", "key", "key_material"}),
                       _VALUE, max_size=8))
def test_details_are_encoded_as_json_dumps_encoded_them(details: dict[str, Any]) -> None:
    assert encode_details(details) == _old_details(details)


@pytest.mark.parametrize("details", [
    {},
    {"status": 200, "ok": True, "bad": False, "none": None, "path": "secret/data/é\"x\\"},
    {"big": 2**70, "neg": -5, "float": 1.5, "nan": float("nan")},
    {"at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "colour": _Colour.RED, "level": _Level.HIGH},
    {"text": _Text("sub"), "versions": ["default/v1", "default/v2"], "nested": {"b": 1, "a": [None, True]}},
    {"b": 1, "a": 2, "B": 3, "_": 4, "é": 5},
])
def test_details_of_every_kind_a_caller_passes_are_encoded_as_before(details: dict[str, Any]) -> None:
    assert encode_details(details) == _old_details(details)


def test_mappings_that_are_not_plain_dicts_are_encoded_as_before() -> None:
    for details in (collections.OrderedDict([("b", 1), ("a", "x")]), types.MappingProxyType({"a": 1})):
        assert encode_details(details) == _old_details(details)  # type: ignore[arg-type]


def test_details_refuse_secret_names_and_bytes_as_before() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        encode_details({"path": "p", "Token": "x"})
    with pytest.raises(TypeError, match="bytes"):
        encode_details({"blob": b"\x00"})


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0), st.floats(allow_nan=False) | st.integers(), _TEXT, _TEXT,
       st.none() | _TEXT, st.none() | st.integers(), st.none() | _TEXT, _TEXT, _TEXT)
def test_canonical_is_what_json_dumps_gave(seq: int, ts: float, actor: str, action: str, keyring: str | None,
                                           key_version: int | None, credential_id: str | None, outcome: str,
                                           details: str) -> None:
    fields = (seq, ts, actor, action, keyring, key_version, credential_id, outcome, details)
    assert canonical(*fields) == _old_canonical(*fields)


def test_canonical_of_unusual_types_goes_through_the_encoder_as_before() -> None:
    for fields in ((True, 1.0, "a", "b", None, False, None, "ok", "{}"),
                   (_Level.HIGH, 1.0, _Text("a"), "b", _Text("k"), _Level.HIGH, _Text("c"), "ok", "{}")):
        assert canonical(*fields) == _old_canonical(*fields)  # type: ignore[arg-type]


def test_events_written_now_verify_with_the_old_encoding(vault: nc.Vault) -> None:
    """Every event the new encoders wrote carries the MAC the old ones give: old and new chains are one chain."""
    details: list[dict[str, Any]] = [
        {"accessor": "a" * 24, "operation": "read", "path": "secret/data/é\"\\\x01\U0001f600", "method": "GET",
         "status": 200, "display_name": None, "flag": True},
        {"nested": {"z": [1, 2.5, None]}, "at": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)},
        {},
    ]
    vault.record_events([Event("server.request", "default", 7, "cid/\u00e9", "ok", d) for d in details])
    vault.record_events([Event("server.denied", None, None, None, "denied", {"status": 403})])
    with vault.store.read() as tx:
        key = bytes(vault.audit._audit_key(tx))
    prev = b""
    rows = list(vault.audit.rows())
    for row in rows:
        body = _old_canonical(row.seq, row.ts, row.actor, row.action, row.keyring, row.key_version,
                              row.credential_id, row.outcome, row.details)
        assert hmac.compare_digest(hmac.digest(key, prev + body, "sha256"), row.mac), row.seq
        prev = row.mac
    assert [r.details for r in rows[-4:]] == [_old_details(d) for d in details] + ['{"status":403}']
    assert vault.audit.verify().ok
