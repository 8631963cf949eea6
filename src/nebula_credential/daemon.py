"""The daemon: ``maintain`` every interval, /healthz (and /metrics) over HTTP.

The HTTP endpoints are served by granian, as ``serve`` is (its embedded
server, on a thread; see :mod:`._http`, which falls back to a minimal
standard-library server on a base install without the ``server`` extra).

SIGTERM/SIGINT set a stop flag that the re-encryption pass checks between
batches, so shutdown finishes the batch in hand and never leaves a
transaction half-done.  Several daemons may run against one store; the
maintain pass coordinates through the store itself.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType

from ._http import Handler, Serving, serve_ops
from .config import parse_addr
from .exceptions import CorruptRecordError, MissingDependencyError, NebulaCredentialError, PolicyViolationError
from .maintenance import MaintainReport, maintain
from .models import utc_now
from .vault import Vault

logger = logging.getLogger("nebula_credential.daemon")


class Daemon:
    def __init__(
        self,
        vault: Vault,
        *,
        interval: timedelta = timedelta(seconds=60),
        metrics_addr: str | None = "127.0.0.1:9464",
        keyrings: list[str] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.vault = vault
        self.interval = interval
        self.metrics_addr = metrics_addr
        self.keyrings = keyrings
        self.clock = clock
        self.stop_event = threading.Event()
        self.passes = 0
        self.last_pass: datetime | None = None
        self.last_error: str | None = None
        self.routes: dict[str, Handler] = {"/healthz": self._healthz}
        self.disabled: set[str] = set()  # routes that only answer 501 (their extra is missing)
        self.server: Serving | None = None

    def _healthz(self) -> tuple[int, str, bytes]:
        body = {
            "status": "ok" if self.last_error is None else "degraded",
            "passes": self.passes,
            "last_pass": self.last_pass.isoformat() if self.last_pass else None,
            "last_error": self.last_error,
            "interval_seconds": self.interval.total_seconds(),
        }
        return (200 if self.last_error is None else 503), "application/json", json.dumps(body).encode()

    def _targets(self) -> list[Vault]:
        names = self.keyrings
        if names is None:
            names = self.vault.keyring_names() or [self.vault.keyring_name]
        return [self.vault if n == self.vault.keyring_name else self.vault.keyring(n) for n in names]

    def run_pass(self) -> list[MaintainReport]:
        """One maintain pass per keyring; a keyring whose key table holds a corrupt
        record is reported and skipped, the others carry on (the pass then fails)."""
        reports = []
        corrupt: list[CorruptRecordError] = []
        for target in self._targets():
            if self.stop_event.is_set():
                break
            try:
                report = maintain(target, should_stop=self.stop_event.is_set)
            except CorruptRecordError as exc:
                logger.error("keyring %s skipped: %s", target.keyring_name, exc)
                corrupt.append(exc)
                continue
            for line in report.actions():
                logger.info("%s", line)
            failures = report.reencryption.failures if report.reencryption else []
            for f in failures[:20]:  # corrupt or undecryptable rows, by id; the pass carried on
                logger.warning("%s: could not re-encrypt %s (v%d): %s", report.keyring, f.id, f.key_version, f.reason)
            reports.append(report)
        if corrupt:
            raise corrupt[0]
        self.passes += 1
        self.last_pass = self.clock()
        bound = next((r.usage_bound for r in reports if r.usage_bound), None)
        if bound:  # auto_rotation = false: no rotation; /healthz says degraded until an operator rotates
            raise PolicyViolationError(bound)
        return reports

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            logger.info("signal %s received: finishing the current batch, then stopping", signum)
        self.stop_event.set()

    def enable_metrics(self) -> bool:
        """Serve /metrics and feed its histograms; without the ``metrics`` extra, say so once.

        The scheduler and /healthz need nothing optional, so a missing
        ``prometheus_client`` never stops the daemon: it logs one warning and
        /metrics answers 501 naming the extra to install.
        """
        from .metrics import MetricsExporter

        try:
            exporter = MetricsExporter(self.vault)
        except MissingDependencyError as exc:
            message = f"/metrics is disabled: {exc}"
            logger.warning("%s", message)
            body = (message + "\n").encode()
            self.routes["/metrics"] = lambda: (501, "text/plain; charset=utf-8", body)
            self.disabled.add("/metrics")  # answered (501 names the extra), never announced as served
            return False
        exporter.attach(self.vault)
        self.routes["/metrics"] = exporter.route
        return True

    def start_http(self) -> None:
        if self.metrics_addr:
            host, port = parse_addr(self.metrics_addr, "--metrics-addr")
            self.server = serve_ops(host, port, self.routes)
            served = sorted(set(self.routes) - self.disabled)
            logger.info("serving %s on http://%s:%d", ", ".join(served), *self.server.address)

    def run(self, *, install_signals: bool = True, max_passes: int | None = None) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self.start_http()
        attempts = 0
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                attempts += 1
                try:
                    self.run_pass()
                    self.last_error = None
                except NebulaCredentialError as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.error("maintain pass failed: %s", self.last_error)
                if max_passes is not None and attempts >= max_passes:  # a failed pass counts too
                    break
                wait = self.interval.total_seconds() - (time.monotonic() - started)
                self.stop_event.wait(max(wait, 0.0))
        finally:
            if self.server is not None:
                self.server.stop()
            logger.info("daemon stopped after %d pass(es)", self.passes)
        return 0
