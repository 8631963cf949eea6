"""The rows that grant access are authenticated: a database writer cannot widen a token or a policy.

The finding: a token whose only policy allows ``sys/health`` got 403 on a
secret, then ``UPDATE server_tokens SET policies='["root"]'`` made the
running server answer 200 within seconds; a ``server_policies`` row giving
``default`` a ``path "*"`` rule was honoured.  Now every token, policy and
role row carries a MAC under a root-wrapped key: an edited row is refused
(403) by the running server within its cache bound, audited, counted in
``/metrics``, and named by ``doctor``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nebula_credential.rowmac import RowMac, canonical

from .server_proc import Server, sqlite_serve
from .test_metrics_alerts import promtool_rule_test

CACHE_BOUND = 2.5  # [server] cache_ttl (2 s) plus margin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "rowmac") as s:
        s.root = s.token("root")
        root = s.hvac(s.root)
        root.sys.create_or_update_acl_policy("health", 'path "sys/health" { capabilities = ["read"] }')
        root.sys.create_or_update_acl_policy("app", 'path "secret/data/app/*" { capabilities = ["read"] }')
        root.secrets.kv.v2.create_or_update_secret("secret1", secret={"v": "top"})
        root.secrets.kv.v2.create_or_update_secret("app/x", secret={"v": "app"})
        yield s


def _sql(server: Server, statement: str, *args: object) -> int:
    conn = sqlite3.connect(server.folder / "store.db", timeout=30)
    try:
        with conn:
            return conn.execute(statement, args).rowcount
    finally:
        conn.close()


def _status(server: Server, token: str, path: str) -> int:
    with server.http(token) as c:
        return c.get(f"/v1/{path}").status_code


def _accessor(server: Server, token: str) -> str:
    with server.http(token) as c:
        return str(c.get("/v1/auth/token/lookup-self").json()["data"]["accessor"])


def _doctor(server: Server) -> list[dict[str, str]]:
    out = server.cli("--json", "doctor")
    return [f for f in json.loads(out.stdout) if f["check"] == "rows"]


def test_token_made_root_in_the_database_is_refused(server: Server) -> None:
    token = server.token("health", "default")
    assert _status(server, token, "secret/data/secret1") == 403
    assert _status(server, token, "sys/health") == 200
    accessor = _accessor(server, token)
    assert _sql(server, "UPDATE server_tokens SET policies = ? WHERE accessor = ?", '["root"]', accessor) == 1
    time.sleep(CACHE_BOUND)
    assert _status(server, token, "secret/data/secret1") == 403  # was 200 before rows were MAC'd
    assert _status(server, token, "sys/health") in (200, 429)  # unauthenticated health still answers
    events = [json.loads(line) for line in server.cli("--json", "audit", "list", "--limit", "100").stdout.splitlines()]
    rejected = [e for e in events if e["action"] == "server.row_rejected.server_tokens"]
    assert rejected and rejected[-1]["details"]["row"] == accessor and rejected[-1]["outcome"] == "refused"
    assert "server_tokens accessor " + accessor in _doctor(server)[0]["message"]


def test_policy_edited_in_the_database_is_refused(server: Server) -> None:
    token = server.token("app")
    assert _status(server, token, "secret/data/app/x") == 200
    assert _status(server, token, "secret/data/secret1") == 403
    assert _sql(server, "UPDATE server_policies SET body = ? WHERE name = 'app'",
                'path "*" { capabilities = ["read", "sudo"] }') == 1
    time.sleep(CACHE_BOUND)
    assert _status(server, token, "secret/data/secret1") == 403  # was 200: the edited rule is not honoured
    assert _status(server, token, "secret/data/app/x") == 403    # the refused policy grants nothing at all
    # a row inserted for a built-in name is never read: default and root are code
    _sql(server, "INSERT INTO server_policies (name, body, updated_at, mac) VALUES ('default', ?, 0, 'x') "
                 "ON CONFLICT (name) DO UPDATE SET body = excluded.body", 'path "*" { capabilities = ["read"] }')
    other = server.token("health")
    time.sleep(CACHE_BOUND)
    assert _status(server, other, "secret/data/secret1") == 403
    assert any("server_policies 'app'" in f["message"] for f in _doctor(server))
    with server.http(server.root) as c:  # re-writing the policy through the API MACs it again
        assert c.put("/v1/sys/policies/acl/app",
                     json={"policy": 'path "secret/data/app/*" { capabilities = ["read"] }'}).status_code == 204
    assert _status(server, token, "secret/data/app/x") == 200


def test_parent_and_expiry_edits_are_refused(server: Server) -> None:
    root = server.hvac(server.root)
    root.sys.create_or_update_acl_policy("maker", 'path "auth/token/create" { capabilities = ["update"] }\n'
                                         'path "secret/data/*" { capabilities = ["read"] }')
    parent = root.auth.token.create(policies=["maker"], ttl="2s", renewable=False)["auth"]
    child = server.hvac(parent["client_token"]).auth.token.create(policies=["maker"], ttl="700h")["auth"]
    time.sleep(2.2)
    assert _status(server, child["client_token"], "secret/data/secret1") == 403
    # the writer cuts the child loose from its dead parent, and extends the parent
    _sql(server, "UPDATE server_tokens SET parent = NULL WHERE accessor = ?", child["accessor"])
    _sql(server, "UPDATE server_tokens SET expires_at = expires_at + 86400, max_expires_at = NULL "
                 "WHERE accessor = ?", parent["accessor"])
    time.sleep(CACHE_BOUND)
    assert _status(server, child["client_token"], "secret/data/secret1") == 403
    assert _status(server, parent["client_token"], "secret/data/secret1") == 403
    # a MAC copied from another row does not fit this one (the MAC binds the row's accessor)
    donor = root.auth.token.create(policies=["root"])["auth"]
    limited = root.auth.token.create(policies=["health"])["auth"]
    conn = sqlite3.connect(server.folder / "store.db", timeout=30)
    with conn:
        cols = "policies, mac, token_hash"
        policies, mac, _ = conn.execute(f"SELECT {cols} FROM server_tokens WHERE accessor = ?",
                                        (donor["accessor"],)).fetchone()
        conn.execute("UPDATE server_tokens SET policies = ?, mac = ? WHERE accessor = ?",
                     (policies, mac, limited["accessor"]))
    conn.close()
    time.sleep(CACHE_BOUND)
    assert _status(server, limited["client_token"], "secret/data/secret1") == 403


def test_rejections_are_counted_in_metrics(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import nebula_credential as nc
    from nebula_credential.metrics import render

    token = server.token("health")
    _sql(server, "UPDATE server_tokens SET display_name = 'edited' WHERE display_name LIKE 'cli%'")  # token create names it cli-<user>
    time.sleep(CACHE_BOUND)
    assert _status(server, token, "sys/health") in (200, 429)
    with server.http(token) as c:
        assert c.get("/v1/auth/token/lookup-self").status_code == 403
    monkeypatch.setenv("NEBULA_CREDENTIAL_MASTER_KEY_FILE", str(server.folder / "master.key"))
    vault = nc.open(server.db)
    try:
        text = render(vault)[0].decode()
    finally:
        vault.close()
    line = next(x for x in text.splitlines()
                if x.startswith('nebula_credential_rows_rejected_total{table="server_tokens"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_rows_rejected_alert_fires(tmp_path: Path) -> None:
    promtool_rule_test(tmp_path, "1m", [{
        "interval": "1m",
        "input_series": [{"series": 'nebula_credential_rows_rejected_total{instance="s",table="server_tokens"}',
                          "values": "0 0 0 1 1"}],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "NebulaCredentialRowsRejected", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "NebulaCredentialRowsRejected", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "instance": "s", "table": "server_tokens"},
                "exp_annotations": {
                    "summary": "Rows of server_tokens refused for a failed MAC",
                    "description": "A database writer edited a row that grants access; run nebula-credential "
                                   "doctor to name them",
                },
            }]},
        ],
    }])


def test_mac_binds_table_key_and_every_field() -> None:
    mac = RowMac.from_key(b"k" * 32)
    fields = {"policies": ["app"], "expires_at": 10.0, "num_uses": 3, "parent": None, "renewable": True}
    good = mac.mac("server_tokens", ("acc",), fields)
    assert mac.verify("server_tokens", ("acc",), fields, good)
    assert mac.verify("server_tokens", ("acc",), {**fields, "expires_at": 10, "num_uses": 3.0}, good)
    assert not mac.verify("server_tokens", ("other",), fields, good)
    assert not mac.verify("server_policies", ("acc",), fields, good)
    for change in ({"policies": ["root"]}, {"expires_at": 11.0}, {"num_uses": 4}, {"parent": "p"},
                   {"renewable": False}):
        assert not mac.verify("server_tokens", ("acc",), {**fields, **change}, good)
    assert not mac.verify("server_tokens", ("acc",), fields, "")
    assert canonical("t", ("a",), {"b": 1, "a": True}) == canonical("t", ("a",), {"a": True, "b": 1.0})


def test_provider_rotate_rewraps_the_row_key(vault: object, clock: object) -> None:
    from datetime import timedelta

    import nebula_credential as nc
    from nebula_credential.rootkeys import rotate_root_key
    from nebula_credential.rootwrapped import ROW_MAC_KEY
    from nebula_credential.server.tokens import TokenManager

    assert isinstance(vault, nc.Vault)
    tokens = TokenManager(vault.store, vault.provider, clock=clock, cache_ttl=timedelta(0))  # type: ignore[arg-type]
    token, _ = tokens.create(["app"])
    with vault.store.read() as tx:
        before = tx.get_meta(ROW_MAC_KEY.meta_key)
    assert before is not None
    rotate_root_key(vault.store, vault.provider, vault.audit)
    with vault.store.read() as tx:
        assert tx.get_meta(ROW_MAC_KEY.meta_key) != before  # rewrapped under the new root key
    fresh = TokenManager(vault.store, vault.provider, clock=clock, cache_ttl=timedelta(0))  # type: ignore[arg-type]
    assert fresh.lookup(token) is not None and fresh.rejected() == []


def test_rows_written_before_v7_are_refused(vault: object, clock: object) -> None:
    """No MAC (a row from before schema v7, or one a writer blanked): refused, never trusted."""
    from datetime import timedelta

    import nebula_credential as nc
    from nebula_credential.server.tokens import TokenManager

    assert isinstance(vault, nc.Vault)
    tokens = TokenManager(vault.store, vault.provider, clock=clock, cache_ttl=timedelta(0))  # type: ignore[arg-type]
    token, row = tokens.create(["app"])
    with vault.store.transaction() as tx:
        tx.token_set_expiry(row.accessor, row.expires_at, "")
    assert tokens.lookup(token) is None and tokens.rejected() == [row.accessor]
