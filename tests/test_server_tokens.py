"""Tokens on each store: keyed hashes only, TTL and max TTL, renewal, children, provider rotation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

import nebula_credential as nc
from nebula_credential.rootkeys import rotate_root_key
from nebula_credential.server.tokens import SERVER_KEY_META, TOKEN_PREFIX, TokenError, TokenManager

from .helpers import FakeClock, cli_env


@pytest.fixture
def tokens(vault: nc.Vault, clock: FakeClock) -> TokenManager:
    return TokenManager(vault.store, vault.provider, clock=clock, default_ttl=timedelta(hours=1),
                        max_ttl=timedelta(hours=4), cache_ttl=timedelta(0))


def test_only_a_keyed_hash_is_stored(tokens: TokenManager, vault: nc.Vault) -> None:
    token, row = tokens.create(["root"])
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    with vault.store.read() as tx:
        stored = tx.token_by_accessor(row.accessor)
        wrapped = tx.get_meta(SERVER_KEY_META)
    assert stored is not None and stored.token_hash == row.token_hash
    assert token not in repr(stored) and token[len(TOKEN_PREFIX):] not in stored.token_hash
    # keyed: the hash is not a plain digest of the token a database reader could recompute
    import hashlib

    assert stored.token_hash != hashlib.sha256(token.encode()).hexdigest()
    assert wrapped is not None and len(bytes.fromhex(wrapped)) > 32  # wrapped, not raw
    assert tokens.lookup(token) == stored
    assert tokens.lookup(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_ttl_expiry_and_renewal_capped_by_max_ttl(tokens: TokenManager, clock: FakeClock) -> None:
    token, row = tokens.create(["root"])
    clock.advance(minutes=59)
    assert tokens.lookup(token) is not None
    row = tokens.renew(row)  # another hour from now
    clock.advance(minutes=59)
    assert tokens.lookup(token) is not None
    renewed = tokens.renew(row, timedelta(days=10))
    assert renewed.max_expires_at is not None and renewed.expires_at == renewed.max_expires_at
    clock.advance(hours=4)
    assert tokens.lookup(token) is None


def test_children_never_exceed_their_parent(tokens: TokenManager) -> None:
    _, parent = tokens.create(["app", "ops"])
    with pytest.raises(TokenError, match="subset"):
        tokens.create(["root"], parent=parent)
    child_token, child = tokens.create(["app"], parent=parent, ttl=timedelta(days=30))
    assert child.expires_at is not None and parent.max_expires_at is not None
    assert child.expires_at <= parent.max_expires_at
    grandchild_token, _ = tokens.create(["app"], parent=child)
    assert tokens.revoke(parent.accessor) == 3
    assert tokens.lookup(child_token) is None and tokens.lookup(grandchild_token) is None


def test_bad_requests_are_typed(tokens: TokenManager) -> None:
    with pytest.raises(TokenError):
        tokens.create([])
    with pytest.raises(nc.NebulaCredentialError):
        tokens.create(["Bad Name!"])
    assert tokens.revoke("no-such-accessor") == 0


def test_tokens_survive_a_root_key_rotation(tokens: TokenManager, vault: nc.Vault, clock: FakeClock) -> None:
    token, _ = tokens.create(["root"])
    with vault.store.read() as tx:
        before = tx.get_meta(SERVER_KEY_META)
    rotate_root_key(vault.store, vault.provider, vault.audit)
    with vault.store.read() as tx:
        assert tx.get_meta(SERVER_KEY_META) != before  # rewrapped under the new root key
    fresh = TokenManager(vault.store, vault.provider, clock=clock, cache_ttl=timedelta(0))
    assert fresh.lookup(token) is not None


def test_tokens_are_redacted_from_logs(tokens: TokenManager) -> None:
    from nebula_credential.logredact import redact

    token, _ = tokens.create(["root"])
    assert token not in redact(f"lookup failed for {token} at /v1/secret")
    assert token[len(TOKEN_PREFIX):] not in redact(f"header X={token};")


def test_put_check_and_set_on_each_store(vault: nc.Vault) -> None:
    """The facade's cas (what KV v2's options.cas maps onto), on SQLite and PostgreSQL."""
    from nebula_credential.exceptions import CheckAndSetError

    assert vault.put("cas", {"n": 1}, expected_revision=0) == 1
    with pytest.raises(CheckAndSetError, match="expected revision 0, stored revision is 1"):
        vault.put("cas", {"n": 2}, expected_revision=0)
    assert vault.put("cas", {"n": 3}, expected_revision=1) == 2
    with pytest.raises(CheckAndSetError):
        vault.put("cas", {"n": 4}, expected_revision=1)
    with pytest.raises(CheckAndSetError):
        vault.put("absent", {"n": 1}, expected_revision=3)
    vault.keys.rotate()  # a write under the new version is still checked against the revision
    assert vault.put("cas", {"n": 5}, expected_revision=2) == 3
    assert vault.get("cas") == {"n": 5}


def test_workers_starting_on_a_new_store_share_one_server_key(vault: nc.Vault) -> None:
    """serve --workers N on a new store: every worker ends up with the same key, so no token is orphaned."""
    import threading

    from nebula_credential.server.tokens import ensure_server_key

    barrier = threading.Barrier(6)
    seen: list[bytes] = []

    def first_use() -> None:
        barrier.wait()
        with vault.store.transaction() as tx:
            seen.append(ensure_server_key(tx, vault.provider))

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with vault.store.read() as tx:
        stored = bytes.fromhex(tx.get_meta(SERVER_KEY_META) or "")
    assert len(seen) == 6 and set(seen) == {stored}


def test_root_rotation_rewraps_the_server_key_without_importing_the_server(tmp_path: Path) -> None:
    """``provider rotate`` walks the registry of root-wrapped secrets: the HTTP server is never imported."""
    script = textwrap.dedent("""
        import sys
        import nebula_credential as nc
        from nebula_credential.rootkeys import rotate_root_key
        from nebula_credential.rootwrapped import SERVER_TOKEN_KEY
        v = nc.open(sys.argv[1], create=True)
        with v.store.transaction() as tx:
            before = SERVER_TOKEN_KEY.ensure(tx, v.provider).hex()
        rotate_root_key(v.store, v.provider, v.audit)
        with v.store.read() as tx:
            assert tx.get_meta(SERVER_TOKEN_KEY.meta_key) not in (None, before)
        print(sorted(m for m in sys.modules if m.startswith("nebula_credential.server")))
    """)
    out = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path / 'r.db'}"], cwd=tmp_path,
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_accessors_never_look_like_a_cli_flag() -> None:
    """An accessor starting with ``-`` made ``bao token lookup -accessor X`` read it as a flag
    (about one accessor in 64 with base64url); Vault's are letters and digits."""
    import re

    from nebula_credential.server.tokens import ACCESSOR_LENGTH, new_accessor

    made = {new_accessor() for _ in range(5000)}
    assert len(made) == 5000
    assert all(re.fullmatch(rf"[A-Za-z0-9]{{{ACCESSOR_LENGTH}}}", a) for a in made)
