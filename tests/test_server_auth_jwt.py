"""JWT login against ``serve``: tokens signed here with RSA, EC and Ed25519 keys, the keys served from a
JWKS endpoint over HTTPS under a test CA; every refused token is a 4xx and audited."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .azure_server import make_tls
from .server_proc import Server, sqlite_serve

ISSUER = "https://issuer.test"
AUDIENCE = "nebula"
POLICY = 'path "secret/data/ci/*" { capabilities = ["read"] }'


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.jwks: list[dict[str, Any]] = [
            {**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "r1", "use": "sig", "alg": "RS256"},
            {**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "e1", "use": "sig", "alg": "ES256"},
            {**json.loads(OKPAlgorithm.to_jwk(self.ed.public_key())), "kid": "o1", "use": "sig", "alg": "EdDSA"},
        ]
        self.fetches = 0


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[tuple[str, str]]:
    folder = tmp_path_factory.mktemp("jwks")
    tls = make_tls(folder)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/.well-known/openid-configuration"):
                base = f"https://127.0.0.1:{self.server.server_address[1]}"
                body = json.dumps({"issuer": ISSUER, "jwks_uri": f"{base}/jwks.json"}).encode()
            else:
                keys.fetches += 1
                body = json.dumps({"keys": keys.jwks}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/jwks.json", Path(tls.ca_cert).read_text()
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with sqlite_serve(tmp_path_factory, "serve-jwt") as s:
        s.enable_auth("approle", "userpass", "jwt")  # as in Vault: enabled before first use
        yield s


@pytest.fixture(scope="module")
def root(server: Server, jwks: tuple[str, str]) -> hvac.Client:
    client = server.hvac(server.token("root"))
    client.sys.create_or_update_policy("ci", POLICY)
    url, ca = jwks
    client.auth.jwt.configure(jwks_url=url, jwks_ca_pem=ca, bound_issuer=ISSUER)
    client.auth.jwt.create_role("ci", user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                                bound_audiences=[AUDIENCE], bound_claims={"team": ["infra", "sec"]},
                                claim_mappings={"team": "team", "repo": "repository"},
                                token_policies=["ci"], token_ttl="15m")
    client.auth.jwt.create_role("globbed", user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                                bound_audiences=[AUDIENCE], bound_claims={"repo": "org/*"},
                                bound_claims_type="glob", token_policies=["ci"])
    return client


def test_roles_and_config_read_back(root: hvac.Client) -> None:
    role = root.auth.jwt.read_role("ci")["data"]
    assert role["bound_audiences"] == [AUDIENCE] and role["bound_claims"] == {"team": ["infra", "sec"]}
    assert role["user_claim"] == "sub" and role["token_policies"] == ["ci"] and role["token_ttl"] == 900
    assert role["clock_skew_leeway"] == 0 and role["bound_claims_type"] == "string"  # 0: Vault's default (60 s)
    assert sorted(root.auth.jwt.list_roles()["data"]["keys"]) == ["ci", "globbed"]
    assert root.auth.jwt.read_config()["data"]["bound_issuer"] == ISSUER


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "repo:org/app", "team": "infra", "repo": "org/app",
            "iat": now, "nbf": now - 5, "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(keys: Keys, kind: str = "rsa", **over: Any) -> str:
    key, alg, kid = {"rsa": (keys.rsa, "RS256", "r1"), "ec": (keys.ec, "ES256", "e1"),
                     "ed": (keys.ed, "EdDSA", "o1")}[kind]
    return jwt.encode(claims(**over), key, algorithm=alg, headers={"kid": kid})


def login(server: Server, token: str, role: str = "ci") -> Any:
    with server.http() as http:
        return http.post("/v1/auth/jwt/login", json={"role": role, "jwt": token})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_login_with_each_key_type(root: hvac.Client, server: Server, keys: Keys, kind: str) -> None:
    answer = server.hvac().auth.jwt.jwt_login(role="ci", jwt=sign(keys, kind))
    auth = answer["auth"]
    assert auth["policies"] == ["ci", "default"] and auth["lease_duration"] == 900
    assert auth["metadata"] == {"role": "ci", "team": "infra", "repository": "org/app"}


def test_glob_bound_claims(root: hvac.Client, server: Server, keys: Keys) -> None:
    assert login(server, sign(keys, repo="org/other"), "globbed").status_code == 200
    assert login(server, sign(keys, repo="elsewhere/app"), "globbed").status_code == 400


def _refusals(keys: Keys, public_pem: bytes) -> dict[str, str]:
    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "r1"}).encode())
    body = b64(json.dumps(claims()).encode())
    forged = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return {
        "expired": sign(keys, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not yet valid": sign(keys, nbf=now + 3600),
        "wrong audience": sign(keys, aud="someone-else"),
        "wrong issuer": sign(keys, iss="https://evil.test"),
        "bound claims mismatch": sign(keys, team="marketing"),
        "wrong kid": jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "unknown"}),
        "alg none": f"{none_header}.{body}.",
        "HS256 with the public key": f"{header}.{body}.{b64(forged)}",
        "signed by another key": jwt.encode(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                            algorithm="RS256", headers={"kid": "r1"}),
        "garbage": "not.a.jwt",
    }


def test_refused_tokens_are_4xx_and_audited(root: hvac.Client, server: Server, keys: Keys) -> None:
    public_pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    for reason, token in _refusals(keys, public_pem).items():
        answer = login(server, token)
        assert 400 <= answer.status_code < 500, (reason, answer.status_code, answer.text)
        assert "errors" in answer.json(), reason
    out = server.cli("--json", "audit", "list", "--limit", "100000")
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    logins = [e for e in events if e["action"] == "auth.login" and e["details"].get("method") == "jwt"]
    assert sum(1 for e in logins if e["outcome"] == "error") >= 10
    assert all(e["details"].get("role") == "ci" or e["details"].get("role") == "globbed" for e in logins)
    text = json.dumps(logins)
    assert "eyJ" not in text  # no JWT in the trail


def test_unknown_kid_refreshes_the_jwks(root: hvac.Client, server: Server, keys: Keys) -> None:
    assert login(server, sign(keys)).status_code == 200  # the set is cached
    fresh = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys.jwks.append({**json.loads(RSAAlgorithm.to_jwk(fresh.public_key())), "kid": "r2", "alg": "RS256"})
    time.sleep(1.2)  # past the refresh cooldown
    before = keys.fetches
    token = jwt.encode(claims(), fresh, algorithm="RS256", headers={"kid": "r2"})
    assert login(server, token).status_code == 200
    assert keys.fetches == before + 1


def test_static_public_keys(root: hvac.Client, server: Server, keys: Keys) -> None:
    pem = keys.ec.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    previous = root.read("auth/jwt/config")["data"]
    root.write("auth/jwt/config", jwt_validation_pubkeys=[pem], bound_issuer=ISSUER)
    try:
        assert login(server, sign(keys, "ec")).status_code == 200
        assert login(server, sign(keys, "rsa")).status_code == 400
        with server.http(root.token) as http:
            refused = http.post("/v1/auth/jwt/config", json={"jwt_validation_pubkeys": [pem],
                                                            "jwt_supported_algs": ["HS256"]})
        assert refused.status_code == 400
    finally:
        root.write("auth/jwt/config", jwks_url=previous["jwks_url"], jwks_ca_pem=previous["jwks_ca_pem"],
                   bound_issuer=ISSUER)


def test_refusal_reasons_are_specific(root: hvac.Client, server: Server, keys: Keys) -> None:
    public_pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = {"expired": "expired", "not yet valid": "not valid yet", "wrong audience": "audience",
                "wrong issuer": "issuer", "bound claims mismatch": "bound claims", "wrong kid": "no key",
                "alg none": "unsupported signing algorithm", "HS256 with the public key": "unsupported signing",
                "signed by another key": "signature", "garbage": "malformed"}
    for reason, token in _refusals(keys, public_pem).items():
        message = login(server, token).json()["errors"][0]
        assert expected[reason] in message, (reason, message)


def test_oidc_discovery(root: hvac.Client, server: Server, keys: Keys, jwks: tuple[str, str]) -> None:
    url, ca = jwks
    base = url.rsplit("/", 1)[0]
    root.write("auth/jwt/config", oidc_discovery_url=base, oidc_discovery_ca_pem=ca)
    try:
        answer = login(server, sign(keys, "ed"))
        assert answer.status_code == 200, answer.text
        assert login(server, sign(keys, iss="https://evil.test")).status_code == 400  # the document's issuer
    finally:
        root.write("auth/jwt/config", jwks_url=url, jwks_ca_pem=ca, bound_issuer=ISSUER)


def test_jwks_needs_its_ca(root: hvac.Client, server: Server, keys: Keys, jwks: tuple[str, str]) -> None:
    url, ca = jwks
    root.write("auth/jwt/config", jwks_url=url, bound_issuer=ISSUER)  # no CA: the test CA is not trusted
    try:
        answer = login(server, sign(keys))
        assert answer.status_code == 400, answer.text
    finally:
        root.write("auth/jwt/config", jwks_url=url, jwks_ca_pem=ca, bound_issuer=ISSUER)
    with server.http(root.token) as http:
        plain = http.post("/v1/auth/jwt/config", json={"jwks_url": url.replace("https", "http")})
    assert plain.status_code == 400
