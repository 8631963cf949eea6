"""Tamper matrix on stored credentials: every manipulation is refused with a typed error."""

from __future__ import annotations

import pytest

import nebula_credential as nc
from nebula_credential.models import EncryptedCredential


def _row(vault: nc.Vault, cid: str, keyring: str | None = None) -> EncryptedCredential:
    with vault.store.read() as tx:
        row = tx.get_credential(keyring or vault.keyring_name, cid)
    assert row is not None
    return row


def _overwrite(vault: nc.Vault, cid: str, envelope: bytes, version: int, keyring: str | None = None) -> None:
    kr = keyring or vault.keyring_name
    row = _row(vault, cid, kr)
    with vault.store.transaction() as tx:
        assert tx.cas_update_envelopes(kr, [(cid, row.revision, version, envelope)]) == 1


@pytest.fixture
def populated(vault: nc.Vault) -> nc.Vault:
    vault.put("github", {"token": "ghp_real"}, scope="production")
    vault.put("gitlab", {"token": "glpat_other"}, scope="production")
    vault.put("dev-github", {"token": "ghp_dev"}, scope="development")
    return vault


def test_every_flipped_bit_is_refused(populated: nc.Vault) -> None:
    good = _row(populated, "github").envelope
    for i in range(len(good)):
        for bit in (0, 7):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            _overwrite(populated, "github", bytes(bad), 1)
            with pytest.raises((nc.DecryptionError, nc.EnvelopeFormatError, nc.KeyNotFoundError)):
                populated.get("github")
    _overwrite(populated, "github", good, 1)
    assert populated.get("github") == {"token": "ghp_real"}


def test_header_with_edited_version_is_refused(populated: nc.Vault) -> None:
    populated.keys.rotate()
    good = _row(populated, "github").envelope
    edited = good[:4] + (2).to_bytes(4, "big") + good[8:]
    _overwrite(populated, "github", edited, 2)
    with pytest.raises(nc.DecryptionError):
        populated.get("github")


def test_envelope_moved_to_another_id_scope_or_keyring_is_refused(populated: nc.Vault) -> None:
    stolen = _row(populated, "github").envelope
    _overwrite(populated, "gitlab", stolen, 1)  # another id
    with pytest.raises(nc.DecryptionError):
        populated.get("gitlab")
    _overwrite(populated, "dev-github", stolen, 1)  # another scope
    with pytest.raises(nc.DecryptionError):
        populated.get("dev-github")
    other = populated.keyring("tenant-b")
    other.keys.initialize()
    other.put("github", {"token": "tenant-b"}, scope="production")
    _overwrite(populated, "github", _row(other, "github", "tenant-b").envelope, 1)  # another keyring
    with pytest.raises(nc.DecryptionError):
        populated.get("github")


def test_scope_changed_in_the_row_is_refused(populated: nc.Vault) -> None:
    with populated.store.transaction() as tx:
        row = tx.get_credential(populated.keyring_name, "github")
        assert row is not None
        tx.put_credential(populated.keyring_name, "github", "development", row.key_version, row.envelope,
                          row.metadata, populated.clock())
    with pytest.raises(nc.DecryptionError):
        populated.get("github")


def test_truncated_and_random_blobs(populated: nc.Vault) -> None:
    good = _row(populated, "github").envelope
    for cut in (0, 3, 8, 19, 20, 35, len(good) - 1):
        _overwrite(populated, "github", good[:cut], 1)
        with pytest.raises((nc.EnvelopeFormatError, nc.DecryptionError)):
            populated.get("github")
    import os

    _overwrite(populated, "github", os.urandom(80), 1)
    with pytest.raises(nc.EnvelopeFormatError):
        populated.get("github")


def test_unknown_version_in_header(populated: nc.Vault) -> None:
    good = _row(populated, "github").envelope
    _overwrite(populated, "github", good[:4] + (99).to_bytes(4, "big") + good[8:], 99)
    with pytest.raises(nc.KeyNotFoundError, match="version 99"):
        populated.get("github")


def test_garbage_header_naming_a_huge_version_is_a_format_error(populated: nc.Vault) -> None:
    """Random bytes name a key version up to 2^32-1; PostgreSQL's INTEGER audit column
    overflowed on it (a StoreError, half the time in test_truncated_and_random_blobs)."""
    _overwrite(populated, "github", b"XX\x01\x01\xff\xff\xff\xff" + bytes(72), 1)
    with pytest.raises(nc.EnvelopeFormatError):
        populated.get("github")
    (event,) = [r for r in populated.audit.rows() if r.action == "decrypt.failed"]
    # a blob that is no envelope names no version: the row's column (1) is what the event records
    assert event.credential_id == "github" and event.key_version == 1
