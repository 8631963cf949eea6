"""Frozen, validated configuration built once at the edge (TOML, env, flags).

Every section is optional; defaults come from the seed (grace 24h, max key
age 90d, auto rotation on).  A bad value raises :class:`ConfigError` naming
the field and what is allowed.  Secrets never live here: a provider setting
names a file or an environment variable that holds the secret.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._files import read_regular
from .durations import parse_duration
from .exceptions import ConfigError
from .names import check_scope, is_mount

ROTATION_STRATEGIES = ("manual", "periodic", "before-expiry", "scheduled", "usage")
RETENTION_POLICIES = ("minimum-retention", "version-based", "until-reencrypted", "custom")
PROVIDER_TYPES = ("local", "pkcs11", "aws-kms", "azure-keyvault", "vault-transit")
DEFAULT_PRIORITY = ("production", "user", "development")
#: NIST SP 800-38D: random 96-bit nonces, at most 2^32 messages per key; keep a 4x margin.
DEFAULT_MAX_ENCRYPTIONS = 2**30
HARD_MAX_ENCRYPTIONS = 2**32
DEFAULT_DB_URL = "sqlite:///./nebula-credential.db"

_CALLABLE = r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*"
_SECRET_KEYS = ("pin", "token", "password", "secret", "client_secret", "secret_id")
#: Settings each provider reads (besides ``type`` and the retry settings); anything else is a typo.
PROVIDER_SETTINGS: dict[str, tuple[str, ...]] = {
    "local": ("key_file",),
    "pkcs11": ("library", "token_label", "key_label", "pin_file", "pin_env", "mode"),
    "aws-kms": ("key_id", "region", "endpoint_url", "profile", "max_attempts", "connect_timeout", "read_timeout"),
    "azure-keyvault": ("vault_url", "key_name", "key_type", "key_size", "api_version", "tenant_id", "client_id",
                       "client_secret_file", "client_secret_env", "authority", "connection_verify",
                       "verify_challenge_resource", "disable_instance_discovery"),
    "vault-transit": ("url", "mount", "key_name", "namespace", "token_file", "token_env", "role_id_file",
                      "role_id_env", "secret_id_file", "secret_id_env", "approle_mount", "ca_cert",
                      "client_cert", "client_key", "verify", "timeout"),
}
RETRY_SETTINGS = ("retry_attempts", "retry_backoff", "retry_max")
#: Largest integer setting accepted (counts, sizes); beyond it is a typo that would overflow a column.
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = DEFAULT_DB_URL
    """Store URL: ``sqlite:///path/to.db`` (embedded, WAL) or a libpq ``postgresql://`` URL; keep passwords in
    PGPASSWORD or ~/.pgpass. The ``--db`` flag and NEBULA_CREDENTIAL_DB override it.
    """


@dataclass(frozen=True, slots=True)
class KeysConfig:
    grace_period: timedelta = timedelta(hours=24)
    """How long a version no stored credential references stays in grace (decrypts, each use audited) before it is
    revoked.
    """
    max_key_age: timedelta = timedelta(days=90)
    """Age limit of the active version: the before-expiry strategy rotates ahead of it, ``doctor`` and the console
    warn past it.
    """
    auto_rotation: bool = True
    """Let maintain/daemon passes rotate when the strategy says so, and let any process rotate when the usage bound
    is reached; false leaves every rotation to an operator.
    """
    #: How long an unwrapped DEK stays cached in a process before it is unwrapped again.
    dek_cache_ttl: timedelta = timedelta(hours=1)
    #: How often a process re-reads key statuses (rotations/revocations by others).
    refresh_interval: timedelta = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class RotationConfig:
    strategy: str = "periodic"
    """When to rotate: ``manual``, ``periodic`` (interval), ``before-expiry`` (threshold before max_key_age),
    ``scheduled`` (cron) or ``usage`` (max_encryptions only).
    """
    interval: timedelta = timedelta(days=90)
    """Periodic strategy: rotate when the active version is this old."""
    threshold: timedelta = timedelta(days=7)
    """Before-expiry strategy: rotate this long before the active version reaches ``keys.max_key_age``."""
    cron: str = "0 2 * * SUN"
    """Scheduled strategy: cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 with
    seconds first, evaluated in ``timezone``."""
    timezone: str = "UTC"
    """Scheduled strategy: the IANA time zone the cron expression is read in (e.g. ``Europe/Berlin``)."""
    max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS
    """Usage bound for every strategy: rotate once a version has encrypted this many values (at most 2^32, the NIST
    SP 800-38D bound for random 96-bit nonces).
    """


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    policy: str = "minimum-retention"
    """Which revoked versions cleanup may destroy: ``minimum-retention`` (revoked for min_retention),
    ``version-based`` (beyond max_versions), ``until-reencrypted`` (as soon as unreferenced; only for stores
    without backups) or ``custom`` (``callable``).
    """
    min_retention: timedelta = timedelta(days=90)
    """minimum-retention policy: how long after revocation a version is kept; make it longer than your backup window."""
    max_versions: int = 3
    """version-based policy: how many of the newest versions are kept."""
    keep_versions: int = 2
    """The active version and the ones just before it that cleanup never destroys, whatever the policy."""
    callable: str = ""
    """custom policy: ``package.module:function`` (loaded from the process's own config only, never the store)."""


@dataclass(frozen=True, slots=True)
class ReencryptionConfig:
    batch_size: int = 500
    """Rows read, re-encrypted and written back per transaction (``reencrypt --batch-size``)."""
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    """Scopes re-encrypted first, in this order; other scopes follow alphabetically (``reencrypt --priority``)."""
    workers: int = 1
    """Parallel workers of one pass (PostgreSQL only; SQLite refuses more than 1)."""
    rate_limit: float = 0.0  # rows per second, 0 = unlimited
    """Cap of a pass in rows per second across all workers (``reencrypt --rate-limit``); 0 means no cap."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    type: str = "local"
    """Root of trust: ``local``, ``pkcs11``, ``aws-kms``, ``azure-keyvault`` or ``vault-transit``; the other keys of
    ``[provider]`` are that provider's settings (see the provider pages).
    """
    settings: dict[str, Any] = field(default_factory=dict)
    #: False when the config file had no [provider] section: the store's record is used.
    explicit: bool = False
    retry_attempts: int = 6
    """Attempts in all for a transient provider failure (1: no retry); each retry is logged as a warning."""
    retry_backoff: timedelta = timedelta(milliseconds=100)
    """The first wait between attempts; it doubles each time (with jitter). The defaults span about 2 s."""
    retry_max: timedelta = timedelta(seconds=1)
    """The longest single wait between attempts."""

    def get(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    credentials: bool = False
    """Also audit each credential read, write and delete (not needed by the KeyAccessErrors alert: it uses the
    store's key access counters, which every process keeps)."""
    actor: str = ""
    """Actor recorded on events; empty means ``user@host`` of the process."""
    log: bool = False
    """Mirror each audit event as one JSON line to the ``nebula_credential.audit`` logger (for a SIEM)."""
    #: The HTTP server audits every request; false drops the events of successful reads.
    requests: bool = True


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the Vault-compatible HTTP API (``nebula-credential serve``)."""

    listen: str = "127.0.0.1:8200"
    """host:port ``serve`` listens on (``--listen``); a non-loopback address needs TLS."""
    tls_cert_file: str = ""
    """PEM certificate (chain) for HTTPS; required for a non-loopback listen address."""
    tls_key_file: str = ""
    """PEM private key of the certificate; a regular file readable by its owner only."""
    max_request_size: int = 1024 * 1024
    """Largest request body in bytes; a bigger one gets 413."""
    request_timeout: timedelta = timedelta(seconds=30)
    """How long one request may take before the server gives up on it."""
    workers: int = 0
    """Server worker processes (``serve --workers``); 0, the default, is one per core the process may
    run on, at most 8 (one Python process uses one core).  The workers of
    one serve see each other's revocations, policy, mount and Transit key changes at once (a
    counter in the table they share); the store's own keyrings follow ``refresh_interval``, as
    two ``serve`` processes do."""
    #: KV v2 mounts: mount path -> keyring.
    kv_mounts: dict[str, str] = field(default_factory=lambda: {"secret": "default"})
    #: Transit mounts (each key of a mount is a keyring ``<mount>/<name>``).
    transit_mounts: tuple[str, ...] = ("transit",)
    default_ttl: timedelta = timedelta(hours=768)
    """TTL of a token created without one (Vault's default: 768h)."""
    max_ttl: timedelta = timedelta(hours=768)
    """Longest TTL a token may have or be renewed to."""
    #: How long a process trusts a token or policy it looked up: the bound on
    #: how late another instance notices a revocation.
    cache_ttl: timedelta = timedelta(seconds=2)
    unauthenticated_rate: float = 20.0
    """Unauthenticated or denied requests per second one source address may make (token bucket refill)."""
    unauthenticated_burst: int = 100
    """How many such requests a source address may make at once before 429s start."""
    min_free_space: str = "256MiB"
    """Free space on the store's file system below which writes and unauthenticated requests get 503:
    a size (``"256MiB"``) or a share of the disk (``"5%"``); ``"0"`` turns the check off."""
    audit_path_chars: int = 256
    """How much of the path of an unauthenticated, denied or unrouted request is audited (plus a digest)."""
    public_addr: str = ""
    """host[:port] clients use to reach the server when it is not the listen address (a DNS name, a
    wildcard listen): the console answers only this ``Host`` and the listen address's."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_free_space(text: str, field_name: str = "server.min_free_space") -> tuple[int, float]:
    """``"256MiB"`` -> (bytes, 0.0); ``"5%"`` -> (0, 0.05): the floor as an absolute size or a share."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(field_name, f"must be a size such as \"256MiB\" or a share such as \"5%\", got {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    if unit == "%":
        if number >= 100:
            raise ConfigError(field_name, "a share must be below 100%")
        return 0, number / 100
    return int(number * _UNITS[unit]), 0.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    addr: str = "127.0.0.1:9464"
    """host:port where the daemon serves ``/metrics`` and ``/healthz`` (``daemon --metrics-addr``)."""


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    key_age_days: float = 80
    """Alert KeyTooOld (warning) when the active version is older than this many days."""
    no_rotation_days: float = 100
    """Alert NoRecentRotation (critical) when nothing rotated for this many days."""
    reencryption_min_progress: float = 0.5
    """Alert ReencryptionStalled when re-encryption progress is below this share (0..1) ..."""
    reencryption_after_days: float = 7
    """... this many days after the rotation (the alert waits that long)."""
    max_live_versions: int = 5
    """Alert TooManyLiveVersions when more versions than this can still decrypt."""
    access_error_ratio: float = 0.01
    """Alert KeyAccessErrors when more than this share of credential accesses fail (24 h, from the store's key access
    counters; no ``[audit] credentials`` needed)."""


@dataclass(frozen=True, slots=True)
class BackupConfig:
    #: How long a registered backup holds the key versions it needs (``backup create --keep``).
    keep: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class KeyManagementConfig:
    """The whole configuration; build with :meth:`load` or :meth:`from_dict`."""

    store: StoreConfig = field(default_factory=StoreConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    reencryption: ReencryptionConfig = field(default_factory=ReencryptionConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyManagementConfig:
        import tomllib  # here, not at import: most commands read no config file (start-up)

        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{p} is not valid TOML: {exc}") from None
        return replace(cls.from_dict(anchor_paths(data, p.absolute().parent)), source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyManagementConfig:
        known = {"store", "keys", "rotation", "retention", "reencryption", "provider",
                 "audit", "metrics", "alerts", "backup", "server"}
        for name, value in data.items():
            if name not in known:
                raise ConfigError(name, f"unknown section; allowed: {', '.join(sorted(known))}")
            if not isinstance(value, dict):
                raise ConfigError(name, "must be a table ([section])")
        return cls(
            store=_store(data.get("store", {})),
            keys=_keys(data.get("keys", {})),
            rotation=_rotation(data.get("rotation", {})),
            retention=_retention(data.get("retention", {})),
            reencryption=_reencryption(data.get("reencryption", {})),
            provider=_provider(data.get("provider", {})),
            audit=_audit(data.get("audit", {})),
            metrics=_metrics(data.get("metrics", {})),
            alerts=_alerts(data.get("alerts", {})),
            server=_server(data.get("server", {})),
            backup=_backup(data.get("backup", {})),
        )


# ---- paths in a config file ----------------------------------------------------
#: ``[provider]`` settings that name a file besides every ``*_file`` key (``verify``
#: may be a CA bundle path, ``library`` a PKCS#11 module path).
_PROVIDER_PATHS = ("ca_cert", "client_cert", "client_key", "verify", "connection_verify", "library")


def anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve the relative paths a config file names against that file's folder.

    A cron job or a systemd unit runs from any working directory: with every
    path of the file (the SQLite store, key and PIN files, TLS files, CA
    bundles) read relative to the file itself, the same config opens the same
    store from anywhere.  Paths given by flags or environment variables are
    not touched here: they stay relative to the working directory.  A PKCS#11
    ``library`` without a ``/`` is a name the loader searches for, left as is.
    """
    out = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    store = out.get("store")
    if isinstance(store, dict) and isinstance(store.get("url"), str):
        store["url"] = _anchor_sqlite_url(store["url"], base)
    provider = out.get("provider")
    if isinstance(provider, dict):
        for key, value in provider.items():
            if not isinstance(value, str) or not value or (key == "library" and "/" not in value):
                continue
            if key.endswith("_file") or key in _PROVIDER_PATHS:
                provider[key] = _anchor(value, base)
    server = out.get("server")
    if isinstance(server, dict):
        for key, value in server.items():
            if key.endswith("_file") and isinstance(value, str) and value:
                server[key] = _anchor(value, base)
    return out


def _anchor(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _anchor_sqlite_url(url: str, base: Path) -> str:
    """``sqlite:///creds.db`` in ``/etc/nc/config.toml`` is ``sqlite:////etc/nc/creds.db``."""
    prefix = "sqlite:///"
    if not url.startswith("sqlite://"):
        return url
    path = url[len(prefix):] if url.startswith(prefix) else url[len("sqlite://"):]
    if not path or path == ":memory:" or path.startswith("/"):
        return url
    return prefix + _anchor(path, base)


# ---- section parsers ---------------------------------------------------------
def _check_keys(section: str, raw: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{section}.{key}", f"unknown setting; allowed: {', '.join(allowed)}")


def _dur(section: str, raw: dict[str, Any], key: str, default: timedelta) -> timedelta:
    return parse_duration(raw[key], f"{section}.{key}") if key in raw else default


def _int(section: str, raw: dict[str, Any], key: str, default: int, minimum: int, maximum: int = MAX_INT) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{section}.{key}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{section}.{key}", f"must be at least {minimum}, got {value}")
    if value > maximum:
        raise ConfigError(f"{section}.{key}", f"must be at most {maximum}")
    return value


def _num(section: str, raw: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{section}.{key}", f"must be a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > 1e15:
        raise ConfigError(f"{section}.{key}", f"must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{section}.{key}", f"must be at least {minimum}, got {value}")
    return float(value)


def _bool(section: str, raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{key}", f"must be true or false, got {value!r}")
    return value


def _choice(section: str, raw: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{section}.{key}", f"got {value!r}; allowed: {', '.join(allowed)}")
    return str(value)


def _store(raw: dict[str, Any]) -> StoreConfig:
    _check_keys("store", raw, ("url",))
    url = raw.get("url", DEFAULT_DB_URL)
    if not isinstance(url, str) or not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError("store.url", f"expected sqlite:///path or postgresql://..., got {url!r}")
    return StoreConfig(url=url)


def _keys(raw: dict[str, Any]) -> KeysConfig:
    _check_keys("keys", raw, ("grace_period", "max_key_age", "auto_rotation", "dek_cache_ttl",
                              "refresh_interval"))
    d = KeysConfig()
    cfg = KeysConfig(
        grace_period=_dur("keys", raw, "grace_period", d.grace_period),
        max_key_age=_dur("keys", raw, "max_key_age", d.max_key_age),
        auto_rotation=_bool("keys", raw, "auto_rotation", d.auto_rotation),
        dek_cache_ttl=_dur("keys", raw, "dek_cache_ttl", d.dek_cache_ttl),
        refresh_interval=_dur("keys", raw, "refresh_interval", d.refresh_interval),
    )
    if cfg.max_key_age <= timedelta(0):
        raise ConfigError("keys.max_key_age", "must be greater than zero")
    return cfg


def validate_cron(expr: str, field: str = "rotation.cron") -> str:
    """5 fields (min hour dom month dow) or 6 with seconds first (sec min hour dom month dow, as Quartz)."""
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6):
        raise ConfigError(field, "expected a cron expression of 5 fields (min hour dom month dow) "
                                 f"or 6 (sec min hour dom month dow), got {expr!r}")
    from croniter import croniter

    if not croniter.is_valid(expr, second_at_beginning=True):
        raise ConfigError(field, f"invalid cron expression {expr!r}")
    return expr


def validate_timezone(name: object, field: str = "rotation.timezone") -> str:
    """An IANA zone name (``Europe/Berlin``) that zoneinfo knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ConfigError(field, f"expected a time zone name such as 'UTC' or 'Europe/Berlin', got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(field, f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin')") from None
    return name


def _rotation(raw: dict[str, Any]) -> RotationConfig:
    _check_keys("rotation", raw, ("strategy", "interval", "threshold", "cron", "timezone", "max_encryptions"))
    d = RotationConfig()
    cfg = RotationConfig(
        strategy=_choice("rotation", raw, "strategy", d.strategy, ROTATION_STRATEGIES),
        interval=_dur("rotation", raw, "interval", d.interval),
        threshold=_dur("rotation", raw, "threshold", d.threshold),
        cron=validate_cron(raw["cron"]) if "cron" in raw else d.cron,
        timezone=validate_timezone(raw["timezone"]) if "timezone" in raw else d.timezone,
        max_encryptions=_int("rotation", raw, "max_encryptions", d.max_encryptions, 1),
    )
    if cfg.interval <= timedelta(0):
        raise ConfigError("rotation.interval", "must be greater than zero")
    if cfg.max_encryptions > HARD_MAX_ENCRYPTIONS:
        raise ConfigError(
            "rotation.max_encryptions",
            f"must not exceed 2^32 ({HARD_MAX_ENCRYPTIONS}), the NIST SP 800-38D bound for AES-GCM with random nonces",
        )
    return cfg


def _retention(raw: dict[str, Any]) -> RetentionConfig:
    _check_keys("retention", raw, ("policy", "min_retention", "max_versions", "keep_versions", "callable"))
    d = RetentionConfig()
    cfg = RetentionConfig(
        policy=_choice("retention", raw, "policy", d.policy, RETENTION_POLICIES),
        min_retention=_dur("retention", raw, "min_retention", d.min_retention),
        max_versions=_int("retention", raw, "max_versions", d.max_versions, 1),
        keep_versions=_int("retention", raw, "keep_versions", d.keep_versions, 1, 1000),
        callable=raw.get("callable", ""),
    )
    if cfg.policy == "custom" or cfg.callable:
        if cfg.policy != "custom":
            raise ConfigError("retention.callable", 'is used only with policy = "custom"')
        if not isinstance(cfg.callable, str) or not re.fullmatch(_CALLABLE, cfg.callable):
            raise ConfigError("retention.callable",
                              f'expected "package.module:function", got {cfg.callable!r}')
    return cfg


def _reencryption(raw: dict[str, Any]) -> ReencryptionConfig:
    _check_keys("reencryption", raw, ("batch_size", "priority", "workers", "rate_limit"))
    d = ReencryptionConfig()
    priority = raw.get("priority", list(d.priority))
    if not isinstance(priority, list):
        raise ConfigError("reencryption.priority", "must be a list of scope names")
    for name in priority:
        check_scope(name, "reencryption.priority")
    return ReencryptionConfig(
        batch_size=_int("reencryption", raw, "batch_size", d.batch_size, 1),
        priority=tuple(priority),
        workers=_int("reencryption", raw, "workers", d.workers, 1),
        rate_limit=_num("reencryption", raw, "rate_limit", d.rate_limit, 0),
    )


def _provider(raw: dict[str, Any]) -> ProviderConfig:
    ptype = _choice("provider", raw, "type", "local", PROVIDER_TYPES)
    settings = {k: v for k, v in raw.items() if k != "type" and k not in RETRY_SETTINGS}
    allowed = PROVIDER_SETTINGS[ptype]
    for key in settings:
        if key in _SECRET_KEYS:
            raise ConfigError(
                f"provider.{key}",
                "secrets are not accepted in the config file; use "
                f"{key}_file (a path) or {key}_env (an environment variable name)",
            )
        if key not in allowed:
            raise ConfigError(f"provider.{key}", f"unknown setting for provider {ptype!r}; allowed: "
                                                 f"type, {', '.join(allowed + RETRY_SETTINGS)}")
    d = ProviderConfig()
    return ProviderConfig(
        type=ptype, settings=settings, explicit=bool(set(raw) - set(RETRY_SETTINGS)),
        retry_attempts=_int("provider", raw, "retry_attempts", d.retry_attempts, 1, 100),
        retry_backoff=_dur("provider", raw, "retry_backoff", d.retry_backoff),
        retry_max=_dur("provider", raw, "retry_max", d.retry_max),
    )


def _backup(raw: dict[str, Any]) -> BackupConfig:
    _check_keys("backup", raw, ("keep",))
    keep = _dur("backup", raw, "keep", BackupConfig().keep)
    if keep <= timedelta(0):
        raise ConfigError("backup.keep", "must be greater than zero")
    return BackupConfig(keep=keep)


def _audit(raw: dict[str, Any]) -> AuditConfig:
    _check_keys("audit", raw, ("credentials", "actor", "log", "requests"))
    actor = raw.get("actor", "")
    if not isinstance(actor, str):
        raise ConfigError("audit.actor", "must be a string")
    return AuditConfig(
        credentials=_bool("audit", raw, "credentials", False),
        actor=actor,
        log=_bool("audit", raw, "log", False),
        requests=_bool("audit", raw, "requests", True),
    )


def parse_addr(addr: str, field: str = "metrics.addr") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(field, f"expected host:port, got {addr!r}")
    return host, int(port)


def _metrics(raw: dict[str, Any]) -> MetricsConfig:
    _check_keys("metrics", raw, ("addr",))
    addr = raw.get("addr", MetricsConfig().addr)
    if not isinstance(addr, str):
        raise ConfigError("metrics.addr", "must be a string host:port")
    parse_addr(addr)
    return MetricsConfig(addr=addr)


def _server(raw: dict[str, Any]) -> ServerConfig:
    _check_keys("server", raw, ("listen", "tls_cert_file", "tls_key_file", "max_request_size",
                                "request_timeout", "workers", "kv_mounts", "default_ttl", "max_ttl",
                                "cache_ttl", "transit_mounts", "unauthenticated_rate", "unauthenticated_burst",
                                "min_free_space", "audit_path_chars", "public_addr"))
    d = ServerConfig()
    listen = raw.get("listen", d.listen)
    if not isinstance(listen, str):
        raise ConfigError("server.listen", "must be a string host:port")
    parse_addr(listen, "server.listen")
    files = {}
    for key in ("tls_cert_file", "tls_key_file"):
        files[key] = raw.get(key, "")
        if not isinstance(files[key], str):
            raise ConfigError(f"server.{key}", "must be a file path")
    mounts = raw.get("kv_mounts", d.kv_mounts)
    if not isinstance(mounts, dict) or not mounts:
        raise ConfigError("server.kv_mounts", "must be a table of mount = \"keyring\"")
    for mount, keyring in mounts.items():
        if not is_mount(mount) or mount in ("sys", "auth") or not isinstance(keyring, str) or not keyring:
            raise ConfigError("server.kv_mounts", f"bad mount {mount!r} = {keyring!r}: a mount is letters, "
                              "digits, - and _ (not sys or auth), the value a keyring name")
    transit = raw.get("transit_mounts", list(d.transit_mounts))
    if not isinstance(transit, list) or not all(isinstance(m, str) for m in transit):
        raise ConfigError("server.transit_mounts", "must be a list of mount paths")
    for mount in transit:
        if not is_mount(mount) or mount in ("sys", "auth") or mount in mounts:
            raise ConfigError("server.transit_mounts", f"bad mount {mount!r}: letters, digits, - and _, "
                              "not sys or auth, and not also a KV mount")
    public = raw.get("public_addr", d.public_addr)
    if not isinstance(public, str) or any(c in public for c in "/ \t@"):
        raise ConfigError("server.public_addr", "must be a string host or host:port")
    cfg = ServerConfig(
        public_addr=public,
        listen=listen,
        tls_cert_file=files["tls_cert_file"],
        tls_key_file=files["tls_key_file"],
        max_request_size=_int("server", raw, "max_request_size", d.max_request_size, 1024),
        request_timeout=_dur("server", raw, "request_timeout", d.request_timeout),
        workers=_int("server", raw, "workers", d.workers, 0, 64),
        kv_mounts=dict(mounts),
        transit_mounts=tuple(transit),
        default_ttl=_dur("server", raw, "default_ttl", d.default_ttl),
        max_ttl=_dur("server", raw, "max_ttl", d.max_ttl),
        cache_ttl=_dur("server", raw, "cache_ttl", d.cache_ttl),
        unauthenticated_rate=_num("server", raw, "unauthenticated_rate", d.unauthenticated_rate, 0.001),
        unauthenticated_burst=_int("server", raw, "unauthenticated_burst", d.unauthenticated_burst, 1),
        min_free_space=str(raw.get("min_free_space", d.min_free_space)),
        audit_path_chars=_int("server", raw, "audit_path_chars", d.audit_path_chars, 32, 65536),
    )
    parse_free_space(cfg.min_free_space)
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ConfigError("server.tls_key_file", "tls_cert_file and tls_key_file go together")
    if cfg.default_ttl > cfg.max_ttl:
        raise ConfigError("server.default_ttl", "must not exceed server.max_ttl")
    return cfg


def _alerts(raw: dict[str, Any]) -> AlertsConfig:
    allowed = tuple(AlertsConfig.__dataclass_fields__)
    _check_keys("alerts", raw, allowed)
    d = AlertsConfig()
    return AlertsConfig(
        key_age_days=_num("alerts", raw, "key_age_days", d.key_age_days, 0),
        no_rotation_days=_num("alerts", raw, "no_rotation_days", d.no_rotation_days, 0),
        reencryption_min_progress=_num("alerts", raw, "reencryption_min_progress", d.reencryption_min_progress, 0),
        reencryption_after_days=_num("alerts", raw, "reencryption_after_days", d.reencryption_after_days, 0),
        max_live_versions=_int("alerts", raw, "max_live_versions", d.max_live_versions, 1),
        access_error_ratio=_num("alerts", raw, "access_error_ratio", d.access_error_ratio, 0),
    )


def secret_from(settings: dict[str, Any], name: str, section: str = "provider") -> str | None:
    """Read a secret named by ``<name>_file`` or ``<name>_env``; never from the text."""
    path = settings.get(f"{name}_file")
    env = settings.get(f"{name}_env")
    if path:
        try:  # a regular file only: a FIFO named here would block the process for good
            return read_regular(Path(path), f"{section}.{name}_file").decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{section}.{name}_file", f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{section}.{name}_file", f"cannot read {path}: {exc.strerror}") from None
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{section}.{name}_env", f"environment variable {env} is not set")
        return value
    return None
