"""Server hardening against a real ``serve`` process: framing, ``Expect: 100-continue``, one server per port.

Before: ``Transfer-Encoding: CHUNKED`` (or ``:\\tchunked``) with a plain body
answered 500 (the framework ends the body stream, Starlette raised
ClientDisconnect); an over-limit ``Content-Length`` with ``Expect:
100-continue`` got ``100 Continue`` and the server read up to 16 MiB
before its 413; a second ``serve`` on a port in use started and shared it
(SO_REUSEPORT), splitting requests between two stores.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .helpers import stop_process
from .server_proc import Server, sqlite_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "hardening") as srv:
        srv.root = srv.token("root")
        yield srv


def _exchange(server: Server, request: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes, return what the server answers within ``wait`` seconds (until it closes or is quiet)."""
    host, port = server.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        answer = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and not answer.startswith(b"HTTP/1.1 100"):
                head, _, body = answer.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
        return answer


@pytest.mark.parametrize("header", [b"Transfer-Encoding: CHUNKED", b"Transfer-Encoding:\tchunked",
                                    b"Transfer-Encoding: chunked"])
def test_a_chunked_header_with_a_plain_body_is_not_a_500(server: Server, header: bytes) -> None:
    body = b'{"data": {"a": "b"}}'
    request = (b"POST /v1/secret/data/framing HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: "
               + server.root.encode() + b"\r\n" + header + b"\r\nContent-Type: application/json\r\n\r\n" + body)
    answer = _exchange(server, request)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    assert answer == b"" or 400 <= status < 500, answer[:200]


def test_expect_continue_over_the_limit_gets_413_without_reading_the_body(server: Server) -> None:
    request = (b"PUT /v1/secret/data/big HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: " + server.root.encode()
               + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000000\r\n\r\n")
    started = time.monotonic()
    answer = _exchange(server, request, wait=5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 4


def test_a_second_serve_on_the_same_address_fails(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    second = subprocess.Popen(
        [sys.executable, "-m", "nebula_credential", "--db", server.db, "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=server.folder, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = second.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process(second)  # type: ignore[arg-type]
        pytest.fail("a second serve on a port in use kept running")
    assert second.returncode != 0
    assert b"address already in use" in out
    with server.http() as client:  # the first one still serves
        assert client.get("/v1/sys/health").status_code == 200
