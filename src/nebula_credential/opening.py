"""Opening a store: the root of trust, the fingerprint check and first-time initialisation.

:func:`open` (``nc.open``) and :func:`open_on` build a :class:`~.vault.Vault`
once the store's recorded root of trust and the process's provider settings
agree; with ``create=True`` they initialise a new store all or nothing.
Kept apart from the facade so :mod:`.vault` is only the operations on an
open vault.

It is also where the surfaces get what they need of the backends to open
things (a store without a vault, a local key file, another root of trust,
a URL safe to print), by name, so that no surface imports ``store`` or
``providers`` itself (``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import KeyManagementConfig, ProviderConfig
from .exceptions import ConfigError, DecryptionError, StoreError
from .fingerprint import Fingerprint, read_fingerprint, write_fingerprint
from .models import utc_now
from .names import check_keyring
from .providers import KeyProvider, open_provider
from .refresh_floor import announce_refresh_interval
from .store import Store, open_store, redact_url
from .vault import Vault

__all__ = [
    "KeyProvider",
    "Store",
    "check_fingerprint",
    "load_config",
    "local_key_file",
    "local_root",
    "open",
    "open_on",
    "open_root",
    "open_store",
    "path_from_url",
    "provider_config_for",
    "redact_url",
]


# ---- what the surfaces need to open things, by name ----------------------------
def local_root(path: str | Path, *, create: bool = False) -> KeyProvider:
    """A local key file as a root of trust: a new one (``create``, refused if it exists) or loaded."""
    from .providers.local import LocalKeyProvider

    return LocalKeyProvider.create(path) if create else LocalKeyProvider.load(path)


def local_key_file(settings: dict[str, Any], base_dir: Path | None) -> Path:
    """Where the local provider's key file is for these ``[provider]`` settings (see ``key_file_path``)."""
    from .providers.local import key_file_path

    return key_file_path(settings, base_dir)


def path_from_url(url: str) -> str:
    """The path a ``sqlite:`` URL names (``:memory:`` for an in-memory store); a store error for other URLs."""
    from .store.sqlite import path_from_url as sqlite_path

    return sqlite_path(url)


def open_root(config: ProviderConfig, *, base_dir: Path | None = None) -> KeyProvider:
    """A root of trust from provider settings, not tied to a store (an escrow root)."""
    return open_provider(config, base_dir=base_dir)



def _not_initialised(store: Store) -> StoreError:
    return StoreError(f"store {redact_url(store.url)} is not initialised; run `nebula-credential init` first")


def check_fingerprint(recorded: Fingerprint, provider_type: str, *, configured: bool) -> None:
    """Refuse a provider of another type than the store was made under, naming both.

    ``configured`` is False when the process has no [provider] settings at
    all: the error then says where they must come from, since the store's
    record never supplies them.
    """
    if provider_type == recorded.type:
        return
    theirs = f"this store's root of trust is provider {recorded.type!r} (root key {recorded.root_key_id or 'unknown'})"
    if not configured:
        raise ConfigError(
            "provider",
            f"{theirs}, and this process has no [provider] settings; put them in the config file "
            "(--config or NEBULA_CREDENTIAL_CONFIG): provider settings never come from the store "
            "(only a local key file beside a SQLite store needs no configuration)",
        )
    raise ConfigError(
        "provider.type",
        f"{theirs}, but this process is configured for {provider_type!r}; use the configuration this "
        "store was created with (`nebula-credential provider rotate` under it moves between root keys)",
    )


def provider_config_for(store: Store, config: KeyManagementConfig) -> ProviderConfig:
    """The process's provider settings for an initialised store, checked against its fingerprint.

    The store records only the provider type and root key id (see
    :mod:`.fingerprint`): it never supplies a URL, library, key file, secret
    source or TLS setting, since anyone with write access to the database
    could otherwise send our tokens to a server of their choosing or make
    us load their code.
    """
    check_fingerprint(_fingerprint(store), config.provider.type, configured=config.provider.explicit)
    return config.provider


def _fingerprint(store: Store) -> Fingerprint:
    with store.read() as tx:
        recorded = read_fingerprint(tx)
    if recorded is None:
        raise _not_initialised(store)
    return recorded


def _refuse_missing_sqlite(url: str) -> None:
    """Opening to read never creates a file: a mistyped path is an error, not a new empty store."""
    if not url.startswith("sqlite:"):
        return
    path = path_from_url(url)
    if path != ":memory:" and not Path(path).exists():
        raise StoreError(f"no store at {redact_url(url)}: the file {Path(path).resolve()} does not exist "
                         "(check the path; `nebula-credential init` creates a new store)")


#: Serialises initialisers of one store (PostgreSQL advisory lock; SQLite's write lock already does).
_INIT_LOCK = "(store init)"


def _initialise(
    store: Store, config: KeyManagementConfig, provider: KeyProvider | None, make: Callable[[KeyProvider], Vault]
) -> Vault | None:
    """Make a new store's root of trust, fingerprint and first key version, once, all or nothing.

    Several processes may open a new store with ``create=True`` at once (the
    workers of one application starting): the first creates the root key
    (a new key file, exclusively) and records it; the others find it recorded
    when they get the lock and open it like any initialised store (None).
    Everything is written in one transaction, so a provider or database that
    refuses half-way leaves the store as it found it, and the root key this
    init created is undone (a key file removed, a KMS key scheduled for
    deletion: :meth:`KeyProvider.discard_created_root`), so the next attempt
    starts as the first did.
    """
    made: KeyProvider | None = None
    with store.transaction() as tx:
        tx.lock_keyring(_INIT_LOCK)
        if read_fingerprint(tx) is not None:
            return None
        if provider is not None:
            provider.check_root_unchanged()
        try:
            if provider is None:
                provider = made = open_provider(config.provider, create=True, base_dir=store.directory())
            vault = make(provider)
            write_fingerprint(tx, vault.provider)
            vault.audit.ensure_key(tx)
            vault.audit.record(tx, "store.init", provider=vault.provider.describe())
            vault.keys.initialize_in(tx)
            return vault
        except BaseException:
            if made is not None:
                # still under the init lock: an initialiser that loaded a key file this init
                # made finds it gone when it gets the lock (check_root_unchanged)
                with suppress(Exception):  # the init's own error is the one to report
                    made.discard_created_root()
                with suppress(Exception):  # an HSM session, an SDK client: the init's own error is the one to report
                    made.close()
            raise


def _prove_root_key(vault: Vault) -> None:
    """Unwrap the audit key: the configured root key must be the one this store was made under.

    A key that does not open it is named beside the store's recorded one.
    Other provider failures (unreachable, a version below the minimum) keep
    their own error, which names its own fix.
    """
    try:
        vault.audit.load_key()
    except DecryptionError as exc:
        with vault.store.read() as tx:
            recorded = read_fingerprint(tx)
        raise ConfigError(
            "provider",
            f"the configured {vault.provider.name} root key {vault.provider.root_key_id() or '(unknown)'} "
            f"does not open this store, which was created under {recorded.type if recorded else '?'} "
            f"root key {(recorded.root_key_id if recorded else '') or '(unknown)'}: wrong key file or "
            f"provider settings for this store? ({exc})",
        ) from exc


def load_config(config: KeyManagementConfig | str | Path | None) -> KeyManagementConfig:
    """A config object from an object, a TOML path, or nothing (the defaults)."""
    if isinstance(config, str | Path):
        config = KeyManagementConfig.load(config)
    return config or KeyManagementConfig()


def open(
    url: str | None = None,
    *,
    config: KeyManagementConfig | str | Path | None = None,
    keyring: str = "default",
    provider: KeyProvider | None = None,
    clock: Callable[[], datetime] = utc_now,
    create: bool = False,
) -> Vault:
    """Open a credential store; with ``create=True`` initialise it if new.

    The provider comes from ``provider`` if given, else the config's
    ``[provider]`` section (a local key file beside a SQLite store when
    there is none); never from the store, which records only the provider
    type and root key id and refuses a provider of another type.  Opening
    unwraps the audit key, which proves the root key belongs to this store
    before anything is written.
    """
    config = load_config(config)
    check_keyring(keyring)  # a name the caller chose; names already in a store are read as they are
    url = url or config.store.url
    if not create:
        _refuse_missing_sqlite(url)
    return open_on(open_store(url), config, keyring=keyring, provider=provider,
                   clock=clock, create=create)


def open_on(
    store: Store,
    config: KeyManagementConfig,
    *,
    keyring: str = "default",
    provider: KeyProvider | None = None,
    clock: Callable[[], datetime] = utc_now,
    create: bool = False,
    adapt_provider: Callable[[KeyProvider], KeyProvider] | None = None,
) -> Vault:
    """:func:`open` on a store already opened (the asyncio API brings its bridged one).

    ``adapt_provider`` wraps the provider before anything uses it (the
    asyncio API moves its blocking calls off the event loop).  The store is
    closed if opening fails.
    """

    def make(root: KeyProvider) -> Vault:
        if adapt_provider is not None:
            root = adapt_provider(root)
        return Vault(store, root, keyring=keyring, config=config, clock=clock)

    try:
        with store.read() as tx:
            recorded = read_fingerprint(tx)
        vault = None
        if recorded is None:
            if not create:
                raise _not_initialised(store)
            vault = _initialise(store, config, provider, make)
        if vault is None:  # initialised, perhaps a moment ago by another process
            if provider is None:
                provider = open_provider(provider_config_for(store, config), base_dir=store.directory())
            else:
                check_fingerprint(_fingerprint(store), provider.name, configured=True)
            vault = make(provider)
        _prove_root_key(vault)
        announce_refresh_interval(store, config)  # the destroy floor is the largest any process uses
        if create:
            vault.keys.initialize()
        return vault
    except BaseException:
        store.close()
        raise
