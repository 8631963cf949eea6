"""KV LIST reads only the folder it lists: ``StoreTx.ids_under`` on SQLite and PostgreSQL.

Before, the server listed every record of the keyring and filtered by prefix
in Python: a LIST of one folder read (and decoded) the whole keyring, and a
corrupt row anywhere failed every LIST.  SQLite asks a range on the primary
key, PostgreSQL (whose collation need not be code point order) LIKE with
``%``, ``_`` and ``\\`` escaped; both must mean exactly "starts with".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

import nebula_credential as nc
from nebula_credential.server.app import create_app
from nebula_credential.store._sql_credentials import like_prefix, prefix_successor

#: Ids whose prefixes a wildcard, a missing escape or a wrong successor would confuse.
IDS = [
    "a%b/1", "a%b/sub/2", "aXb/3", "aXXb/4", "a_b/5", "aZb/6", "a\\b/7", "a\\\\b/8", "a\\Xb/9",
    "é/1", "é/2", "éa", "e/3", "f", "x\U0010ffff", "x\U0010ffff/1", "y", "\ud7ff/1", "\ue000/1",
    "team/a", "team/b/c", "teamX", "team0", "team.", "other/1",
]
PREFIXES = ["", "a", "a%", "a%b/", "a_", "a_b/", "a\\", "a\\b/", "a\\\\", "é", "é/", "e", "x\U0010ffff",
            "\ud7ff", "team/", "team", "nothing/"]


def test_successor_and_pattern() -> None:
    assert prefix_successor("ab") == "ac"
    assert prefix_successor("a\U0010ffff") == "b"
    assert prefix_successor("\U0010ffff") is None
    assert prefix_successor("\ud7ff") == "\ue000"  # surrogates are skipped
    assert like_prefix("a%_\\b") == "a\\%\\_\\\\b%"


@pytest.fixture
def filled(vault: nc.Vault) -> nc.Vault:
    vault.put_many((cid, {"n": i}, "default", None) for i, cid in enumerate(IDS))
    return vault


def _ids(vault: nc.Vault, prefix: str, page: int) -> list[str]:
    return list(vault.store.iter_pages(
        lambda tx, after, size: tx.ids_under(vault.keyring_name, prefix, after_id=after, limit=size), page=page))


@pytest.mark.parametrize("page", [1000, 2])
def test_ids_under_is_exactly_starts_with(filled: nc.Vault, page: int) -> None:
    for prefix in PREFIXES:
        got = _ids(filled, prefix, page)
        assert sorted(got) == sorted(i for i in IDS if i.startswith(prefix)), prefix
        assert len(got) == len(set(got))
    other = filled.keyring("tenant")
    other.keys.initialize()
    assert _ids(other, "", 1000) == [] and _ids(other, "team/", 1000) == []  # per keyring


class _Counting:
    """A cursor that records the rows fetched through it."""

    def __init__(self, cursor: Any, seen: list[Any]) -> None:
        self._cursor, self._seen = cursor, seen

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        self._seen.extend(rows)
        return rows

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        if row is not None:
            self._seen.append(row)
        return row

    def __iter__(self) -> Iterator[Any]:
        for row in self._cursor:
            self._seen.append(row)
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.fixture
def credential_rows(filled: nc.Vault, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every row the store fetches from the credentials table (a spy: the real query runs)."""
    seen: list[Any] = []
    with filled.store.read() as tx:
        cls = type(tx)
    real = cls._exec

    def spy(self: Any, sql: str, params: Any = ()) -> Any:
        result = real(self, sql, params)
        return _Counting(result, seen) if "FROM credentials" in sql else result

    monkeypatch.setattr(cls, "_exec", spy)
    return seen


@pytest.fixture
def client(filled: nc.Vault) -> Iterator[TestClient]:
    app = create_app(filled)
    token, _ = app.state.backend.tokens.create(["root"])
    with TestClient(app, headers={"X-Vault-Token": token}) as c:
        yield c


def _list(client: TestClient, folder: str) -> Any:
    response = client.request("LIST", "/v1/secret/metadata/" + quote(folder, safe="/"))
    return response.status_code, response.json()


def test_kv_list_of_a_folder_reads_no_row_outside_it(
    filled: nc.Vault, client: TestClient, credential_rows: list[Any]
) -> None:
    with filled.store.transaction() as tx:  # a corrupt row outside the folder: LIST of team/ must not trip on it
        tx._exec("UPDATE credentials SET envelope = ? WHERE keyring = ? AND id = ?",  # type: ignore[attr-defined]
                 (b"junk", filled.keyring_name, "other/1"))
    credential_rows.clear()
    status, body = _list(client, "team")
    assert status == 200 and body["data"]["keys"] == ["a", "b/"]
    assert sorted(row[0] for row in credential_rows) == ["team/a", "team/b/c"]


@pytest.mark.parametrize(("folder", "keys"), [
    ("a%b", ["1", "sub/"]), ("a_b", ["5"]), ("a\\b", ["7"]), ("a\\\\b", ["8"]), ("é", ["1", "2"]),
    ("x\U0010ffff", ["1"]), ("", None),
])
def test_kv_list_keys_for_folders_with_wildcard_characters(
    client: TestClient, folder: str, keys: list[str] | None
) -> None:
    status, body = _list(client, folder)
    assert status == 200, body
    if keys is None:  # the root: every top-level name once
        keys = sorted({i.split("/", 1)[0] + ("/" if "/" in i else "") for i in IDS})
    assert body["data"]["keys"] == keys


def test_kv_list_of_a_folder_with_no_ids_is_404(client: TestClient) -> None:
    assert _list(client, "a%")[0] == 404  # "a%b/1" exists, but no id starts with "a%/"
    assert _list(client, "nothing")[0] == 404
