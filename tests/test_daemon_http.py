"""The daemon's /healthz and /metrics: granian (the one HTTP stack), the standard library without it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import nebula_credential as nc
from nebula_credential.daemon import Daemon
from nebula_credential.exceptions import ConfigError

from .helpers import free_port


@pytest.fixture
def local_vault(tmp_path: Path) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 'd.db'}", create=True)
    try:
        yield v
    finally:
        v.close()


def _health(daemon: Daemon) -> httpx.Response:
    daemon.start_http()
    assert daemon.server is not None
    try:
        host, port = daemon.server.address
        assert httpx.get(f"http://{host}:{port}/nope", timeout=10).status_code == 404
        return httpx.get(f"http://{host}:{port}/healthz?probe=1", timeout=10)
    finally:
        daemon.server.stop()


def test_daemon_health_is_served_by_granian(local_vault: nc.Vault) -> None:
    pytest.importorskip("granian")
    r = _health(Daemon(local_vault, metrics_addr=f"127.0.0.1:{free_port()}"))
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers["server"] == "granian"


def test_daemon_health_without_the_server_extra(local_vault: nc.Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("granian", "granian.constants", "granian.server", "granian.server.embed"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as on a base install
    r = _health(Daemon(local_vault, metrics_addr=f"127.0.0.1:{free_port()}"))
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.headers.get("server", "") != "granian"


def test_a_second_daemon_on_the_same_port_is_refused(local_vault: nc.Vault) -> None:
    """granian binds with SO_REUSEPORT; the daemon must still refuse a port in use, as before."""
    pytest.importorskip("granian")
    addr = f"127.0.0.1:{free_port()}"
    first = Daemon(local_vault, metrics_addr=addr)
    first.start_http()
    try:
        with pytest.raises(ConfigError, match="address already in use") as refused:
            Daemon(local_vault, metrics_addr=addr).start_http()
        assert refused.value.field == "--metrics-addr"
    finally:
        assert first.server is not None
        first.server.stop()
