"""Re-encryption's narrow rows judge a stored row exactly as ``get`` does (issue 27, target 5)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from nebula_credential.envelope import version_prefix
from nebula_credential.exceptions import CorruptRecordError
from nebula_credential.store import ReencryptRow
from nebula_credential.store._rows import decode_credential, decode_reencrypt_page

ENV = version_prefix(3) + bytes(12) + bytes(32)
GOOD = ("kr", "c1", "production", 3, ENV, "{}", 7, 1_700_000_000.5, 1_700_000_001)


def _row(**changes: Any) -> tuple[Any, ...]:
    names = ("keyring", "id", "scope", "key_version", "envelope", "metadata", "revision", "created_at", "updated_at")
    return tuple(changes.get(n, v) for n, v in zip(names, GOOD))


ROWS = [
    GOOD,
    _row(metadata=""),
    _row(metadata='{"owner": "x"}'),
    _row(metadata="[1, 2]"),
    _row(metadata="{not json"),
    _row(metadata=None),
    _row(envelope=bytearray(ENV)),
    _row(envelope=memoryview(ENV)),
    _row(envelope="text"),
    _row(envelope=12345),
    _row(envelope=b"not an envelope"),
    _row(key_version="one"),
    _row(key_version=True),
    _row(revision=1.5),
    _row(id=None),
    _row(scope=b"production"),
    _row(created_at="yesterday"),
    _row(created_at=1e300),
    _row(created_at=-1.5),
    _row(created_at=math.nan),
    _row(created_at=math.inf),
    _row(updated_at=253402300800),  # year 10000
    _row(updated_at=253402300799.99997),  # the last microseconds of 9999
    _row(updated_at=253402300798.5),
    _row(updated_at=0),
    _row(updated_at=False),
]


@pytest.mark.parametrize("row", ROWS, ids=[repr(r)[:60] for r in ROWS])
def test_same_verdict_and_fields_as_decode_credential(row: tuple[Any, ...]) -> None:
    page = decode_reencrypt_page([row], skip_corrupt=True)
    assert page.fetched == 1 and page.last_id == row[1]
    try:
        full = decode_credential(row)
    except CorruptRecordError as exc:
        assert not page and [str(e) for e in page.corrupt] == [str(exc)]
        with pytest.raises(CorruptRecordError):
            decode_reencrypt_page([row], skip_corrupt=False)
        return
    assert not page.corrupt
    (narrow,) = page
    assert isinstance(narrow, ReencryptRow) and type(narrow.envelope) is bytes
    assert (narrow.keyring, narrow.id, narrow.scope, narrow.envelope, narrow.revision, narrow.key_version) == (
        full.keyring, full.id, full.scope, full.envelope, full.revision, full.key_version)
    assert narrow.column_version == row[3]


def test_key_version_is_the_header_s_and_the_column_s_without_one() -> None:
    (row,) = decode_reencrypt_page([_row(key_version=5)], skip_corrupt=False)
    assert (row.column_version, row.key_version) == (5, 3)  # the header is what decryption goes by
    (row,) = decode_reencrypt_page([_row(key_version=5, envelope=b"xx")], skip_corrupt=False)
    assert row.key_version == 5
