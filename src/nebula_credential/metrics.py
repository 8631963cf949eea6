"""Prometheus metrics, named after the seed's ``KeyMetrics``.

State (versions, credentials per version, re-encryption progress, key age,
rotations, access errors recorded in the audit trail) is read from the
store at scrape time by a custom collector, so several daemons scraping one
store report the same truth.  Latency histograms and request counters are
per process: they are fed by the vault's and the provider's observer hooks,
never from inside ``KeyManager.encrypt``/``decrypt``, whose hot path stays
one AES-GCM call plus a header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._extras import require
from .models import KeyStatus, to_epoch
from .rowmac import AUTHENTICATED_TABLES, rejected_action

if TYPE_CHECKING:
    from .vault import Vault

#: Audit actions that count as key access errors (persisted, so every instance agrees).
ACCESS_ERROR_ACTIONS = ("decrypt.refused", "decrypt.failed", "reencrypt.failed", "server.denied")
ROTATION_ACTIONS = ("key.rotate",)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric as PromQL names it (counters with their ``_total``)."""

    name: str
    type: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()

    def series(self) -> tuple[str, ...]:
        """The series names Prometheus stores for it: what a query or alert rule may use."""
        if self.type == "counter":
            base = self.name.removesuffix("_total")
            return (base + "_total", base + "_created")
        if self.type == "histogram":
            return tuple(self.name + s for s in ("_bucket", "_count", "_sum", "_created"))
        return (self.name,)


#: The HTTP server's metrics, declared here once: the server registers them from
#: this list and the Grafana dashboard test checks its queries against it.
SERVER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "nebula_credential_http_requests_total", "counter", "HTTP requests served", ("method", "route", "status")
    ),
    MetricSpec(
        "nebula_credential_http_request_duration_seconds",
        "histogram",
        "HTTP request latency from the first byte read to the last byte written",
        ("method", "route"),
    ),
)


#: Logins to the server's auth methods by method (approle, userpass, jwt) and outcome (ok, error, limited).
#: 429s by the budget that was spent (``server.ratelimit.REASONS``), counted for the whole ``serve``.
RATE_LIMIT_METRIC = MetricSpec(
    "nebula_credential_http_rate_limited_total", "counter",
    "Requests refused with 429 by the budget they spent: unauthenticated_or_denied (per source address), "
    "login_source, login_user (failed API logins), console_login (failed console logins)",
    ("reason",))

LOGIN_METRIC = MetricSpec("nebula_credential_auth_logins_total", "counter", "Logins by auth method and outcome",
                          ("method", "outcome"))


@dataclass(frozen=True, slots=True)
class KeyMetrics:
    """A snapshot of one keyring's key state (the seed's ``KeyMetrics``)."""

    keyring: str
    active_version: int | None
    active_versions: int  # versions that can still decrypt (active, valid, grace)
    total_versions: int
    rotation_events: int
    current_key_age_days: float
    credentials_per_version: dict[int, int] = field(default_factory=dict)
    pending_reencryption: int = 0
    total_credentials: int = 0
    key_access_errors: int = 0
    #: Key versions per lifecycle status (every status present, zero included).
    versions_by_status: dict[str, int] = field(default_factory=dict)
    #: The configured ``[keys] max_key_age`` in days: the limit key age is measured against.
    max_key_age_days: float = 0.0
    #: Encryptions reserved under the active version, and the configured ``[rotation] max_encryptions``.
    active_encryptions: int = 0
    max_encryptions: int = 0

    @property
    def reencryption_progress(self) -> float:
        if self.total_credentials == 0:
            return 1.0
        return (self.total_credentials - self.pending_reencryption) / self.total_credentials


def snapshot(vault: Vault, now: datetime | None = None) -> KeyMetrics:
    """Read one keyring's state from the store (a few small queries)."""
    now = now or vault.clock()
    kr = vault.keyring_name
    with vault.store.read() as tx:
        versions = tx.list_versions(kr)
        counts = tx.count_by_version(kr)
        audit = tx.audit_counts(ACCESS_ERROR_ACTIONS + ROTATION_ACTIONS)
    active = next((v for v in versions if v.status is KeyStatus.ACTIVE), None)
    total = sum(counts.values())
    pending = total - counts.get(active.version, 0) if active else total
    return KeyMetrics(
        keyring=kr,
        active_version=active.version if active else None,
        active_versions=sum(1 for v in versions if v.status.can_decrypt),
        total_versions=len(versions),
        rotation_events=sum(n for (a, k), n in audit.items() if a in ROTATION_ACTIONS and k == kr),
        current_key_age_days=((now - active.created_at).total_seconds() / 86400) if active else 0.0,
        credentials_per_version=dict(counts),
        pending_reencryption=pending,
        total_credentials=total,
        key_access_errors=sum(n for (a, k), n in audit.items() if a in ACCESS_ERROR_ACTIONS and k == kr),
        versions_by_status={st.value: sum(1 for v in versions if v.status is st) for st in KeyStatus},
        max_key_age_days=vault.config.keys.max_key_age.total_seconds() / 86400,
        active_encryptions=active.encryptions if active else 0,
        max_encryptions=vault.config.rotation.max_encryptions,
    )


def keyring_vaults(vault: Vault) -> list[Vault]:
    with vault.store.read() as tx:
        names = tx.keyrings() or [vault.keyring_name]
    return [vault if n == vault.keyring_name else vault.keyring(n) for n in names]


def _prometheus() -> Any:
    return require("prometheus_client", "metrics")


#: Label sets whose children :meth:`MetricsExporter.observe_vault` keeps at hand (a cache, cleared when full).
_CHILDREN_MAX = 4096


class MetricsExporter:
    """A private CollectorRegistry with store-backed gauges and per-process histograms."""

    def __init__(self, vaults: Sequence[Vault] | Vault) -> None:
        pc = _prometheus()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._vaults: list[Vault] = [vaults] if not isinstance(vaults, Sequence) else list(vaults)
        self.registry = pc.CollectorRegistry(auto_describe=False)
        buckets = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
        self.op_latency = pc.Histogram(
            "nebula_credential_operation_seconds",
            "Credential encrypt/decrypt latency (vault layer)",
            ["keyring", "operation"],
            buckets=buckets,
            registry=self.registry,
        )
        self.provider_latency = pc.Histogram(
            "nebula_credential_provider_call_seconds",
            "Key provider call latency",
            ["provider", "operation"],
            buckets=buckets,
            registry=self.registry,
        )
        self.requests = pc.Counter(
            "nebula_credential_key_requests",
            "Credential encrypt/decrypt requests in this process",
            ["keyring", "operation"],
            registry=self.registry,
        )
        self.request_errors = pc.Counter(
            "nebula_credential_key_request_errors",
            "Failed credential decrypts in this process",
            ["keyring", "operation"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        exporter = self

        class _StoreCollector:
            def collect(self) -> Iterator[Any]:
                snaps = [snapshot(v) for v in exporter._all_vaults()]
                active = GaugeMetricFamily(
                    "nebula_credential_active_versions", "Key versions that can still decrypt", labels=["keyring"]
                )
                rot = CounterMetricFamily(
                    "nebula_credential_rotation_events", "Rotations recorded in the audit trail", labels=["keyring"]
                )
                prog = GaugeMetricFamily(
                    "nebula_credential_reencryption_progress",
                    "Share of credentials under the active version (0..1)",
                    labels=["keyring"],
                )
                age = GaugeMetricFamily(
                    "nebula_credential_current_key_age_days", "Age of the active version in days", labels=["keyring"]
                )
                per = GaugeMetricFamily(
                    "nebula_credential_credentials_per_version",
                    "Stored credentials per key version",
                    labels=["keyring", "version"],
                )
                pending = GaugeMetricFamily(
                    "nebula_credential_reencryption_pending",
                    "Credentials not yet under the active version",
                    labels=["keyring"],
                )
                errors = CounterMetricFamily(
                    "nebula_credential_key_access_errors",
                    "Refused or failed decrypts recorded in the audit trail",
                    labels=["keyring"],
                )
                reads = CounterMetricFamily(
                    "nebula_credential_store_key_accesses",
                    "Credential reads by every process, per key version (store counters, flushed in blocks)",
                    labels=["keyring", "version"],
                )
                failed = CounterMetricFamily(
                    "nebula_credential_store_key_access_failures",
                    "Failed credential reads by every process, per key version (store counters)",
                    labels=["keyring", "version"],
                )
                # Rows that grant access refused for a failed MAC (audited by every server process:
                # alert NebulaCredentialRowsRejected in deploy/prometheus-rules.yml).
                rejected = CounterMetricFamily(
                    "nebula_credential_rows_rejected",
                    "Token, policy and role rows refused because their MAC failed (edited in the database)",
                    labels=["table"],
                )
                for v in exporter._vaults:
                    v.access.flush()
                with exporter._vaults[0].store.read() as tx:
                    totals = tx.key_access_totals()
                    row_counts = tx.audit_counts([rejected_action(t) for t in AUTHENTICATED_TABLES])
                for table in AUTHENTICATED_TABLES:
                    rejected.add_metric([table], sum(n for (a, _), n in row_counts.items()
                                                     if a == rejected_action(table)))
                for (keyring, version), (n_reads, n_failed) in sorted(totals.items()):
                    reads.add_metric([keyring, str(version)], n_reads)
                    failed.add_metric([keyring, str(version)], n_failed)
                # Store-wide: the chain's head sequence number.  It only ever grows; Prometheus
                # keeps its history outside the database, so a rollback shows as a drop
                # (alert NebulaCredentialAuditHeadWentBack in deploy/prometheus-rules.yml).
                head = GaugeMetricFamily(
                    "nebula_credential_audit_head_seq",
                    "Sequence number of the newest audit event (never goes down unless the chain was rolled back)",
                )
                vaults = list(exporter._all_vaults())
                if vaults:
                    head.add_metric([], vaults[0].audit.head_seq())
                yield from _backup_metrics(vaults, GaugeMetricFamily)
                for s in snaps:
                    active.add_metric([s.keyring], s.active_versions)
                    rot.add_metric([s.keyring], s.rotation_events)
                    prog.add_metric([s.keyring], s.reencryption_progress)
                    age.add_metric([s.keyring], s.current_key_age_days)
                    pending.add_metric([s.keyring], s.pending_reencryption)
                    errors.add_metric([s.keyring], s.key_access_errors)
                    for version, n in sorted(s.credentials_per_version.items()):
                        per.add_metric([s.keyring, str(version)], n)
                yield from (active, rot, prog, age, per, pending, errors, reads, failed, head, rejected)
                if vaults:
                    yield from _database_metrics(vaults[0], GaugeMetricFamily, CounterMetricFamily)
                by_status = GaugeMetricFamily(
                    "nebula_credential_key_versions", "Key versions by lifecycle status", labels=["keyring", "status"]
                )
                limit = GaugeMetricFamily(
                    "nebula_credential_max_key_age_days", "Configured max_key_age in days", labels=["keyring"]
                )
                used = GaugeMetricFamily(
                    "nebula_credential_active_key_encryptions",
                    "Encryptions reserved under the active version (alert NebulaCredentialKeyUsageBound)",
                    labels=["keyring"],
                )
                bound = GaugeMetricFamily(
                    "nebula_credential_max_encryptions", "Configured [rotation] max_encryptions", labels=["keyring"]
                )
                for s in snaps:
                    for status, n in s.versions_by_status.items():
                        by_status.add_metric([s.keyring, status], n)
                    limit.add_metric([s.keyring], s.max_key_age_days)
                    used.add_metric([s.keyring], s.active_encryptions)
                    bound.add_metric([s.keyring], s.max_encryptions)
                yield from (by_status, limit, used, bound)

        self.registry.register(_StoreCollector())

    def _all_vaults(self) -> Iterable[Vault]:
        seen: set[str] = set()
        for v in self._vaults:
            for target in keyring_vaults(v):
                if target.keyring_name not in seen:
                    seen.add(target.keyring_name)
                    yield target

    def observe_vault(self, keyring: str, operation: str, seconds: float, ok: bool) -> None:
        # the children of one label set, looked up once: ``.labels()`` cost ~5 µs of a ~10 µs Transit
        # encrypt; the label values are the ones ``.labels()`` would have made (same series, same bound)
        children = self._children.get((keyring, operation))
        if children is None:
            if len(self._children) >= _CHILDREN_MAX:
                self._children.clear()
            children = self._children[(keyring, operation)] = (
                self.requests.labels(keyring, operation), self.op_latency.labels(keyring, operation))
        requests, latency = children
        requests.inc()
        if not ok:  # rare: the error series appears with its first error, as before
            self.request_errors.labels(keyring, operation).inc()
        latency.observe(seconds)

    def observe_provider(self, provider: str, operation: str, seconds: float, ok: bool) -> None:
        self.provider_latency.labels(provider, operation).observe(seconds)

    def attach(self, vault: Vault) -> None:
        """Feed this process's histograms from ``vault`` and its provider."""
        vault.observer = self.observe_vault
        vault.provider.observer = self.observe_provider

    def render(self) -> tuple[bytes, str]:
        pc = _prometheus()
        return pc.generate_latest(self.registry), pc.CONTENT_TYPE_LATEST

    def route(self) -> tuple[int, str, bytes]:
        body, ctype = self.render()
        return 200, ctype, body


def register_server_metrics(exporter: MetricsExporter) -> tuple[Any, Any]:
    """The HTTP server's request counter and latency histogram (:data:`SERVER_METRICS`) in
    ``exporter``'s registry, so one ``/metrics`` serves them beside the store's."""
    pc = _prometheus()
    requests, duration = SERVER_METRICS
    counter = pc.Counter(requests.name.removesuffix("_total"), requests.help, list(requests.labels),
                         registry=exporter.registry)
    histogram = pc.Histogram(duration.name, duration.help, list(duration.labels), registry=exporter.registry,
                             buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
    return counter, histogram


def register_login_metric(exporter: MetricsExporter) -> Any:
    """The login counter (:data:`LOGIN_METRIC`) in ``exporter``'s registry (set on ``app.state.login_metric``)."""
    pc = _prometheus()
    return pc.Counter(LOGIN_METRIC.name.removesuffix("_total"), LOGIN_METRIC.help, list(LOGIN_METRIC.labels),
                      registry=exporter.registry)


def exported_metrics(exporter: MetricsExporter) -> list[MetricSpec]:
    """Every metric ``exporter`` collects, then :data:`SERVER_METRICS` and :data:`RATE_LIMIT_METRIC`."""
    # Label names before any sample exists: store families keep them, per-process wrappers too.
    declared = {
        getattr(m, "_name", ""): tuple(getattr(m, "_labelnames", ()))
        for m in vars(exporter).values()
        if hasattr(m, "_labelnames")
    }
    specs: list[MetricSpec] = []
    for family in exporter.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = tuple(getattr(family, "_labelnames", ())) or declared.get(family.name, ())
        for sample in family.samples[:1]:
            labels = tuple(k for k in sample.labels if k != "le")
        specs.append(MetricSpec(name, family.type, family.documentation, labels))
    return specs + list(SERVER_METRICS) + [RATE_LIMIT_METRIC]


def render(vaults: Sequence[Vault] | Vault) -> tuple[bytes, str]:
    """One-shot exposition text for ``vaults`` (every keyring of their stores)."""
    return MetricsExporter(vaults).render()


def epoch(dt: datetime) -> float:
    ts = to_epoch(dt)
    assert ts is not None
    return ts


def _backup_metrics(vaults: list[Vault], gauge: Any) -> Iterator[Any]:
    """Registered backups: when the newest was taken, and what retention keeps for them.

    The newest backup's time is 0 when none was ever registered, so the
    shipped rule ``NebulaCredentialBackupsStopped`` fires only for a store
    that had backups and stopped getting new ones.
    """
    from .backups import list_backups
    from .holds import held_versions

    last = gauge("nebula_credential_backup_last_taken_timestamp_seconds",
                 "When the newest registered backup was taken (Unix time; 0: none registered)")
    live = gauge("nebula_credential_backups_unexpired", "Registered backups retention still honours")
    held = gauge("nebula_credential_backup_held_versions",
                 "Key versions kept (not destroyed) because an unexpired backup needs them", labels=["keyring"])
    if vaults:
        now = vaults[0].clock()
        records = list_backups(vaults[0].store)
        last.add_metric([], max((r.taken_at.timestamp() for r in records), default=0.0))
        live.add_metric([], sum(1 for r in records if r.expires_at > now))
        for v in vaults:
            held.add_metric([v.keyring_name], len(held_versions(v.store, v.keyring_name, now)))
    yield from (last, live, held)


def _database_metrics(vault: Vault, gauge: Any, counter: Any) -> Iterator[Any]:
    """The database engine's health, from the store: failed rotations (audit trail), static roles overdue
    or failing, leases live and leases whose revocation keeps failing (alerts in deploy/prometheus-rules.yml)."""
    from .database.scheduler import health
    from .database.static import ROTATE_FAILED_ACTION
    from .leases import REVOKE_FAILED_ACTION

    failures = counter("nebula_credential_database_rotation_failures",
                       "Failed static-role rotation attempts recorded in the audit trail", labels=["keyring"])
    revoke_failures = counter("nebula_credential_lease_revocation_failures",
                              "Failed lease revocation attempts recorded in the audit trail")
    overdue = gauge("nebula_credential_database_rotations_overdue",
                    "Static roles past their rotation time (plus slack)", labels=["mount"])
    failing = gauge("nebula_credential_database_rotations_failing",
                    "Static roles whose last rotation attempt failed or is unsettled", labels=["mount"])
    live = gauge("nebula_credential_leases_active", "Leases not yet revoked")
    stuck = gauge("nebula_credential_lease_revocations_failing", "Leases whose revocation failed and is being retried")
    with vault.store.read() as tx:
        counts = tx.audit_counts([ROTATE_FAILED_ACTION, REVOKE_FAILED_ACTION])
        leases = tx.lease_counts(vault.clock().timestamp())
    by_keyring: dict[str, int] = {}
    for (action, keyring), n in counts.items():
        if action == ROTATE_FAILED_ACTION:
            by_keyring[keyring or ""] = by_keyring.get(keyring or "", 0) + n
    for keyring, n in sorted(by_keyring.items()):
        failures.add_metric([keyring], n)
    revoke_failures.add_metric([], sum(n for (a, _), n in counts.items() if a == REVOKE_FAILED_ACTION))
    for mount, h in sorted(health(vault).items()):
        overdue.add_metric([mount], h["overdue"])
        failing.add_metric([mount], h["failing"])
    live.add_metric([], leases["active"])
    stuck.add_metric([], leases["failing"])
    yield from (failures, revoke_failures, overdue, failing, live, stuck)
