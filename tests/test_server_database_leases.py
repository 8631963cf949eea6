"""100 short leases expiring across two ``serve --maintain`` processes on one PostgreSQL store.

Each lease's user must be revoked exactly once: the role's revocation
statements append the user's name to a table in the target database before
dropping it (``DROP ROLE IF EXISTS``, so a second revocation would succeed and
be counted, not hidden by an error), and the test counts the rows.  Both
processes run the scheduler, so both race for every expired lease.
"""

from __future__ import annotations

import secrets
import time
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
    pgauth.admin(f"CREATE TABLE revocations (name text, at timestamptz); ALTER TABLE revocations OWNER TO {admin}",
                 database=database)
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
            revocation_statements=["INSERT INTO revocations VALUES ('{{name}}', clock_timestamp());",
                                   'DROP ROLE IF EXISTS "{{name}}";'])
        clients = [a.hvac(token), b.hvac(token)]
        issued = []
        started = time.monotonic()
        for i in range(LEASES):
            creds = clients[i % 2].secrets.database.generate_credentials("short", mount_point=m)
            assert creds["lease_duration"] <= TTL
            issued.append(creds["data"]["username"])
        issue_seconds = time.monotonic() - started
        assert len(set(issued)) == LEASES and len(pgauth.roles(issued[0][:6])) >= 1

        deadline = time.monotonic() + 120
        count: int = 0
        while time.monotonic() < deadline:
            count = int(pgauth.admin("SELECT count(*) FROM revocations", database=database)[0][0])
            if count >= LEASES:
                break
            time.sleep(0.5)
        all_revoked_after = time.monotonic() - started
        time.sleep(3 + 2)  # a few more scheduler passes on both: a late duplicate would show now
        rows = pgauth.admin("SELECT name, count(*) FROM revocations GROUP BY name", database=database)
        per_user = {str(name): int(n) for name, n in rows}
        left = [u for u in issued if pgauth.roles(u)]
    print(f"\nleases: {LEASES} issued in {issue_seconds:.1f}s, all revoked {all_revoked_after:.1f}s after the first "
          f"issue (TTL {TTL}s); revocations per user: max {max(per_user.values(), default=0)}")
    assert sorted(per_user) == sorted(issued), f"{count} revocations for {LEASES} leases"
    assert set(per_user.values()) == {1}, {u: n for u, n in per_user.items() if n != 1}
    assert left == []
