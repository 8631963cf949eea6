"""The public surface: a curated ``__all__`` with the seed's names."""

from __future__ import annotations

import nebula_credential as nc

SEED_NAMES = {
    "KeyManager", "KeyManagementConfig", "KeyVersion", "KeyStatus", "VersionedKey", "EncryptedCredential",
    "PeriodicRotation", "BeforeExpiryRotation", "ScheduledRotation", "ManualRotation", "KeyRetentionPolicy",
    "KeyMetrics", "NebulaCredentialError",
}
ERRORS = {"DecryptionError", "EnvelopeFormatError", "KeyNotFoundError", "KeyRevokedError", "PolicyViolationError",
          "ProviderError", "ProviderUnavailableError", "ConfigError"}


def test_all_is_curated_and_importable() -> None:
    assert SEED_NAMES | ERRORS | {"open", "Vault"} <= set(nc.__all__)
    for name in nc.__all__:
        assert hasattr(nc, name), name
    assert len(nc.__all__) == len(set(nc.__all__))


def test_single_exception_root() -> None:
    for name in ERRORS:
        assert issubclass(getattr(nc, name), nc.NebulaCredentialError)
    assert not issubclass(nc.NebulaCredentialError, KeyError)


def test_readme_python_example(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    km = nc.KeyManager.ephemeral()
    blob = km.encrypt(b"secret", aad=b"ctx")
    assert km.decrypt(blob, aad=b"ctx") == b"secret"
    km.rotate()
    blob = km.re_encrypt(blob, aad=b"ctx")
    assert blob[4:8] == b"\x00\x00\x00\x02"
    vault = nc.open("sqlite:///creds.db", create=True)
    vault.put("github", {"token": "..."}, scope="production")
    assert vault.get("github") == {"token": "..."}
    vault.keys.rotate()
    vault.keys.list()
    vault.reencrypt()
    vault.maintain()
    vault.close()


def test_errors_are_one_list() -> None:
    """``nc`` re-exports exactly ``exceptions.__all__``, and that list names every error class the
    module defines (``CheckAndSetError``, raised by ``Vault.put``, and ``BackupError`` were missing)."""
    from nebula_credential import exceptions

    defined = {name for name, obj in vars(exceptions).items()
               if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == exceptions.__name__}
    assert set(exceptions.__all__) == defined
    exported_errors = {name for name in nc.__all__
                       if isinstance(getattr(nc, name), type) and issubclass(getattr(nc, name), BaseException)}
    assert exported_errors == set(exceptions.__all__)
    for name in exceptions.__all__:
        assert getattr(nc, name) is getattr(exceptions, name)
    assert nc.CheckAndSetError is exceptions.CheckAndSetError
