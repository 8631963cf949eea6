"""``nebula-credential serve``: checks, then granian.

The checks run before anything listens: a non-loopback address needs TLS
(or ``--insecure-no-tls``, warned about on every start), the TLS key file
must be a regular file readable by its owner only, and TLS 1.2 is the
floor.  granian runs ``--workers`` processes, each building the app from
the environment (:func:`app_from_env`); ``--maintain`` runs the daemon's
scheduler in a thread of each worker (the maintain pass coordinates
through the store, so any number of them may run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from .._files import open_regular
from .._net import is_loopback
from ..config import KeyManagementConfig, parse_addr
from ..exceptions import ConfigError
from ..opening import open as open_vault
from ..vault import Vault

logger = logging.getLogger("nebula_credential.server")

ENV_DB = "NEBULA_CREDENTIAL_DB"
ENV_CONFIG = "NEBULA_CREDENTIAL_CONFIG"
ENV_KEYRING = "NEBULA_CREDENTIAL_SERVE_KEYRING"
ENV_FLAGS = "NEBULA_CREDENTIAL_SERVE_FLAGS"


#: The most workers ``serve`` starts by default, however many cores (each is a Python process
#: with its own caches and store connections); more is a setting away.
MAX_DEFAULT_WORKERS = 8


def worker_count(configured: int) -> int:
    """``configured`` workers, or for 0 one per core this process may run on (at most
    :data:`MAX_DEFAULT_WORKERS`)."""
    if configured > 0:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True)
class ServeOptions:
    listen: str
    tls_cert_file: str = ""
    tls_key_file: str = ""
    insecure_no_tls: bool = False
    workers: int = 1
    maintain: bool = False
    maintain_interval: timedelta = timedelta(seconds=60)


def check_tls(options: ServeOptions) -> tuple[str, int]:
    """The (host, port) to bind, after the TLS rules; raises ConfigError naming the fix."""
    host, port = parse_addr(options.listen, "--listen")
    if bool(options.tls_cert_file) != bool(options.tls_key_file):
        raise ConfigError("server.tls_key_file", "give both a TLS certificate and its key file")
    if options.tls_key_file:
        key = Path(options.tls_key_file)
        try:
            fd = open_regular(key, os.O_RDONLY, "server.tls_key_file")
        except OSError as exc:
            raise ConfigError("server.tls_key_file", f"cannot read {key}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
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


def _healthz() -> tuple[int, str, bytes]:
    return 200, "application/json", b'{"status": "ok"}'


def worker_config(config: KeyManagementConfig, flags: dict[str, Any]) -> KeyManagementConfig:
    """The config with the limits ``serve`` was given on the command line."""
    server = config.server
    if flags.get("listen"):  # the console checks Host against the address actually served
        server = replace(server, listen=str(flags["listen"]))
    if flags.get("max_request_size"):
        server = replace(server, max_request_size=int(flags["max_request_size"]))
    if flags.get("request_timeout"):
        server = replace(server, request_timeout=timedelta(seconds=float(flags["request_timeout"])))
    return replace(config, server=server)


def app_from_env() -> Any:
    """The app of one worker process: store, config and flags from the environment ``serve`` set.

    The :class:`~nebula_credential.aio.AsyncVault` is opened at startup, on the
    worker's event loop, and closed at shutdown; ``/metrics`` and ``/healthz``
    come from the daemon's handlers, ``--maintain`` runs the daemon's loop in
    a thread beside it.
    """
    from .. import logredact
    from ..aio import aopen
    from ..metrics import MetricsExporter, register_login_metric, register_server_metrics
    from ._backend import backend_for
    from ._httpmetrics import HttpMetricsMiddleware
    from .app import create_app, ops_routes
    from .compose import console_app, console_routes
    from .ratelimit import REFUSAL_DELAY, RefusalCollector

    logredact.install()  # a worker process does not inherit the parent's filters
    config_path = os.environ.get(ENV_CONFIG)
    flags = json.loads(os.environ.get(ENV_FLAGS) or "{}")
    config = worker_config(KeyManagementConfig.load(config_path) if config_path else KeyManagementConfig(), flags)
    url = os.environ.get(ENV_DB) or config.store.url

    keyring = os.environ.get(ENV_KEYRING, "default")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        vault = await aopen(url, config=config, keyring=keyring)
        # /metrics scrapes and the scheduler run on threads of their own: they get a plain
        # Vault with its own connections rather than sharing the loop's bridged store
        ops = await asyncio.to_thread(open_vault, url, config=config, keyring=keyring)
        daemon = None
        try:
            vault.sync.store.checkpoint_in_background()  # SQLite: no request's commit copies the WAL back
            exporter = MetricsExporter(ops)
            exporter.attach(vault.sync)  # the serving vault feeds this process's histograms
            app.state.http_metrics = register_server_metrics(exporter)
            app.state.login_metric = register_login_metric(exporter)
            exporter.registry.register(RefusalCollector())  # 429s of the whole serve
            app.state.refusal_delay = REFUSAL_DELAY  # a flood past its budget waits for its 429s
            app.state.ops = {"/metrics": exporter.route, "/healthz": _healthz}
            if flags.get("maintain"):
                from ..daemon import Daemon

                daemon = Daemon(ops, interval=timedelta(seconds=float(flags["maintain"])), metrics_addr=None)
                app.state.ops["/healthz"] = daemon._healthz
                threading.Thread(target=daemon.run, kwargs={"install_signals": False}, name="nebula-maintain",
                                 daemon=True).start()
            app.state.backend = backend_for(vault, config)
            app.state.console = console_app(ops, config, api=app)  # /ui; username logins go through the API
            yield
        finally:
            if daemon is not None:
                daemon.request_stop()
            await vault.close()
            await asyncio.to_thread(ops.close)

    routes = [*ops_routes(["/metrics", "/healthz"]), *console_routes()]
    app = create_app(None, config, extra_routes=routes, lifespan=lifespan)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: times the whole request
    return app


def serve(vault: Vault, options: ServeOptions, *, url: str, config_path: str | None,
          max_request_size: int | None = None, request_timeout: timedelta | None = None) -> None:
    """Run granian (see docs/server.md for why granian) with ``options.workers`` processes.

    Each worker builds the app with :func:`app_from_env`; ``vault`` was opened
    here first so that a store or provider problem is one clear error before
    anything listens.
    """
    from granian import Granian

    from .._http import check_address_free
    from .ratelimit import serve_table

    host, port = check_tls(options)
    check_address_free(host, port, "--listen")  # granian's SO_REUSEPORT would let a second serve share the port
    os.environ[ENV_DB] = url
    os.environ[ENV_KEYRING] = vault.keyring_name
    if config_path:
        os.environ[ENV_CONFIG] = config_path
    os.environ[ENV_FLAGS] = json.dumps({
        "listen": options.listen,
        "max_request_size": max_request_size,
        "request_timeout": request_timeout.total_seconds() if request_timeout else None,
        "maintain": options.maintain_interval.total_seconds() if options.maintain else None,
    })
    tls: dict[str, Any] = {}
    if options.tls_key_file:
        # rustls: TLS 1.2 and 1.3 only; granian's own default floor is 1.3, ours is 1.2
        tls = {"ssl_cert": Path(options.tls_cert_file), "ssl_key": Path(options.tls_key_file),
               "ssl_protocol_min": "tls1.2"}
    logger.info("serving the Vault-compatible API on %s://%s:%d (%d worker(s))",
                "https" if tls else "http", host, port, options.workers)
    with serve_table():  # the rate limits and the free-space floor hold for all workers together
        Granian("nebula_credential.server.run:app_from_env", address=host, port=port, interface="asgi",  # type: ignore[arg-type]
                workers=options.workers, factory=True, websockets=False, log_access=False,
                workers_kill_timeout=10, **tls).serve()
