"""From a token to an ACL: the one place the server API and the console decide access.

A token's live row comes from :class:`~.tokens.TokenManager` (which caches
lookups for ``cache_ttl``); its policies are parsed once per ``cache_ttl`` and
their combined :class:`~.policies.ACL` kept as long, so a policy changed
through another instance takes effect here within ``cache_ttl`` (the same
bound as a revoked token).  Changes made through this instance are dropped
from the cache at once (:meth:`AccessControl.forget_policy`).

A stored token, policy or role row whose MAC fails (a database writer
edited it) grants nothing: it is read as absent, logged, and queued in
:class:`Rejections`, whose events the server appends to the audit chain
after the read that found them (:meth:`AccessControl.report_rejections`).
The built-in ``default`` policy is code (:data:`~.policies.DEFAULT_POLICY_TEXT`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

from ..audit import Event
from ..config import KeyManagementConfig
from ..database import lease_handlers
from ..leases import Leases
from ..rowmac import RowMac, rejected_action
from ..servertables import TokenRow
from ..vault import Vault
from .policies import ACL, ROOT_POLICY, Rule, parse
from .policystore import PolicyStore
from .ratelimit import note_change
from .tokenroles import TokenRoles
from .tokens import TokenManager

log = logging.getLogger(__name__)

_ROOT = ACL([], root=True)
_ACL_CACHE_MAX = 1000


class Rejections:
    """Rows refused for a failed MAC, waiting to be audited (each (table, key) at most once per
    ``every`` seconds, so a forged row looked up in a loop costs one event per interval)."""

    def __init__(self, every: float) -> None:
        self._every = max(every, 1.0)
        self._pending: list[tuple[str, str, str]] = []
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def note(self, table: str, key: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._seen.get((table, key))
            if last is not None and now - last < self._every:
                return
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[(table, key)] = now
            self._pending.append((table, key, reason))
        log.warning("refused a row of %s (%s): %s; run nebula-credential doctor", table, key[:64], reason)

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def __bool__(self) -> bool:
        return bool(self._pending)


class AccessControl:
    """Tokens, policies, token roles and the caches between them."""

    def __init__(self, tokens: TokenManager, policies: PolicyStore, *, cache_ttl: timedelta,
                 roles: TokenRoles | None = None, rejections: Rejections | None = None,
                 vault: Vault | None = None, leases: StoreLeases | None = None) -> None:
        self.tokens = tokens
        self.policies = policies
        #: the store's leases, shared with the token manager's revocation hook
        self.leases = leases
        self.roles = roles
        self.rejections = rejections if rejections is not None else Rejections(cache_ttl.total_seconds())
        self._vault = vault
        self._cache_ttl = cache_ttl.total_seconds()
        self._rules: dict[str, tuple[float, list[Rule] | None]] = {}
        self._acls: dict[tuple[str, ...], tuple[float, ACL]] = {}
        self._lock = threading.Lock()

    def cached_acl(self, policies: tuple[str, ...]) -> ACL | None:
        """The ACL when known without reading the store (lets the async server skip a thread hop)."""
        if ROOT_POLICY in policies:
            return _ROOT
        with self._lock:
            hit = self._acls.get(policies)
        if hit is not None and time.monotonic() - hit[0] < self._cache_ttl:
            return hit[1]
        return None

    def acl(self, policies: tuple[str, ...]) -> ACL:
        """The combined ACL of a token's policies (built once per ``cache_ttl``)."""
        hit = self.cached_acl(policies)
        if hit is not None:
            return hit
        mono = time.monotonic()
        rules: list[Rule] = []
        for name in policies:
            rules.extend(self._policy_rules(name))
        acl = ACL(rules)
        with self._lock:
            if len(self._acls) > _ACL_CACHE_MAX:
                self._acls.clear()
            self._acls[policies] = (mono, acl)
        return acl

    def _policy_rules(self, name: str) -> list[Rule]:
        mono = time.monotonic()
        with self._lock:
            hit = self._rules.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._cache_ttl:
            return hit[1] or []
        text = self.policies.get(name)
        rules = parse(text) if text is not None else None
        with self._lock:
            self._rules[name] = (mono, rules)
        return rules or []

    def forget_policy(self, name: str) -> None:
        """Drop a changed policy (and every ACL built from it) from this process's caches."""
        with self._lock:
            self._rules.pop(name, None)
            self._acls.clear()

    def forget_policies(self) -> None:
        """Drop every cached policy and ACL (another worker changed one)."""
        with self._lock:
            self._rules.clear()
            self._acls.clear()

    def authorize(self, token: str, source: str | None = None) -> tuple[TokenRow, ACL] | None:
        """A live token's row and ACL; None for an unknown, revoked, expired or refused token, or
        one bound to networks ``source`` is not in (None: no address to check)."""
        try:
            row = self.tokens.use(token, source)
            return None if row is None else (row, self.acl(row.policies))
        finally:
            self.report_rejections()

    def report_rejections(self) -> None:
        """Append a ``server.row_rejected.<table>`` event for every row refused since the last call."""
        if not self.rejections or self._vault is None:
            return
        events = [Event(rejected_action(table), None, None, None, "refused",
                        {"table": table, "row": key[:128], "reason": reason})
                  for table, key, reason in self.rejections.take()]
        if events:
            self._vault.record_events(events)


def row_mac_for(vault: Vault) -> RowMac:
    """The MAC helper of the rows that grant access, over ``vault``'s store and provider."""
    tables = vault.server_tables()
    return RowMac(tables.transaction, vault.provider, lock=tables.new_lock())


class StoreLeases:
    """The leases of one vault's store (``sys/leases/*``, ``database/creds``), opened on first use,
    and the token manager's revocation hook over them: revoking a token (and its children)
    revokes the leases they created, as in Vault, whoever revokes it (API, console or CLI).

    The hook runs after the tokens are gone, in the revoking caller's thread.  A
    lease whose revocation fails stays queued by the lease library for the
    sweeper's retries: logged here by type, never lost.
    """

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._leases: Leases | None = None
        self._lock = threading.Lock()

    def get(self) -> Leases:
        with self._lock:
            if self._leases is None:
                self._leases = Leases(self._vault, lease_handlers(self._vault))
            return self._leases

    def revoke_for_tokens(self, accessors: Sequence[str]) -> None:
        leases = self.get()
        for accessor in accessors:
            try:
                leases.revoke_for_token(accessor)
            except Exception as exc:
                log.warning("revoking the leases of a revoked token failed: %s", type(exc).__name__)


def token_manager_for(vault: Vault, config: KeyManagementConfig, rowmac: RowMac | None = None,
                      rejections: Rejections | None = None, leases: StoreLeases | None = None) -> TokenManager:
    """The token manager over ``vault``'s server tables, with ``[server]``'s lifetimes; revoking a
    token revokes its leases (:class:`StoreLeases`) and tells the serve's other workers."""
    server = config.server
    manager = TokenManager(vault.server_tables(), vault.provider, rowmac=rowmac or row_mac_for(vault),
                           clock=vault.clock, default_ttl=server.default_ttl, max_ttl=server.max_ttl,
                           cache_ttl=server.cache_ttl,
                           on_reject=rejections.note if rejections is not None else None)
    manager.on_revoke.append((leases or StoreLeases(vault)).revoke_for_tokens)
    manager.on_revoke.append(lambda accessors: note_change())  # the serve's other workers forget them at once
    return manager


def policy_store_for(vault: Vault, rowmac: RowMac | None = None, rejections: Rejections | None = None) -> PolicyStore:
    """The policy table over ``vault``'s server tables (the CLI, the API, the console)."""
    return PolicyStore(vault.server_tables(), vault.clock, rowmac or row_mac_for(vault),
                       on_reject=rejections.note if rejections is not None else None)


def access_control_for(vault: Vault, config: KeyManagementConfig) -> AccessControl:
    """Token, policy and role access over ``vault``'s server tables, cached for ``[server] cache_ttl``."""
    rowmac = row_mac_for(vault)
    rejections = Rejections(config.server.cache_ttl.total_seconds())
    tables = vault.server_tables()
    leases = StoreLeases(vault)
    return AccessControl(
        token_manager_for(vault, config, rowmac, rejections, leases), policy_store_for(vault, rowmac, rejections),
        cache_ttl=config.server.cache_ttl,
        roles=TokenRoles(tables, vault.clock, rowmac, on_reject=rejections.note),
        rejections=rejections, vault=vault, leases=leases)
