"""Trust boundary, issue 13 section 1: nothing read from the store decides the root of trust.

An attacker with write access to the database edits the store's provider
record: another provider type, a URL or endpoint of theirs, another PKCS#11
library, another token file or environment variable, TLS verification off.
Every real CLI process run afterwards must do exactly what its own config
says: a recording server (a real listening socket) receives no connection,
the planted library is never loaded, no secret reaches any output.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import nebula_credential as nc
from nebula_credential.providers.local import LocalKeyProvider

from .helpers import BackgroundHttpServer, cli_env, provider_config, run_cli

TOKEN = "tok-4b1d-never-leaves"
ENV_SECRET = "env-secret-7f3a-never-leaves"


class Recorder:
    """A plain HTTP server on a loopback port that counts every TCP connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.seen = threading.Event()
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                recorder.requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                conn = super().get_request()
                recorder.connections += 1
                recorder.seen.set()
                return conn

        self.http = BackgroundHttpServer(Handler, Server)
        self.url = self.http.url


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    # the recorder really listens: a probe connection is seen
    with socket.create_connection(("127.0.0.1", r.http.port)):
        pass
    assert r.seen.wait(30) and r.connections == 1
    r.connections = 0
    yield r
    r.http.close()


@pytest.fixture
def evil_library(tmp_path: Path) -> tuple[Path, Path]:
    """A shared library whose constructor writes a marker file when anything loads it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the planted library")
    marker = tmp_path / "evil-loaded"
    src = tmp_path / "evil.c"
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("loaded", f); fclose(f); }}\n'
        "}\n"
    )
    lib = tmp_path / "libevil.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib, marker


def _set_record(db: Path, record: dict[str, Any]) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE meta SET value = ? WHERE name = 'provider'", (json.dumps(record),)).rowcount == 1


def _toml(settings: dict[str, Any]) -> str:
    return "[provider]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items() if v is not None)


def _planted_records(url: str, secret_file: Path, library: Path, attacker_key: Path) -> list[dict[str, Any]]:
    """What a database writer might write, old format (settings) and new (fingerprint) alike."""
    return [
        {"type": "vault-transit", "settings": {"url": url, "key_name": "k", "token_file": str(secret_file),
                                               "verify": False}},
        {"type": "vault-transit", "settings": {"url": url, "key_name": "k", "token_env": "NEBULA_TEST_SECRET",
                                               "verify": False}},
        {"type": "aws-kms", "settings": {"key_id": "alias/x", "region": "us-east-1", "endpoint_url": url}},
        {"type": "azure-keyvault", "settings": {"vault_url": url.replace("http:", "https:"), "key_name": "k",
                                                "tenant_id": "t", "client_id": "c",
                                                "client_secret_env": "NEBULA_TEST_SECRET",
                                                "authority": url, "connection_verify": False}},
        {"type": "pkcs11", "settings": {"library": str(library), "token_label": "T", "key_label": "k",
                                        "pin_env": "NEBULA_TEST_SECRET"}},
        {"type": "local", "settings": {"key_file": str(attacker_key)}},
        {"type": "local", "root_key_id": "0" * 16, "settings": {"key_file": str(attacker_key)}},
    ]


def test_edited_provider_record_changes_nothing_the_cli_does(
    tmp_path: Path, recorder: Recorder, evil_library: tuple[Path, Path]
) -> None:
    library, marker = evil_library
    secret_file = tmp_path / "token"
    secret_file.write_text(TOKEN + "\n")
    secret_file.chmod(0o600)
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    LocalKeyProvider.create(elsewhere / "their.key")
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    env = cli_env(NEBULA_CREDENTIAL_DB="sqlite:///c.db", NEBULA_TEST_SECRET=ENV_SECRET)
    assert run_cli("init", cwd=store, env=env).returncode == 0
    assert run_cli("put", "gh", "--value", '{"t": "v"}', cwd=store, env=env).returncode == 0

    tried = 0
    for record in _planted_records(recorder.url, secret_file, library, elsewhere / "their.key"):
        _set_record(store / "c.db", record)
        for args in (("--json", "get", "gh"), ("list",), ("--json", "doctor"), ("provider", "check"),
                     ("put", "x", "--value", "1"), ("maintain",)):
            res = run_cli(*args, cwd=store, env=env)
            tried += 1
            assert recorder.connections == 0, (record, args, recorder.requests)
            assert not marker.exists(), f"{record} made `{' '.join(args)}` load {library}"
            out = res.stdout + res.stderr
            assert TOKEN not in out and ENV_SECRET not in out and "Traceback" not in out, (record, args, out)
            if record["type"] == "local":
                # the settings are ignored: the process's own default key file opens the store
                assert res.returncode == 0, (record, args, out)
                if args[1:] == ("get", "gh"):
                    assert json.loads(res.stdout)["value"] == {"t": "v"}
            else:
                # another type is refused, naming both and saying where settings come from
                assert res.returncode == 1, (record, args, out)
                assert record["type"] in out and "config" in out, (record, args, out)
    assert tried == 42


def test_type_mismatch_with_the_configured_provider_names_both(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    nc.open(url, create=True).close()
    cfg = provider_config({"type": "vault-transit", "url": "https://127.0.0.1:1", "key_name": "k",
                           "token_env": "NEBULA_TEST_SECRET"})
    with pytest.raises(nc.ConfigError) as err:
        nc.open(url, config=cfg)
    assert "'local'" in str(err.value) and "'vault-transit'" in str(err.value)


def test_another_root_key_is_refused_naming_both(tmp_path: Path, key_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with nc.open(url, create=True) as v:
        ours = v.provider.root_key_id()
    other = tmp_path / "other.key"
    theirs = LocalKeyProvider.create(other).root_key_id()
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(other))
    with pytest.raises(nc.ConfigError) as err:
        nc.open(url)
    assert ours in str(err.value) and theirs in str(err.value)


def test_the_record_holds_a_fingerprint_and_follows_root_rotation(tmp_path: Path, key_file: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with nc.open(url, create=True) as v:
        v.put("a", 1)
        from nebula_credential.rootkeys import rotate_root_key

        result = rotate_root_key(v.store, v.provider, v.audit)
    with sqlite3.connect(tmp_path / "c.db") as conn:
        record = json.loads(conn.execute("SELECT value FROM meta WHERE name = 'provider'").fetchone()[0])
    assert record == {"type": "local", "root_key_id": result.new_root_key_id}
    with nc.open(url) as v:
        assert v.get("a") == 1


def test_local_provider_without_a_sqlite_file_needs_the_key_file_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", raising=False)
    with pytest.raises(nc.ConfigError, match="NEBULA_CREDENTIAL_MASTER_KEY_FILE"):
        nc.open("sqlite:///:memory:", create=True)


# ---- real providers: an edited record never redirects a configured process -------------
def _real_provider_case(
    request: pytest.FixtureRequest, kind: str, recorder_url: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the process's settings, the settings a database writer plants)."""
    if kind == "vault-transit":
        bao = request.getfixturevalue("openbao")
        return bao.settings(), {"url": recorder_url, "verify": False, "token_env": "NEBULA_TEST_SECRET"}
    if kind == "aws-kms":
        kms = request.getfixturevalue("moto_kms")
        return kms.settings(), {"endpoint_url": recorder_url, "region": "eu-west-3"}
    if kind == "azure-keyvault":
        azure = request.getfixturevalue("azure_vault")
        return azure.settings(), {"vault_url": recorder_url.replace("http:", "https:"), "authority": recorder_url,
                                  "connection_verify": False, "client_secret_env": "NEBULA_TEST_SECRET"}
    hsm = request.getfixturevalue("softhsm")
    return hsm.settings(), {"library": str(request.getfixturevalue("evil_library")[0]),
                            "pin_env": "NEBULA_TEST_SECRET"}


@pytest.mark.parametrize("kind", ["vault-transit", "aws-kms", "azure-keyvault", "pkcs11"])
def test_real_provider_ignores_planted_settings(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder
) -> None:
    settings, planted = _real_provider_case(request, kind, recorder.url)
    (tmp_path / "c.toml").write_text(_toml(settings))
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}", NEBULA_TEST_SECRET=ENV_SECRET,
                  NEBULA_CREDENTIAL_CONFIG=str(tmp_path / "c.toml"))
    res = run_cli("init", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert run_cli("put", "gh", "--value", '{"t": "v"}', cwd=tmp_path, env=env).returncode == 0
    _set_record(tmp_path / "c.db", {"type": kind, "settings": {**settings, **planted}})
    res = run_cli("--json", "get", "gh", cwd=tmp_path, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["value"] == {"t": "v"}, res.stderr
    assert run_cli("doctor", cwd=tmp_path, env=env).returncode == 0
    # and without the config, the store's record is not a fallback
    bare = {k: v for k, v in env.items() if k != "NEBULA_CREDENTIAL_CONFIG"}
    res = run_cli("get", "gh", cwd=tmp_path, env=bare)
    assert res.returncode == 1 and kind in res.stderr and "NEBULA_CREDENTIAL_CONFIG" in res.stderr
    assert recorder.connections == 0 and ENV_SECRET not in res.stderr
    if kind == "pkcs11":
        assert not request.getfixturevalue("evil_library")[1].exists()


def test_a_garbled_provider_record_is_a_typed_error(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_cli("init", cwd=tmp_path, env=env).returncode == 0
    for garbage in ("not json", "[]", '{"type": 7}'):
        with sqlite3.connect(tmp_path / "c.db") as conn:
            conn.execute("UPDATE meta SET value = ? WHERE name = 'provider'", (garbage,))
        res = run_cli("get", "x", cwd=tmp_path, env=env)
        assert res.returncode == 1 and "meta record 'provider' is not a provider fingerprint" in res.stderr
        assert "Traceback" not in res.stderr


def test_key_file_flag_is_for_the_local_provider_only(tmp_path: Path) -> None:
    env = cli_env(NEBULA_CREDENTIAL_DB=f"sqlite:///{tmp_path / 'c.db'}")
    res = run_cli("init", "--provider", "aws-kms", "--key-file", "k.key", cwd=tmp_path, env=env)
    assert res.returncode == 2 and "--key-file applies to the local provider only" in res.stderr
    assert not (tmp_path / "k.key").exists() and not (tmp_path / "c.db").exists()
