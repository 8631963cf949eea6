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


CASES = {
    "good": GOOD,
    "metadata-empty": _row(metadata=""),
    "metadata-object": _row(metadata='{"owner": "x"}'),
    "metadata-list": _row(metadata="[1, 2]"),
    "metadata-bad-json": _row(metadata="{not json"),
    "metadata-null": _row(metadata=None),
    "envelope-bytearray": _row(envelope=bytearray(ENV)),
    "envelope-memoryview": _row(envelope=memoryview(ENV)),
    "envelope-text": _row(envelope="text"),
    "envelope-int": _row(envelope=12345),
    "envelope-no-header": _row(envelope=b"not an envelope"),
    "version-text": _row(key_version="one"),
    "version-bool": _row(key_version=True),
    "revision-float": _row(revision=1.5),
    "id-null": _row(id=None),
    "scope-bytes": _row(scope=b"production"),
    "created-text": _row(created_at="yesterday"),
    "created-huge": _row(created_at=1e300),
    "created-negative": _row(created_at=-1.5),
    "created-nan": _row(created_at=math.nan),
    "created-inf": _row(created_at=math.inf),
    "updated-year-10000": _row(updated_at=253402300800),
    "updated-last-microseconds": _row(updated_at=253402300799.99997),
    "updated-late": _row(updated_at=253402300798.5),
    "updated-epoch": _row(updated_at=0),
    "updated-bool": _row(updated_at=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_verdict_and_fields_as_decode_credential(case: str) -> None:
    row = CASES[case]
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
