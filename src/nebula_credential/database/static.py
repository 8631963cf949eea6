"""Static roles: one PostgreSQL user (or two, alternating) whose password the engine rotates.

Rotation is two-phase and crash-safe.  Under a rotation lock in the store (a
``db_items`` row taken by check-and-set: one rotation per due time across
every process, as key rotation's lease):

1. the state row records a *pending* rotation (user, generation) and the
   new password is stored, encrypted, beside the current one;
2. PostgreSQL runs the rotation statements;
3. the new password becomes the only one stored and the state row moves on.

Whoever comes next (any operation on the role, or the scheduler) settles an
unfinished rotation from what the store holds: the pending password was
stored -> apply it again (the statements are idempotent) and finish; the
credential already holds it -> finish; nothing was stored -> roll back.  So
the store always knows every password PostgreSQL may hold for the role.

``rotation_strategy = "alternating"`` (ours, not Vault's) keeps two users
sharing the role's grants (``username`` and ``username_b``, by default
``<username>_b``, created as a member of the first when absent).  Each
rotation sets a fresh password on the user *not* in use and makes it
current; the previous user keeps working for ``grace_period``, then its
password is replaced by one nobody stores.  Applications that re-read
``static_creds`` when a connection fails never hold a password that no
longer works.
"""

from __future__ import annotations

import logging
import os
import secrets as _secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..exceptions import ConcurrencyError
from . import schedule
from .connections import Connections
from .errors import DatabaseConnectError, DatabaseInputError, DatabaseNotFoundError, DatabaseUnavailableError
from .fields import check_name, seconds, statements, text
from .items import LOCK_KIND, Items
from .passwords import generate_password
from .plugin import PostgresPlugin, role_exists
from .secrets_store import Secrets

if TYPE_CHECKING:
    from ..vault import Vault

logger = logging.getLogger(__name__)

KIND = "static"
STATE_KIND = "static-state"
DEFAULT_ROTATION = ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"]
#: How a missing second user of an alternating role is made: a member of the first, so it has its grants.
CREATE_SECOND_USER = ["CREATE ROLE \"{{name}}\" WITH LOGIN INHERIT IN ROLE \"{{username}}\""]
STRATEGIES = ("plain", "alternating")
MIN_PERIOD = 5
#: How long a rotation lock holds before another process may take over an unfinished rotation.
CLAIM_TTL = 120.0
#: Connection attempts within one rotation, and the pause between them (seconds).
CONNECT_ATTEMPTS = 3
CONNECT_PAUSE = 0.2
#: Scheduler back-off after a failed rotation: doubles per failure from the first value, up to the second.
BACKOFF = (10.0, 600.0)
TIMELINE_KEEP = 20
#: The audit action of a failed rotation attempt (counted by ``nebula_credential_database_rotation_failures``).
ROTATE_FAILED_ACTION = "database.static_role.rotate_failed"
_KNOWN = frozenset({"db_name", "username", "rotation_period", "rotation_schedule", "rotation_window",
                    "rotation_timezone", "rotation_statements", "credential_type", "credential_config",
                    "rotation_strategy", "grace_period", "username_b", "skip_import_rotation",
                    "self_managed_password"})


def secret_id(role: str, user: str) -> str:
    return f"static/{role}/{user}"


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_secrets.token_hex(4)}"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class StaticRole:
    name: str
    db_name: str
    username: str
    rotation_period: int = 0
    rotation_schedule: str = ""
    rotation_timezone: str = "UTC"
    rotation_window: int = 0
    rotation_statements: list[str] = field(default_factory=list)
    credential_type: str = "password"
    rotation_strategy: str = "plain"
    grace_period: int = 0
    username_b: str = ""

    @property
    def users(self) -> tuple[str, ...]:
        return (self.username, self.username_b) if self.rotation_strategy == "alternating" else (self.username,)

    def other(self, user: str | None) -> str:
        if self.rotation_strategy != "alternating" or user is None:
            return self.username
        return self.username_b if user == self.username else self.username

    def next_rotation(self, last: float, now: float) -> float:
        return schedule.next_rotation(self.rotation_period, self.rotation_schedule, self.rotation_timezone,
                                      last, now)

    def due(self, last: float, now: float) -> bool:
        return schedule.is_due(self.rotation_period, self.rotation_schedule, self.rotation_timezone,
                               self.rotation_window, last, now)

    def ttl(self, last: float, now: float) -> int:
        return schedule.ttl(self.rotation_period, self.rotation_schedule, self.rotation_timezone,
                            self.rotation_window, last, now)


@dataclass
class RotationState:
    """What the store knows of a role's users (a MAC'd row, advanced by check-and-set)."""

    current: str | None = None
    gen: str = ""
    last_rotation: float = 0.0
    previous: dict[str, Any] | None = None  # {"username", "grace_until", "retired"}
    pending: dict[str, Any] | None = None  # {"username", "gen", "since"}
    failures: int = 0
    last_error: str = ""
    next_try: float = 0.0
    rotations: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RotationState:
        known = {k: body[k] for k in cls.__dataclass_fields__ if k in body}
        return cls(**known)


@dataclass(frozen=True)
class RotationResult:
    role: str
    outcome: str  # rotated | retired | settled | failed | busy | not-due
    username: str = ""
    error: str = ""


class StaticRoles:
    """The static roles of one mount."""

    def __init__(self, vault: Vault, items: Items, secrets: Secrets, connections: Connections,
                 *, holder: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.vault = vault
        self.items = items
        self.secrets = secrets
        self.connections = connections
        self.holder = holder or holder_id()
        self._sleep = sleep
        #: Called with "claimed" (rotation recorded, no password stored yet), "stored" (phase 1 done) and
        #: "applied" (PostgreSQL changed, phase 2 not yet): the crash tests kill the process there.
        self.on_phase: Callable[[str], None] = lambda _phase: None

    def _now(self) -> float:
        return self.vault.clock().timestamp()

    # ---- definitions ------------------------------------------------------------------------
    def get(self, name: str) -> StaticRole:
        found = self.items.get(KIND, check_name(name, "role name"))
        if found is None:
            raise DatabaseNotFoundError(f"no static role named {name!r}")
        return StaticRole(**found[0])

    def write(self, name: str, fields: dict[str, Any]) -> None:
        check_name(name, "role name")
        found = self.items.get(KIND, name)
        old = None if found is None else StaticRole(**found[0])
        role = self._parse(name, fields, old)
        conn = self.connections.get(role.db_name)
        if not conn.allows(name):
            raise DatabaseInputError(f'"{name}" is not an allowed role')
        if old is not None and old.username != role.username:
            raise DatabaseInputError("cannot update static account username")
        if old is None and role.rotation_strategy == "alternating":
            self._prepare_second_user(role)
        self.items.put(KIND, name, asdict(role))
        if old is None and fields.get("skip_import_rotation") not in (True, "true", "1"):
            try:
                self.rotate(name)  # as Vault: a new static role's password is rotated at once
            except Exception:
                self._forget(name)  # and the role is not created when that fails
                raise
        self._audit("database.static_role.write", name, strategy=role.rotation_strategy)

    def _parse(self, name: str, fields: dict[str, Any], old: StaticRole | None) -> StaticRole:
        def pick(key: str, default: Any) -> Any:
            return fields[key] if key in fields else (getattr(old, key) if old is not None else default)

        db_name = text(pick("db_name", ""), "db_name")
        if not db_name:
            raise DatabaseInputError("database name is a required field")
        username = text(pick("username", ""), "username")
        if not username:
            raise DatabaseInputError("username is a required field to create a static account")
        period = seconds(pick("rotation_period", 0), "rotation_period")
        cron = text(pick("rotation_schedule", ""), "rotation_schedule")
        if "rotation_period" in fields and "rotation_schedule" in fields and period and cron:
            raise DatabaseInputError("mutually exclusive fields rotation_period and rotation_schedule were both "
                                     "specified; only one of them can be provided")
        if "rotation_period" in fields and period:
            cron = ""
        elif "rotation_schedule" in fields and cron:
            period = 0
        if not period and not cron:
            raise DatabaseInputError("one of rotation_schedule or rotation_period must be provided")
        if period and period < MIN_PERIOD:
            raise DatabaseInputError(f"rotation_period must be {MIN_PERIOD} seconds or more")
        timezone = text(pick("rotation_timezone", "UTC"), "rotation_timezone") or "UTC"
        if cron:
            schedule.check_schedule(cron, timezone)
        window = seconds(pick("rotation_window", 0), "rotation_window")
        if window and not cron:
            raise DatabaseInputError("rotation_window is invalid with use of rotation_period")
        if window and window < 3600:
            raise DatabaseInputError("rotation_window must be 3600 seconds (1 hour) or more")
        strategy = text(pick("rotation_strategy", "plain"), "rotation_strategy") or "plain"
        if strategy not in STRATEGIES:
            raise DatabaseInputError(f"rotation_strategy must be one of {', '.join(STRATEGIES)}")
        if old is not None and old.rotation_strategy != strategy:
            raise DatabaseInputError("cannot change the rotation_strategy of a static role: delete and recreate it")
        grace = seconds(pick("grace_period", 0), "grace_period")
        username_b = text(pick("username_b", ""), "username_b")
        if strategy == "alternating":
            username_b = username_b or f"{username}_b"
            if username_b == username:
                raise DatabaseInputError("username_b must differ from username")
            if period and grace >= period:
                raise DatabaseInputError("grace_period must be shorter than rotation_period")
        elif grace or username_b:
            raise DatabaseInputError("grace_period and username_b apply to rotation_strategy=alternating only")
        ctype = text(pick("credential_type", "password"), "credential_type") or "password"
        if ctype != "password":
            raise DatabaseInputError(f"unsupported credential_type {ctype!r}: only password")
        stmts = statements(fields["rotation_statements"], "rotation_statements") if "rotation_statements" in fields \
            else (old.rotation_statements if old is not None else [])
        return StaticRole(name, db_name, username, period, cron, timezone, window, stmts, ctype, strategy, grace,
                          username_b)

    def _prepare_second_user(self, role: StaticRole) -> None:
        """Create the second user of an alternating role when absent, and give it a password nobody knows."""
        plugin = self._plugin(role)

        def go(conn: Any) -> None:
            from . import templates

            if not role_exists(conn, role.username):
                raise DatabaseInputError(f"static user {role.username!r} does not exist in the database")
            if not role_exists(conn, role.username_b):
                for stmt in CREATE_SECOND_USER:
                    conn.execute(templates.render(stmt, {"name": role.username_b, "username": role.username}))
            throwaway = generate_password()
            for stmt in role.rotation_statements or DEFAULT_ROTATION:
                conn.execute(templates.render(stmt, {"name": role.username_b, "username": role.username_b,
                                                     "password": throwaway}))

        plugin.run(go)

    def names(self) -> list[str]:
        return self.items.names(KIND)

    def delete(self, name: str) -> None:
        self._forget(name)
        self._audit("database.static_role.delete", name)

    def _forget(self, name: str) -> None:
        role = self.get(name)
        with self.vault.store.transaction() as tx:
            self.items.delete(KIND, name, tx)
            self.items.delete(STATE_KIND, name, tx)
            self.items.delete(LOCK_KIND, f"rotate/{name}", tx)
        for user in role.users:
            self.secrets.delete(secret_id(name, user))

    # ---- state ------------------------------------------------------------------------------
    def _state(self, name: str) -> tuple[RotationState, int]:
        found = self.items.get(STATE_KIND, name)
        if found is None:
            return RotationState(), 0
        return RotationState.from_body(found[0]), found[1]

    def _save(self, name: str, state: RotationState, revision: int) -> int:
        new = self.items.put(STATE_KIND, name, asdict(state), expected_revision=revision)
        if new is None:
            raise ConcurrencyError(f"static role {name!r}: rotation state changed by another process")
        return new

    # ---- reads ------------------------------------------------------------------------------
    def read(self, name: str) -> dict[str, Any]:
        role = self.get(name)
        state, _ = self._state(name)
        out: dict[str, Any] = {
            "db_name": role.db_name, "username": role.username, "rotation_statements": role.rotation_statements,
            "credential_type": role.credential_type, "rotation_strategy": role.rotation_strategy,
        }
        if role.rotation_period:
            out["rotation_period"] = role.rotation_period
        else:
            out.update(rotation_schedule=role.rotation_schedule, rotation_window=role.rotation_window,
                       rotation_timezone=role.rotation_timezone)
        if role.rotation_strategy == "alternating":
            out.update(username_b=role.username_b, grace_period=role.grace_period)
        if state.last_rotation:
            out["last_vault_rotation"] = rfc3339(state.last_rotation)
            out["ttl"] = role.ttl(state.last_rotation, self._now())
        return out

    def creds(self, name: str) -> dict[str, Any]:
        role = self.get(name)
        state, _ = self._state(name)
        if state.pending is not None:
            state = self._try_settle(role)
        if state.current is None:
            raise DatabaseInputError(f"static role {name!r} has no credential yet: rotate it first")
        now = self._now()
        record = self.secrets.get(secret_id(name, state.current)) or {}
        out: dict[str, Any] = {"username": state.current, "password": record.get("password"),
                               "last_vault_rotation": rfc3339(state.last_rotation),
                               "ttl": role.ttl(state.last_rotation, now)}
        if role.rotation_period:
            out["rotation_period"] = role.rotation_period
        else:
            out.update(rotation_schedule=role.rotation_schedule, rotation_window=role.rotation_window)
        prev = state.previous
        if prev is not None and not prev.get("retired") and float(prev["grace_until"]) > now:
            old = self.secrets.get(secret_id(name, str(prev["username"]))) or {}
            if old.get("password"):
                out["previous"] = {"username": prev["username"], "password": old["password"],
                                   "grace_until": rfc3339(float(prev["grace_until"])),
                                   "ttl": int(float(prev["grace_until"]) - now)}
        return out

    def timeline(self, name: str) -> list[dict[str, Any]]:
        self.get(name)
        state, _ = self._state(name)
        now = self._now()
        out = []
        for entry in state.timeline:
            until = entry.get("until")
            status = "current" if until is None else ("grace" if float(until) > now else "retired")
            out.append({"username": entry["username"], "state": status, "since": rfc3339(float(entry["since"])),
                        "until": None if until is None else rfc3339(float(until))})
        return out

    def overview_of(self, name: str) -> dict[str, Any]:
        role = self.get(name)
        state, _ = self._state(name)
        now = self._now()
        nxt = role.next_rotation(state.last_rotation, now) if state.last_rotation else None
        if state.pending is not None:
            health = "pending"
        elif state.failures:
            health = "failing"
        elif nxt is not None and self.overdue(role, state, now):
            health = "overdue"
        else:
            health = "ok"
        return {"name": name, "db_name": role.db_name, "usernames": list(role.users),
                "strategy": role.rotation_strategy, "current": state.current,
                "last_rotation": rfc3339(state.last_rotation) if state.last_rotation else None,
                "next_rotation": rfc3339(nxt) if nxt is not None else None, "state": health,
                "failures": state.failures, "rotations": state.rotations}

    @staticmethod
    def overdue(role: StaticRole, state: RotationState, now: float) -> bool:
        if not state.last_rotation:
            return False
        nxt = role.next_rotation(state.last_rotation, now)
        slack = max(60.0, 0.1 * role.rotation_period) if role.rotation_period else 300.0
        return now > nxt + slack

    # ---- rotation ---------------------------------------------------------------------------
    def rotate(self, name: str) -> None:
        """Rotate now (``database/rotate-role``); raises when PostgreSQL refused or cannot be reached."""
        role = self.get(name)
        result = self._locked(role, force=True)
        if result.outcome == "busy":
            raise DatabaseUnavailableError(f"static role {name!r} is being rotated by another process")
        if result.outcome == "failed":
            raise DatabaseUnavailableError(f"unable to rotate static role {name!r}: {result.error}")

    def run_due(self) -> list[RotationResult]:
        """The scheduler's pass: settle, retire and rotate every static role that needs it."""
        out = []
        for name in self.names():
            try:
                role = self.get(name)
                out.append(self._locked(role, force=False))
            except Exception as exc:  # one broken role must not stop the others
                logger.warning("static role %s: %s", name, exc)
                out.append(RotationResult(name, "failed", error=str(exc)))
        return out

    def _try_settle(self, role: StaticRole) -> RotationState:
        self._locked(role, force=False, settle_only=True)
        return self._state(role.name)[0]

    def _locked(self, role: StaticRole, *, force: bool, settle_only: bool = False) -> RotationResult:
        lock = f"rotate/{role.name}"
        if not self.items.acquire(lock, self.holder, CLAIM_TTL):
            return RotationResult(role.name, "busy")
        try:
            return self._step(role, force=force, settle_only=settle_only)
        finally:
            self.items.release(lock, self.holder)

    def _step(self, role: StaticRole, *, force: bool, settle_only: bool) -> RotationResult:
        state, revision = self._state(role.name)
        now = self._now()
        if state.pending is not None:
            settled = self._settle(role, state, revision)
            if settled.outcome == "failed" or settle_only:
                return settled
            state, revision = self._state(role.name)
            force = False  # the unfinished rotation was this due time's rotation
        if settle_only:
            return RotationResult(role.name, "not-due")
        prev = state.previous
        if prev is not None and not prev.get("retired") and now >= float(prev["grace_until"]):
            retired = self._retire(role, state, revision)
            if retired.outcome == "failed" or (not force and not role.due(state.last_rotation, now)):
                return retired
            state, revision = self._state(role.name)
        if not force:
            if state.last_rotation and not role.due(state.last_rotation, now):
                return RotationResult(role.name, "not-due")
            if state.failures and now < state.next_try:
                return RotationResult(role.name, "not-due")
        return self._rotate(role, state, revision)

    def _plugin(self, role: StaticRole) -> PostgresPlugin:
        return self.connections.plugin(role.db_name)

    def _apply(self, role: StaticRole, user: str, password: str) -> None:
        """Run the rotation statements, retrying a failed connection a few times (nothing was sent then)."""
        values = {"name": user, "username": user, "password": password}
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                self._plugin(role).execute(role.rotation_statements or DEFAULT_ROTATION, values)
                return
            except DatabaseConnectError:
                if attempt + 1 == CONNECT_ATTEMPTS:
                    raise
                self._sleep(CONNECT_PAUSE * (attempt + 1))

    def _rotate(self, role: StaticRole, state: RotationState, revision: int) -> RotationResult:
        target = role.other(state.current)
        sid = secret_id(role.name, target)
        record = self.secrets.get(sid) or {}
        new = generate_password()
        gen = _secrets.token_hex(8)
        now = self._now()
        # phase 1: the store learns of the rotation, then holds the new password, before PostgreSQL does
        state.pending = {"username": target, "gen": gen, "since": now}
        revision = self._save(role.name, state, revision)
        self.on_phase("claimed")
        self.secrets.put(sid, {"password": record.get("password"), "gen": record.get("gen"), "pending": new,
                               "pending_gen": gen})
        self.on_phase("stored")
        try:
            self._apply(role, target, new)
        except DatabaseConnectError as exc:
            # nothing reached PostgreSQL: roll back, the current credential stays current
            self.secrets.put(sid, {"password": record.get("password"), "gen": record.get("gen")})
            state.pending = None
            return self._failed(role, state, revision, exc)
        except DatabaseUnavailableError as exc:
            # the statements may have committed: keep the pending password; the next pass applies it again
            return self._failed(role, state, revision, exc)
        self.on_phase("applied")
        # phase 2
        self.secrets.put(sid, {"password": new, "gen": gen})
        self._finish(role, state, revision, target, gen)
        return RotationResult(role.name, "rotated", target)

    def _failed(self, role: StaticRole, state: RotationState, revision: int, exc: Exception) -> RotationResult:
        now = self._now()
        state.failures += 1
        state.last_error = str(exc)[:300]
        state.next_try = now + min(BACKOFF[1], BACKOFF[0] * 2 ** (state.failures - 1))
        self._save(role.name, state, revision)
        self._audit(ROTATE_FAILED_ACTION, role.name, outcome="failed", failures=state.failures)
        logger.warning("static role %s: rotation failed (%d in a row): %s", role.name, state.failures, exc)
        return RotationResult(role.name, "failed", error=state.last_error)

    def _finish(self, role: StaticRole, state: RotationState, revision: int, target: str, gen: str) -> None:
        now = self._now()
        old = state.current
        grace_until = now + role.grace_period if role.rotation_strategy == "alternating" else now
        for entry in state.timeline:
            if entry.get("until") is None:
                entry["until"] = grace_until if entry["username"] != target else now
        if role.rotation_strategy == "alternating" and old is not None and old != target:
            state.previous = {"username": old, "grace_until": grace_until, "retired": role.grace_period == 0}
        state.timeline = [*state.timeline, {"username": target, "since": now, "until": None}][-TIMELINE_KEEP:]
        state.current = target
        state.gen = gen
        state.last_rotation = now
        state.pending = None
        state.failures = 0
        state.last_error = ""
        state.next_try = 0.0
        state.rotations += 1
        self._save(role.name, state, revision)
        self._audit("database.static_role.rotate", role.name, username=target, strategy=role.rotation_strategy)

    def _settle(self, role: StaticRole, state: RotationState, revision: int) -> RotationResult:
        """Finish or roll back the rotation a process left unfinished (see the module's docstring)."""
        pending = state.pending or {}
        target, gen = str(pending.get("username")), str(pending.get("gen"))
        sid = secret_id(role.name, target)
        record = self.secrets.get(sid) or {}
        if record.get("pending") and record.get("pending_gen") == gen:
            try:
                self._apply(role, target, str(record["pending"]))
            except DatabaseUnavailableError as exc:
                return self._failed(role, state, revision, exc)
            self.secrets.put(sid, {"password": record["pending"], "gen": gen})
        elif record.get("gen") != gen:
            state.pending = None  # the new password was never stored, so never sent: roll back
            self._save(role.name, state, revision)
            self._audit("database.static_role.rotate", role.name, outcome="rolled_back")
            return RotationResult(role.name, "settled")
        self._finish(role, state, revision, target, gen)
        return RotationResult(role.name, "settled", target)

    def _retire(self, role: StaticRole, state: RotationState, revision: int) -> RotationResult:
        """The grace period of the previous user is over: give it a password nobody stores."""
        prev = state.previous or {}
        user = str(prev["username"])
        try:
            self._apply(role, user, generate_password())
        except DatabaseUnavailableError as exc:
            return self._failed(role, state, revision, exc)
        self.secrets.put(secret_id(role.name, user), {"password": None, "gen": _secrets.token_hex(8),
                                                      "retired": True})
        state.previous = {**prev, "retired": True}
        self._save(role.name, state, revision)
        self._audit("database.static_role.retire", role.name, username=user)
        return RotationResult(role.name, "retired", user)

    def _audit(self, action: str, name: str, outcome: str = "ok", **details: Any) -> None:
        with self.vault.store.transaction() as tx:
            self.vault.audit.record(tx, action, keyring=self.vault.keyring_name, outcome=outcome,
                                    mount=self.items.mount, role=name, **details)
