"""Roots of trust, looked up by ``[provider] type``; each backend is imported lazily.

A name-to-class table, not a mutable global registry: adding a backend is
one line here and one module beside this file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..config import ProviderConfig
from ..exceptions import ConfigError
from .base import Aead, KeyProvider, RetryPolicy, TransientProviderError, WrapContext

PROVIDERS: dict[str, str] = {
    "local": "nebula_credential.providers.local:LocalKeyProvider",
    "pkcs11": "nebula_credential.providers.pkcs11:Pkcs11KeyProvider",
    "aws-kms": "nebula_credential.providers.aws_kms:AwsKmsKeyProvider",
    "azure-keyvault": "nebula_credential.providers.azure_keyvault:AzureKeyVaultProvider",
    "vault-transit": "nebula_credential.providers.vault_transit:VaultTransitProvider",
}


def provider_class(name: str) -> type[KeyProvider]:
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            "provider.type", f"unknown provider {name!r}; allowed: {', '.join(PROVIDERS)}"
        ) from None
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("nebula_credential"):
            raise ConfigError("provider.type", f"provider {name!r} is not available in this build") from None
        raise
    klass: type[KeyProvider] = getattr(mod, cls)
    return klass


def open_provider(
    config: ProviderConfig, *, create: bool = False, base_dir: Path | None = None
) -> KeyProvider:
    """Build the provider ``config`` describes; ``create`` makes a new root key where that applies."""
    provider = provider_class(config.type).from_config(config.settings, create=create, base_dir=base_dir)
    provider.retry = RetryPolicy(config.retry_attempts, config.retry_backoff.total_seconds(),
                                 config.retry_max.total_seconds())
    return provider


__all__ = [
    "PROVIDERS",
    "Aead",
    "KeyProvider",
    "RetryPolicy",
    "TransientProviderError",
    "WrapContext",
    "open_provider",
    "provider_class",
]
