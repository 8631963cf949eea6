"""One module turns a token into an ACL, with its cache, for the HTTP API and the console alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.config import KeyManagementConfig
from nebula_credential.server._backend import backend_for
from nebula_credential.server.acl import access_control_for
from nebula_credential.server.compose import server_authorizer


@pytest.fixture
def local_vault(tmp_path: Path) -> Iterator[nc.Vault]:
    v = nc.open(f"sqlite:///{tmp_path / 'a.db'}", create=True)
    try:
        yield v
    finally:
        v.close()


def test_token_to_acl_cached_until_a_policy_changes_here(local_vault: nc.Vault) -> None:
    access = access_control_for(local_vault, KeyManagementConfig())
    access.policies.put("app", 'path "secret/data/app/*" { capabilities = ["read"] }')
    token, _ = access.tokens.create(["app"])
    found = access.authorize(token)
    assert found is not None
    row, acl = found
    assert acl.allows("secret/data/app/x", "read") and not acl.allows("secret/data/other", "read")
    assert access.acl(row.policies) is acl  # built once per cache_ttl
    access.policies.put("app", 'path "secret/data/other" { capabilities = ["read"] }')
    access.forget_policy("app")
    assert access.acl(row.policies).allows("secret/data/other", "read")
    assert access.authorize("ncs.not-a-token") is None


def test_the_api_and_the_console_use_the_same_rule(local_vault: nc.Vault) -> None:
    config = KeyManagementConfig()
    backend = backend_for(local_vault, config)
    backend.access.policies.put("ops", 'path "sys/*" { capabilities = ["read"] }')
    token, _ = backend.tokens.create(["ops"])
    principal = server_authorizer(local_vault, config)(token)
    assert principal is not None and principal.name.startswith("token (")
    assert principal.allowed("read", "sys/health") and not principal.allowed("update", "sys/health")
    assert server_authorizer(local_vault, config)("ncs." + "x" * 43) is None
