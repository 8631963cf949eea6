"""The local Azure Key Vault test server (tests/azure_server.py) for the session.

The test session makes its own CA and a certificate for 127.0.0.1; the
unmodified SDK is given ``connection_verify=<CA path>`` and
``verify_challenge_resource=False`` (the challenge names the real
``https://vault.azure.net`` resource, which is not 127.0.0.1).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .azure_server import ALL_OPS, AzureKeyVaultServer, make_tls


class StaticTokenCredential:
    """A credential that hands out one token the test server issued (``get_token`` protocol)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class AzureTestVault:
    server: AzureKeyVaultServer
    folder: Path
    client_id: str
    secret_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def credential(self, permissions: Any = ALL_OPS) -> StaticTokenCredential:
        return StaticTokenCredential(self.server.issue_token(permissions))

    def sdk_options(self) -> dict[str, Any]:
        return {
            "connection_verify": str(self.server.tls.ca_cert),
            "verify_challenge_resource": False,
        }

    def settings(self, key_name: str | None = None, **extra: Any) -> dict[str, Any]:
        """``[provider]`` settings for a fresh key, with the client-secret credential
        against this server's token endpoint (so the CLI in a subprocess can use it)."""
        return {
            "type": "azure-keyvault",
            "vault_url": self.url,
            "key_name": key_name or f"root-{uuid.uuid4().hex[:12]}",
            "key_size": 2048,
            "tenant_id": self.server.tenant,
            "client_id": self.client_id,
            "client_secret_file": str(self.secret_file),
            "authority": self.url,
            "disable_instance_discovery": True,
            **self.sdk_options(),
            **extra,
        }


@pytest.fixture(scope="session")
def azure_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureTestVault]:
    folder = tmp_path_factory.mktemp("azure-kv")
    try:
        server = AzureKeyVaultServer(make_tls(folder)).start()
    except OSError as exc:
        pytest.fail(f"the Azure Key Vault test server could not start: {exc}")
    client_id = str(uuid.uuid4())
    secret = uuid.uuid4().hex
    server.register_client(client_id, secret)
    secret_file = folder / "client-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    try:
        yield AzureTestVault(server, folder, client_id, secret_file)
    finally:
        server.stop()


@pytest.fixture
def azure_keyvault_provider_factory(azure_vault: AzureTestVault) -> Callable[[], dict[str, Any]]:
    """For the conformance suite: settings of a fresh Azure key each call."""
    return lambda: azure_vault.settings()
