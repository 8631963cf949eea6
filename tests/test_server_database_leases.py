"""100 short leases expiring across two ``serve --maintain`` processes on one PostgreSQL store.

Each lease's user must be revoked exactly once: the audit trail holds one
successful ``lease.revoke`` event per lease (the revocation statement is
``DROP ROLE IF EXISTS``, so a second revocation would succeed and be
recorded, not hidden by an error), and no user is left in PostgreSQL.  Both
processes run the scheduler, so both race for every expired lease.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from .fixtures_pgauth import PasswordCluster
from .helpers import cli_env
from .server_proc import serve

LEASES = 100
TTL = 6


def test_hundred_leases_expire_across_two_serves_each_revoked_once(
        tmp_path: Path, postgres_store_url_factory: Callable[[], str], pgauth: PasswordCluster) -> None:
    tag = secrets.token_hex(4)
    admin, admin_pw, database = f"adm_{tag}", "Adm-" + secrets.token_hex(12), pgauth.new_database()
    pgauth.admin(f"CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{admin_pw}'")
    pgauth.admin(f'ALTER DATABASE "{database}" OWNER TO {admin}')
    config = tmp_path / "server.toml"
    config.write_text('[server]\ncache_ttl = "0s"\n')
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(tmp_path / "master.key"), NEBULA_CREDENTIAL_CONFIG=str(config))
    url = postgres_store_url_factory()
    with ExitStack() as stack:
        a = stack.enter_context(serve(tmp_path, url, "--maintain", "--interval", "1s", env=env))
        b = stack.enter_context(serve(tmp_path, url, "--maintain", "--interval", "1s", env=env, init=False))
        token = a.token("root")
        root = a.hvac(token)
        m = f"db{tag}"
        root.sys.enable_secrets_engine("database", path=m)
        stack.callback(lambda: print(a.log()[-4000:], b.log()[-4000:]))  # shown when the test fails
        root.secrets.database.configure(
            name="pg", plugin_name="postgresql-database-plugin", allowed_roles=["*"],
            connection_url=pgauth.template_url(database), username=admin, password=admin_pw, mount_point=m)
        root.secrets.database.create_role(
            "short", db_name="pg", mount_point=m, default_ttl=TTL, max_ttl=TTL,
            creation_statements=["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';"],
            revocation_statements=['DROP ROLE IF EXISTS "{{name}}";'])
        # a token revoked through one process takes its leases issued through the other with it
        child = root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]
        held = a.hvac(child).secrets.database.generate_credentials("short", mount_point=m)
        assert pgauth.can_login(held["data"]["username"], held["data"]["password"], database)
        b.hvac(token).auth.token.revoke(child)
        assert not pgauth.can_login(held["data"]["username"], held["data"]["password"], database)
        assert pgauth.roles(held["data"]["username"]) == []
        clients = [a.hvac(token), b.hvac(token)]
        issued: dict[str, str] = {}  # lease id -> user
        started = time.monotonic()
        for i in range(LEASES):
            creds = clients[i % 2].secrets.database.generate_credentials("short", mount_point=m)
            assert creds["lease_duration"] <= TTL
            issued[creds["lease_id"]] = creds["data"]["username"]
        issue_seconds = time.monotonic() - started
        assert len(set(issued.values())) == LEASES

        def left() -> list[str]:
            names = {str(r[0]) for r in pgauth.admin("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")}
            return [u for u in issued.values() if u in names]

        deadline = time.monotonic() + 120
        while left() and time.monotonic() < deadline:
            time.sleep(0.5)
        all_revoked_after = time.monotonic() - started
        time.sleep(5)  # a few more scheduler passes on both: a late duplicate would show now
        remaining = left()
        out = a.cli("--json", "audit", "list", "--all-keyrings", "--action", "lease.revoke", "--limit", "100000")
        assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    revoked = Counter(e["details"].get("lease") for e in events if e.get("outcome") == "ok")
    ours = {lid: revoked.get(lid, 0) for lid in issued}
    print(f"\nleases: {LEASES} issued in {issue_seconds:.1f}s over two serves, all users gone "
          f"{all_revoked_after:.1f}s after the first issue (TTL {TTL}s); successful revocations per lease: "
          f"{sorted(Counter(ours.values()).items())}")
    assert remaining == []
    assert set(ours.values()) == {1}, {lid: n for lid, n in ours.items() if n != 1}
