"""Differential test: the same mount requests to a real OpenBao (``bao server -dev``) and to ``serve``.

Each step sends one request to both and compares the status code and, for a
JSON answer, the shape of ``data`` (field names and value types; values too
where they are ours to choose the same).  Deliberate differences, left out of
the comparison:

- OpenBao lists ``cubbyhole/`` and ``identity/``, engines this server does not have;
- accessors, uuids, ``running_plugin_version`` and request ids differ by nature;
- mount paths: we accept 1-4 segments of the name rule (letters, digits, ``.``, ``_``, ``-``),
  OpenBao accepts more (a space, say); no step here uses a path outside the rule;
- upgrading a KV v1 mount to v2 by ``tune`` is refused here (400), OpenBao upgrades it in place;
- ``sys/internal/ui/mounts`` without a token is 403 here; OpenBao lists the mounts marked
  ``listing_visibility = unauth`` (none by default) and answers 200 with empty lists;
- mounts from our configuration file cannot be tuned or disabled over HTTP (400 saying so).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .fixtures_transit import OpenBao
from .server_proc import Server, sqlite_serve

ONLY_OPENBAO = {"cubbyhole/", "identity/"}


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-diff-mounts") as s:
        yield s


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k not in ONLY_OPENBAO}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


class Pair:
    def __init__(self, ours: Server, theirs: OpenBao) -> None:
        self.a = httpx.Client(base_url=ours.url, headers={"X-Vault-Token": ours.token("root")}, timeout=30)
        ctx = ssl.create_default_context(cafile=str(theirs.ca_cert))
        self.b = httpx.Client(base_url=theirs.url, headers={"X-Vault-Token": theirs.root_token}, verify=ctx,
                              timeout=30)
        self.steps = 0

    def tokens(self, policies: list[str]) -> tuple[str, str]:
        """A token with ``policies`` (and no default policy) on each side."""
        body = {"policies": policies, "no_default_policy": True, "ttl": "1h"}
        out = [c.post("/v1/auth/token/create", json=body) for c in (self.a, self.b)]
        assert [r.status_code for r in out] == [200, 200], [r.text for r in out]
        return out[0].json()["auth"]["client_token"], out[1].json()["auth"]["client_token"]

    def step(self, method: str, path: str, body: Any = None, *, status: int, same: tuple[str, ...] = (),
             shape_of: str | None = "data", tokens: tuple[str, str] | None = None) -> tuple[Any, Any]:
        """Send to both; the status must be ``status`` on both, the shapes (and the ``same`` fields) equal."""
        answers = []
        for i, client in enumerate((self.a, self.b)):
            headers = {"X-Vault-Token": tokens[i]} if tokens else None
            r = client.request(method, "/v1/" + path, json=body, headers=headers)
            answers.append(r)
        ra, rb = answers
        assert (ra.status_code, rb.status_code) == (status, status), (method, path, ra.text, rb.text)
        ja = ra.json() if ra.content else None
        jb = rb.json() if rb.content else None
        if status >= 400:
            assert isinstance(ja["errors"], list) and isinstance(jb["errors"], list)
        elif ja is not None and shape_of is not None:
            da, db = ja[shape_of], jb[shape_of]
            assert shape(da) == shape(db), (method, path, shape(da), shape(db))
            for name in same:
                assert da.get(name) == db.get(name), (method, path, name, da.get(name), db.get(name))
        self.steps += 1
        return ja, jb


@pytest.fixture(scope="module")
def pair(ours: Server, openbao: OpenBao) -> Pair:
    return Pair(ours, openbao)


def listed_paths(answer: dict[str, Any]) -> set[str]:
    return set(answer["data"]) - ONLY_OPENBAO


def test_mounts_differential(pair: Pair) -> None:
    p = pair
    a, b = p.step("GET", "sys/mounts", status=200, shape_of=None)
    assert shape(a["data"]["secret/"]) == shape(b["data"]["secret/"])
    assert shape(a["data"]["sys/"]) == shape(b["data"]["sys/"])
    assert a["data"]["secret/"]["options"] == b["data"]["secret/"]["options"] == {"version": "2"}
    # enable
    p.step("POST", "sys/mounts/dkv1", {"type": "kv", "description": "one"}, status=204)
    p.step("POST", "sys/mounts/dkv2", {"type": "kv", "options": {"version": "2"}}, status=204)
    p.step("POST", "sys/mounts/dkv3", {"type": "kv-v2"}, status=204)
    p.step("POST", "sys/mounts/dkvx", {"type": "kv", "options": {"version": "1"}}, status=204)
    p.step("POST", "sys/mounts/dtr", {"type": "transit"}, status=204)
    p.step("POST", "sys/mounts/team/kv", {"type": "kv"}, status=204)
    a, b = p.step("GET", "sys/mounts", status=200, shape_of=None)
    assert listed_paths(a) == listed_paths(b)
    for path in ("dkv1/", "dkv2/", "dkv3/", "dkvx/", "dtr/", "team/kv/"):
        assert shape(a["data"][path]) == shape(b["data"][path]), path
        for name in ("type", "options", "description", "config", "local", "seal_wrap"):
            assert a["data"][path][name] == b["data"][path][name], (path, name)
    # refusals
    p.step("POST", "sys/mounts/dkv1", {"type": "kv"}, status=400)
    p.step("POST", "sys/mounts/dkv1/sub", {"type": "kv"}, status=400)
    p.step("POST", "sys/mounts/team", {"type": "kv"}, status=400)
    p.step("POST", "sys/mounts/sys", {"type": "kv"}, status=400)
    p.step("POST", "sys/mounts/auth", {"type": "kv"}, status=400)
    p.step("POST", "sys/mounts/nope", {"type": "nope"}, status=400)
    p.step("POST", "sys/mounts/notype", {}, status=400)
    p.step("POST", "sys/mounts/v3", {"type": "kv", "options": {"version": "3"}}, status=400)
    # read one mount, tune
    p.step("GET", "sys/mounts/dkv1", status=200, same=("type", "options", "description", "config"))
    p.step("GET", "sys/mounts/absent", status=400)
    p.step("GET", "sys/mounts/dkv2/tune", status=200,
           same=("default_lease_ttl", "max_lease_ttl", "options", "description", "force_no_cache"))
    p.step("POST", "sys/mounts/dkv1/tune", {"default_lease_ttl": "1h", "max_lease_ttl": "2h", "description": "t"},
           status=204)
    p.step("GET", "sys/mounts/dkv1/tune", status=200, same=("default_lease_ttl", "max_lease_ttl", "description"))
    p.step("GET", "sys/mounts/dkv1", status=200, same=("config", "description"))
    p.step("POST", "sys/mounts/dkv1/tune", {"default_lease_ttl": "3h"}, status=400)
    p.step("POST", "sys/mounts/dkv1/tune", {"max_lease_ttl": "bogus"}, status=400)
    p.step("POST", "sys/mounts/absent/tune", {"description": "x"}, status=400)
    p.step("GET", "sys/mounts/absent/tune", status=400)
    p.step("POST", "sys/mounts/dkv2/tune", {"options": {"version": "1"}}, status=400)
    p.step("POST", "sys/mounts/dkv2/tune", {"options": {"max_versions": "3"}}, status=204)
    p.step("GET", "sys/mounts/dkv2/tune", status=200, same=("options",))
    # KV version 1
    p.step("PUT", "dkv1/app/db", {"user": "u", "n": 1}, status=204)
    p.step("POST", "dkv1/app/nested/x", {"k": "v"}, status=204)
    a, b = p.step("GET", "dkv1/app/db", status=200)
    assert a["data"] == b["data"] and a["lease_duration"] == b["lease_duration"] == 3600
    p.step("PUT", "dkvx/ttl", {"k": "v", "ttl": "30m"}, status=204)
    a, b = p.step("GET", "dkvx/ttl", status=200)
    assert a["lease_duration"] == b["lease_duration"] == 1800
    a, b = p.step("LIST", "dkv1/app", status=200)
    assert a["data"] == b["data"] == {"keys": ["db", "nested/"]}
    a, b = p.step("LIST", "dkv1/", status=200)
    assert a["data"] == b["data"]
    a, b = p.step("GET", "dkv1/app?list=true", status=200)
    assert a["data"] == b["data"]
    p.step("GET", "dkv1/missing", status=404)
    p.step("LIST", "dkv1/missing", status=404)
    p.step("PUT", "dkv1/empty", {}, status=400)
    p.step("DELETE", "dkv1/app/db", status=204)
    p.step("DELETE", "dkv1/missing", status=204)
    p.step("GET", "dkv1/app/db", status=404)
    p.step("PUT", "team/kv/a", {"x": "y"}, status=204)
    p.step("GET", "team/kv/a", status=200)
    # KV version 2 on a runtime mount
    p.step("POST", "dkv2/data/s", {"data": {"a": "b"}}, status=200, same=("version",))
    a, b = p.step("GET", "dkv2/data/s", status=200)
    assert a["data"]["data"] == b["data"]["data"]
    # the CLI's preflight
    p.step("GET", "sys/internal/ui/mounts/dkv1/x", status=200, same=("type", "options", "path"))
    p.step("GET", "sys/internal/ui/mounts/dkv2/x", status=200, same=("type", "options", "path"))
    p.step("GET", "sys/internal/ui/mounts/team/kv/a", status=200, same=("type", "options", "path"))
    p.step("GET", "sys/internal/ui/mounts/nowhere", status=403)
    a, b = p.step("GET", "sys/internal/ui/mounts", status=200, shape_of=None)
    assert set(a["data"]) == set(b["data"]) == {"auth", "secret"}
    assert set(a["data"]["secret"]) == set(b["data"]["secret"]) - ONLY_OPENBAO
    p.step("GET", "sys/internal/ui/mounts/sys/x", status=200, same=("type", "path"))
    # a token that may read one mount only learns about that one
    policy = 'path "dkv2/data/*" { capabilities = ["read"] }'
    p.step("PUT", "sys/policies/acl/dkv2-reader", {"policy": policy}, status=204)
    limited = p.tokens(["dkv2-reader"])
    a, b = p.step("GET", "sys/internal/ui/mounts", status=200, shape_of=None, tokens=limited)
    assert set(a["data"]["secret"]) == set(b["data"]["secret"]) == {"dkv2/"} and a["data"]["auth"] == {}
    p.step("GET", "sys/internal/ui/mounts/dkv2/x", status=200, same=("type", "options", "path"), tokens=limited)
    p.step("GET", "sys/internal/ui/mounts/dkv1/x", status=403, tokens=limited)
    p.step("GET", "sys/mounts", status=403, tokens=limited)
    p.step("POST", "sys/mounts/notallowed", {"type": "kv"}, status=403, tokens=limited)
    # auth methods
    a, b = p.step("GET", "sys/auth", status=200, shape_of=None)
    assert shape(a["data"]["token/"]) == shape(b["data"]["token/"])
    assert a["data"]["token/"]["config"] == b["data"]["token/"]["config"]
    p.step("POST", "sys/auth/nope", {"type": "nope"}, status=400)
    p.step("DELETE", "sys/auth/token", status=400)
    p.step("DELETE", "sys/auth/never", status=204)
    # disable: the data goes with the mount
    p.step("DELETE", "sys/mounts/dkv1", status=204)
    p.step("GET", "dkv1/app/nested/x", status=404)
    p.step("DELETE", "sys/mounts/sys", status=400)
    p.step("DELETE", "sys/mounts/never", status=204)
    p.step("POST", "sys/mounts/dkv1", {"type": "kv"}, status=204)
    p.step("GET", "dkv1/app/nested/x", status=404)
    for path in ("dkv1", "dkv2", "dkv3", "dkvx", "dtr", "team/kv"):
        p.step("DELETE", f"sys/mounts/{path}", status=204)
    a, b = p.step("GET", "sys/mounts", status=200, shape_of=None)
    assert listed_paths(a) == listed_paths(b)
    assert p.steps >= 30
