"""init, reencrypt, status."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from ..config import PROVIDER_TYPES, ProviderConfig
from ..exceptions import CommitOutcomeUnknownError, ConfigError, NebulaCredentialError, StoreError
from ..fingerprint import read_fingerprint
from ..maintenance import status as vault_status
from ..opening import local_key_file, local_root, open_store, redact_url
from ..reencrypt import check_workers, scope_order
from ._common import AppContext, console, discover_config, emit, err_console, is_tty, pass_app, sqlite_file
from ._progress import PlainProgress, rich_progress
from .keys import versions_table


@click.command()
@click.option("--provider", "provider_type", type=click.Choice(PROVIDER_TYPES),
              help="Root of trust (default: config or local).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Local provider: use (or create) this key file; the only way to adopt an existing one.")
@click.option("--write-config", type=click.Path(dir_okay=False), default=None,
              help="Write a new config file naming this store and provider (a KMS key init creates included); "
                   "later commands use it with --config.")
@pass_app
def init(app: AppContext, provider_type: str | None, key_file: str | None, write_config: str | None) -> None:
    """Initialise a store and its keyring (creates the root key for the local provider).

    On a store whose keyring is already initialised it says so and changes
    nothing (exit 0), so it is safe in provisioning scripts.  A failed init
    leaves nothing that a second attempt would trip over.  On a store
    that already has its root key, --key-file naming a missing file is
    refused before anything is created.

    \b
    With --write-config PATH it also writes PATH, a new config file for this
    store and provider.  On AWS KMS without a key_id, init creates a KMS key:
    it goes into the config file when that file is one init wrote (its first
    line says so; the rest of the file is kept as it is), else it is printed
    with the lines to add.

    \b
    Example: nebula-credential --db sqlite:///var/lib/app/creds.db init
    """
    if write_config is not None:
        _check_new_config(app, Path(write_config))
    existing = _initialised(app, key_file)
    if existing is not None:
        if write_config is not None:
            existing["config_written"] = str(_write_new_config(app, Path(write_config), key_file, None))

        def already() -> None:
            console.print(f"keyring {existing['keyring']} in {existing['store']} is already initialised "
                          f"(provider {existing['provider']['type']}, active key version "
                          f"{existing['active_version']}); nothing changed")
            if write_config is not None:
                console.print(Text(f"wrote the config file {write_config}; use it with --config {write_config}"),
                              soft_wrap=True)

        emit(app, existing | {"already_initialised": True}, already)
        return
    cfg = app.config
    if provider_type is not None and provider_type != cfg.provider.type:
        from dataclasses import replace

        provider = ProviderConfig(type=provider_type, settings=cfg.provider.settings, explicit=True)
        app._config = replace(cfg, provider=provider)
    if key_file is not None and app.config.provider.type != "local":
        raise click.UsageError("--key-file applies to the local provider only")
    with _all_or_nothing(app, key_file):
        if key_file is not None:
            root = local_root(key_file, create=not os.path.lexists(key_file))
            vault = app.vault(create=True, provider=root)
        else:
            vault = app.vault(create=True)
        kv = vault.keys.active_version()
    described = vault.provider.describe()
    data: dict[str, Any] = {"keyring": vault.keyring_name, "active_version": kv.version, "provider": described,
                            "store": vault.redacted_url}
    created = _created_kms_key(app, described)
    if created is not None:
        data["created_key_id"] = created
    written = None
    if write_config is not None:
        written = _write_new_config(app, Path(write_config), key_file, created)
        data["config_written"] = str(written)
    elif created is not None:
        written, problem = _add_key_id(app, created)
        if written is not None:
            data["key_id_written_to"] = str(written)
        if problem:
            data["config_not_written"] = problem

    def human() -> None:
        console.print(f"initialised keyring {vault.keyring_name} in {data['store']} with provider "
                      f"{vault.provider.name}; active key version {kv.version}")
        if created is not None and written is not None:
            kept = "" if write_config is not None else " (a file init wrote; its other lines are unchanged)"
            console.print(Text(f"created KMS key {created}\nwrote it to {written} as [provider] key_id{kept}"),
                          soft_wrap=True)
        elif created is not None:
            if data.get("config_not_written"):
                err_console.print(Text(f"could not add key_id to the config file: {data['config_not_written']}"),
                                  soft_wrap=True)
            console.print(Text(f"created KMS key {created}\nput it in the config, every later command needs it:\n"
                               f'  [provider]\n  key_id = "{created}"'), soft_wrap=True)
        if write_config is not None:
            console.print(Text(f"wrote the config file {written}; use it with --config {written}"), soft_wrap=True)

    emit(app, data, human)


def _check_new_config(app: AppContext, path: Path) -> None:
    """Refuse --write-config before anything is created: an existing file, or a password to write."""
    from ._configfile import url_has_password

    if os.path.lexists(path):
        raise click.UsageError(f"--write-config {path}: the file exists; init writes a new config file only")
    if not path.parent.is_dir():
        raise click.UsageError(f"--write-config {path}: no folder {path.parent}")
    if url_has_password(app.url):
        raise click.UsageError("--write-config: the store URL carries a password, which init does not write to "
                               "a file; write the config by hand")


def _write_new_config(app: AppContext, path: Path, key_file: str | None, created: str | None) -> Path:
    """A new config file for the store and provider init just used (paths absolute: they are
    read relative to the file, which may be anywhere)."""
    from ._configfile import new_config, write_atomically

    url = app.url
    db = sqlite_file(url)
    if db is not None:
        url = f"sqlite:///{db.resolve()}"
    settings = dict(app.config.provider.settings)
    if key_file is not None:
        settings["key_file"] = str(Path(key_file).resolve())
    if created is not None:
        settings["key_id"] = created
    try:
        write_atomically(path, new_config(url, app.config.provider.type, settings), exclusive=True)
    except OSError as exc:  # the store is initialised: say what is missing, and that init again is safe
        raise ConfigError("--write-config", f"the store is initialised, but {path} could not be written "
                                            f"({exc.strerror or exc}); run init --write-config again") from None
    return path


def _add_key_id(app: AppContext, created: str) -> tuple[Path | None, str]:
    """Add ``key_id`` to the config file in use if init wrote it: (that file, "") when done.

    (None, "") for a file the operator wrote (left alone) or no file; (None, why) when
    an init-written file could not take it.  The store is initialised either way: the
    key is then printed with the lines to add.
    """
    from ._configfile import is_ours, with_provider_setting, write_atomically

    found = app.config_path or discover_config()
    path = Path(found) if found is not None else None
    if path is None or not is_ours(path):
        return None, ""
    try:
        text = with_provider_setting(path.read_bytes().decode("utf-8"), "key_id", created, "aws-kms")
        if text is None:
            return None, f"{path} has no [provider] table of type aws-kms that init can add one line to"
        write_atomically(path, text)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: {getattr(exc, 'strerror', None) or exc}"
    return path, ""


def _created_kms_key(app: AppContext, described: dict[str, Any]) -> str | None:
    """The ARN of the KMS key ``init`` just created: the config named none, so it must be told."""
    settings = app.config.provider.settings
    if app.config.provider.type != "aws-kms" or settings.get("key_id"):
        return None
    arn = described.get("key_arn")
    return str(arn) if arn else None


@contextmanager
def _all_or_nothing(app: AppContext, key_file: str | None = None) -> Iterator[None]:
    """A failed init leaves no half-made SQLite file, nor a key file it created, behind.

    The store's rows are the library's to undo (one transaction, see
    :func:`nebula_credential.opening.open`), as is a key file the provider made
    under the init lock.  A ``--key-file`` made here is removed only with the
    new SQLite file it was made for; on another store it stays, and
    ``init --key-file`` again adopts it (another init may already have
    loaded it: removing it could leave that store without its key).
    """
    db = sqlite_file(app.url)
    new_db = db is not None and not db.exists()
    key = None
    if key_file is not None:
        key = Path(key_file)
    elif db is not None and new_db and app.config.provider.type == "local":
        key = local_key_file(app.config.provider.settings, db.resolve().parent)
    new_key = key is not None and not os.path.lexists(key)
    try:
        yield
    except CommitOutcomeUnknownError:
        raise  # the store may be initialised under the new key: keep both
    except BaseException:
        app.close()
        if db is not None and new_db:
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                path.unlink(missing_ok=True)
        if key is not None and new_key and new_db:
            # only beside a SQLite file this command created: on a shared store another
            # init may have loaded the new key file meanwhile, and a retry adopts it anyway
            key.unlink(missing_ok=True)
        raise


def _initialised(app: AppContext, key_file: str | None) -> dict[str, Any] | None:
    """The keyring's summary if the store and keyring already exist, else None (nothing is created).

    A store that already has its root key refuses ``--key-file`` naming a
    file that does not exist yet, before it is created: a new key cannot
    open that store, for a new keyring either.  An existing ``--key-file``
    is the key the summary is read with.
    """
    try:
        url = app.existing_url()
    except StoreError:
        return None  # no store file yet: init creates it
    store = open_store(url)
    try:
        with store.read() as tx:
            recorded = read_fingerprint(tx)
            if recorded is None:
                return None
            versions = tx.list_versions(app.keyring)
    finally:
        store.close()
    if key_file is not None and not os.path.lexists(key_file):
        raise ConfigError(
            "provider.key_file",
            f"{redact_url(url)} is already initialised under {recorded.type} root key "
            f"{recorded.root_key_id or '(unknown)'}, which a new key file {key_file} could not be; "
            f"name the store's own key file (or omit --key-file) for keyring {app.keyring}",
        )
    if not versions:
        return None  # a new keyring in an existing store
    provider = None
    if key_file is not None:
        provider = local_root(key_file)
    vault = app.vault(provider=provider)
    return {"keyring": vault.keyring_name, "active_version": vault.keys.active_version().version,
            "provider": vault.provider.describe(), "store": vault.redacted_url}


@click.command()
@click.option("--batch-size", type=click.IntRange(1, 100_000),
              help="Rows per batch (config: reencryption.batch_size).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Parallel workers; more than 1 needs PostgreSQL (SKIP LOCKED).")
@click.option("--priority", help="Comma-separated scope order, e.g. production,user,development.")
@click.option("--rate-limit", type=click.FloatRange(min=0), default=None,
              help="At most this many rows per second (0: unlimited).")
@click.option("--progress-interval", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between plain progress lines when stderr is not a terminal.")
@pass_app
def reencrypt(app: AppContext, batch_size: int | None, workers: int | None, priority: str | None,
              rate_limit: float | None, progress_interval: float) -> None:
    """Move every credential to the active key version (safe to interrupt and run again).

    \b
    Example: nebula-credential keys rotate && nebula-credential reencrypt --priority production,user
    """
    vault = app.vault()
    order = [s.strip() for s in priority.split(",") if s.strip()] if priority else None
    check_workers(vault.keys, workers or vault.config.reencryption.workers)
    vault.keys.active_version()  # none yet: the error says to initialise
    pending = vault.key_overview().pending_by_scope
    prio = order or vault.config.reencryption.priority
    plan = {s: pending[s] for s in scope_order(pending, prio)}
    stop = threading.Event()
    options = {"batch_size": batch_size, "priority": order, "rate_limit": rate_limit,
               "workers": workers, "should_stop": stop.is_set}
    with _stop_on_signals(stop):
        if is_tty() and not app.json:
            with rich_progress(err_console, plan) as advance:
                result = vault.reencrypt(progress=advance, **options)  # type: ignore[arg-type]
        else:
            plain = PlainProgress(sys.stderr, plan, interval=progress_interval)
            result = vault.reencrypt(progress=plain, **options)  # type: ignore[arg-type]
            plain.finish()
    emit(app, result.to_json(), lambda: console.print(
        f"re-encrypted {result.reencrypted} of {result.total} credentials "
        f"to v{result.active_version} in {result.seconds:.2f}s "
        f"({result.rows_per_second:,.0f} rows/s); {result.conflicts} left to concurrent "
        f"writers; {len(result.failures)} failed", markup=False))
    for f in result.failures[:20]:
        err_console.print(f"failed: {f.id} (v{f.key_version}): {f.reason}", markup=False)
    if len(result.failures) > 20:
        err_console.print(f"... and {len(result.failures) - 20} more (see --json or `audit list`)")
    if result.stopped:
        raise NebulaCredentialError(
            f"re-encryption stopped after {result.reencrypted} credential(s); "
            "run it again to resume")
    if not result.ok:
        raise NebulaCredentialError(
            f"{len(result.failures)} credential(s) could not be re-encrypted "
            "and were left unchanged")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM finish the batch in flight, then stop (a second SIGINT aborts)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.command()
@pass_app
def status(app: AppContext) -> None:
    """Versions, re-encryption progress and firing alerts."""
    vault = app.vault()
    data = vault_status(vault)

    def human() -> None:
        km = vault.keys
        console.print(versions_table(km.keyring, km.list(), km.credential_counts(), app.config.keys.max_key_age))
        r = data["reencryption"]
        console.print(f"active version: {data['active_version']}   re-encryption: "
                      f"{r['total'] - r['pending']}/{r['total']} ({r['progress']:.1%})")
        for a in data["alerts"]:
            console.print(Text.assemble(("ALERT", "red"), f" {a['name']} ({a['severity']}): {a['message']}"))

    emit(app, data, human)
