"""``nebula-credential serve``: checks, then uvicorn.

The checks run before anything listens: a non-loopback address needs TLS
(or ``--insecure-no-tls``, warned about on every start), the TLS key file
must be a regular file readable by its owner only, and TLS 1.2 is the
floor.  ``--maintain`` runs the daemon's scheduler in a thread of this
process (the maintain pass coordinates through the store, so any number of
instances may do so).  With several workers uvicorn starts processes that
build the app from the environment (:func:`app_from_env`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..config import KeyManagementConfig, parse_addr
from ..exceptions import ConfigError
from ..vault import Vault
from ..vault import open as open_vault

logger = logging.getLogger("nebula_credential.server")

ENV_DB = "NEBULA_CREDENTIAL_DB"
ENV_CONFIG = "NEBULA_CREDENTIAL_CONFIG"
ENV_KEYRING = "NEBULA_CREDENTIAL_SERVE_KEYRING"


@dataclass(frozen=True)
class ServeOptions:
    listen: str
    tls_cert_file: str = ""
    tls_key_file: str = ""
    insecure_no_tls: bool = False
    workers: int = 1
    maintain: bool = False
    maintain_interval: timedelta = timedelta(seconds=60)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tls(options: ServeOptions) -> tuple[str, int]:
    """The (host, port) to bind, after the TLS rules; raises ConfigError naming the fix."""
    host, port = parse_addr(options.listen, "--listen")
    if bool(options.tls_cert_file) != bool(options.tls_key_file):
        raise ConfigError("server.tls_key_file", "give both a TLS certificate and its key file")
    if options.tls_key_file:
        key = Path(options.tls_key_file)
        try:
            st = key.stat()
        except OSError as exc:
            raise ConfigError("server.tls_key_file", f"cannot read {key}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("server.tls_key_file", f"{key} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError("server.tls_key_file",
                              f"{key} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"run: chmod 600 {key}")
        if not Path(options.tls_cert_file).is_file():
            raise ConfigError("server.tls_cert_file", f"{options.tls_cert_file} not found")
    elif not is_loopback(host) and not options.insecure_no_tls:
        raise ConfigError("--listen", f"{host} is not a loopback address: give tls_cert_file and "
                          "tls_key_file ([server] or --tls-cert/--tls-key), or --insecure-no-tls")
    if options.insecure_no_tls and not options.tls_key_file and not is_loopback(host):
        logger.warning("serving plain HTTP on non-loopback %s:%d (--insecure-no-tls): tokens and "
                       "secrets cross the network unencrypted", host, port)
    return host, port


def tls_context(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context with TLS 1.2 as the floor, whatever the OpenSSL defaults."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def build_app(vault: Vault, config: KeyManagementConfig, *, healthz: Callable[[], tuple[int, str, bytes]] | None
              = None) -> Any:
    from ..metrics import MetricsExporter
    from .app import create_app, ops_routes

    exporter = MetricsExporter(vault)
    exporter.attach(vault)
    handlers = {"/metrics": exporter.route, "/healthz": healthz or _healthz}
    return create_app(vault, config, extra_routes=ops_routes(handlers))


def _healthz() -> tuple[int, str, bytes]:
    return 200, "application/json", b'{"status": "ok"}'


def app_from_env() -> Any:
    """The app of one worker process (``--workers N``): store and config from the environment."""
    config_path = os.environ.get(ENV_CONFIG)
    config = KeyManagementConfig.load(config_path) if config_path else KeyManagementConfig()
    vault = open_vault(os.environ.get(ENV_DB) or config.store.url, config=config,
                       keyring=os.environ.get(ENV_KEYRING, "default"))
    return build_app(vault, config)


def serve(vault: Vault, config: KeyManagementConfig, options: ServeOptions, *, url: str,
          config_path: str | None) -> None:
    import uvicorn

    host, port = check_tls(options)
    daemon = None
    if options.maintain:
        from ..daemon import Daemon

        daemon = Daemon(vault, interval=options.maintain_interval, metrics_addr=None)
        threading.Thread(target=daemon.run, kwargs={"install_signals": False}, name="nebula-maintain",
                         daemon=True).start()
    tls: dict[str, Any] = {}
    if options.tls_key_file:
        tls = {"ssl_certfile": options.tls_cert_file, "ssl_keyfile": options.tls_key_file,
               "ssl_context_factory": tls_context}
    common: dict[str, Any] = {"host": host, "port": port, "access_log": False, "log_level": "info",
                              "server_header": False, "timeout_graceful_shutdown": 10,
                              "http": "h11", **tls}  # httptools refuses the LIST method hvac sends
    scheme = "https" if tls else "http"
    logger.info("serving the Vault-compatible API on %s://%s:%d (%d worker(s))", scheme, host, port, options.workers)
    try:
        if options.workers > 1:
            os.environ[ENV_DB] = url
            os.environ[ENV_KEYRING] = vault.keyring_name
            if config_path:
                os.environ[ENV_CONFIG] = config_path
            uvicorn.run("nebula_credential.server.run:app_from_env", factory=True, workers=options.workers,
                        **common)
        else:
            app = build_app(vault, config, healthz=daemon._healthz if daemon is not None else None)
            uvicorn.run(app, **common)
    finally:
        if daemon is not None:
            daemon.request_stop()
