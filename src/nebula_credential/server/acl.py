"""From a token to an ACL: the one place the server API and the console decide access.

A token's live row comes from :class:`~.tokens.TokenManager` (which caches
lookups for ``cache_ttl``); its policies are parsed once per ``cache_ttl`` and
their combined :class:`~.policies.ACL` kept as long, so a policy changed
through another instance takes effect here within ``cache_ttl`` (the same
bound as a revoked token).  Changes made through this instance are dropped
from the cache at once (:meth:`AccessControl.forget_policy`).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from ..config import KeyManagementConfig
from ..servertables import TokenRow
from ..vault import Vault
from .policies import ACL, ROOT_POLICY, Rule, parse
from .policystore import PolicyStore
from .tokens import TokenManager

_ROOT = ACL([], root=True)
_ACL_CACHE_MAX = 1000


class AccessControl:
    """Tokens, policies and the caches between them."""

    def __init__(self, tokens: TokenManager, policies: PolicyStore, *, cache_ttl: timedelta) -> None:
        self.tokens = tokens
        self.policies = policies
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

    def authorize(self, token: str) -> tuple[TokenRow, ACL] | None:
        """A live token's row and ACL; None for an unknown, revoked or expired token."""
        row = self.tokens.lookup(token)
        if row is None:
            return None
        return row, self.acl(row.policies)


def token_manager_for(vault: Vault, config: KeyManagementConfig) -> TokenManager:
    """The token manager over ``vault``'s server tables, with ``[server]``'s lifetimes."""
    server = config.server
    return TokenManager(vault.server_tables(), vault.provider, clock=vault.clock, default_ttl=server.default_ttl,
                        max_ttl=server.max_ttl, cache_ttl=server.cache_ttl)


def access_control_for(vault: Vault, config: KeyManagementConfig) -> AccessControl:
    """Token and policy access over ``vault``'s server tables, cached for ``[server] cache_ttl``."""
    return AccessControl(token_manager_for(vault, config), PolicyStore(vault.server_tables(), vault.clock),
                         cache_ttl=config.server.cache_ttl)
