"""How an endpoint reads its request body from the ASGI channel (:func:`read_body`, :func:`read_json`).

The server hands a small body over as one message with ``more_body`` set and
only says it is over in a second, empty one; each ``receive`` is a task on
the server's runtime, so once the declared ``Content-Length`` has arrived the
body is read.  Before, every body took that second ``receive``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from nebula_credential.server._request import read_body, read_json, request_token
from nebula_credential.server.dispatch import VaultRequestPath
from nebula_credential.server.errors import HTTPError


def _request(messages: Iterable[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> tuple[Request, list[int]]:
    """A request whose ``receive`` gives ``messages`` in order and fails if asked for more."""
    pending = list(messages)
    calls = [0]

    async def receive() -> dict[str, Any]:
        calls[0] += 1
        if not pending:
            raise AssertionError("receive called past the messages the server would give")
        return pending.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope, receive), calls


def _body(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def test_a_body_of_its_declared_length_takes_one_receive() -> None:
    raw = b'{"plaintext": "aGVsbG8="}'
    request, calls = _request([_body(raw, True)], [(b"content-length", str(len(raw)).encode())])
    assert asyncio.run(read_json(request)) == {"plaintext": "aGVsbG8="}
    assert calls[0] == 1
    assert asyncio.run(request.body()) == raw  # Starlette's own read gives the same bytes, no receive


def test_a_body_in_pieces_is_read_to_its_length() -> None:
    request, calls = _request([_body(b'{"a"', True), _body(b': 1}', True)], [(b"content-length", b"8")])
    assert asyncio.run(read_json(request)) == {"a": 1}
    assert calls[0] == 2


def test_a_chunked_body_is_read_to_its_last_message() -> None:
    # a length beside the chunked framing says nothing: the chunks end the body
    request, calls = _request([_body(b'{"a": 1}', True), _body(b"", False)],
                              [(b"content-length", b"8"), (b"transfer-encoding", b"chunked")])
    assert asyncio.run(read_json(request)) == {"a": 1}
    assert calls[0] == 2


def test_without_a_length_the_body_is_read_to_its_last_message() -> None:
    request, calls = _request([_body(b"[", True), _body(b"]", True), _body(b"", False)], [])
    assert asyncio.run(read_body(request)) == b"[]"
    assert calls[0] == 3


@pytest.mark.parametrize("headers", [[], [(b"content-length", b"0")]])
def test_an_empty_body_is_an_empty_object(headers: list[tuple[bytes, bytes]]) -> None:
    request, calls = _request([_body(b"", False)], headers)
    assert asyncio.run(read_json(request)) == {}
    assert calls[0] == 1


def test_a_client_gone_mid_body_is_a_client_disconnect() -> None:
    request, _ = _request([_body(b'{"a"', True), {"type": "http.disconnect"}], [(b"content-length", b"8")])
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(request))


def test_the_receive_channel_limit_still_answers_413() -> None:
    """The request path's body-limit wrapper is the request's receive: a body that grows past the
    limit while read (no Content-Length: chunked) fails with its 413 through the lean read."""
    chunks = iter([_body(b'{"a": "', True), _body(b"0123456789", True), _body(b'"}', False)])

    async def receive() -> dict[str, Any]:
        return next(chunks)

    limited = VaultRequestPath(lambda *a: None, max_body=10)._limited(receive)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"transfer-encoding", b"chunked")],
             "query_string": b""}
    with pytest.raises(HTTPError) as refused:
        asyncio.run(read_json(Request(scope, limited)))
    assert refused.value.status == 413


@pytest.mark.parametrize(("headers", "token"), [
    ([(b"x-vault-token", b"ncs.first"), (b"x-vault-token", b"ncs.second")], "ncs.first"),
    ([(b"x-vault-token", b""), (b"authorization", b"Bearer ncs.bearer")], "ncs.bearer"),  # empty: the Bearer one
    ([(b"authorization", b"BEARER  ncs.caps ")], "ncs.caps"),
    ([(b"authorization", b"Basic dXNlcjpwYXNz")], ""),
    ([(b"x-vault-token", b"ncs.vault"), (b"authorization", b"Bearer ncs.bearer")], "ncs.vault"),
    ([], ""),
])
def test_the_token_is_read_as_starlettes_headers_gave_it(headers: list[tuple[bytes, bytes]], token: str) -> None:
    """The token comes from the raw headers in one pass, with the answers ``request.headers.get`` gave:
    the first X-Vault-Token, else a Bearer token (any case, stripped)."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})
    assert request_token(request) == token
    vault = request.headers.get("x-vault-token", "")
    auth = request.headers.get("authorization", "")
    assert token == (vault or (auth[7:].strip() if auth[:7].lower() == "bearer " else ""))
