"""A small HTTPS server following the public Azure Key Vault REST reference, for tests only.

No Key Vault emulator exists for this machine, so the Azure provider is
tested with the unmodified ``azure-keyvault-keys`` SDK against this server.
It implements only what the provider uses, as the REST reference describes it:

* ``POST /keys/{name}/create`` (Create Key: RSA, RSA-HSM, oct-HSM; a new version each call)
* ``GET /keys/{name}/{version}`` (Get Key; empty version = latest)
* ``POST /keys/{name}/rotate`` (Rotate Key: a new version, same type and size)
* ``PATCH /keys/{name}/{version}`` (Update Key: ``attributes.enabled``)
* ``POST /keys/{name}/{version}/wrapkey`` and ``/unwrapkey`` (RSA-OAEP-256 with
  ``cryptography``; A256KW, RFC 3394, for oct-HSM keys)
* the 401 bearer challenge (``WWW-Authenticate: Bearer authorization="https://
  login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"``) for any
  request without a token the server issued;
* for the client-secret credential: ``GET /{tenant}/v2.0/.well-known/openid-configuration``
  and ``POST /{tenant}/oauth2/v2.0/token`` (client credentials grant), as Microsoft
  Entra ID answers them, so ``ClientSecretCredential`` with ``authority`` pointing here
  runs unmodified too.

Errors use the reference's shape ``{"error": {"code", "message", "innererror"}}``:
404 ``KeyNotFound``, 403 ``Forbidden`` (``KeyDisabled`` for a disabled key version,
``AccessDenied`` for a token without the permission), 400 ``BadParameter``.
``fail_next(n)`` answers the next n requests with a 5xx, for retry tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ALL_OPS = frozenset({"get", "create", "rotate", "update", "wrapKey", "unwrapKey"})
OAEP_256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- TLS material made by the test session ----------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 (strict-verifier friendly)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nebula-credential test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


# ---- key store ------------------------------------------------------------------
@dataclass
class KeyVersion:
    version: str
    kty: str
    key_size: int
    material: Any  # RSAPrivateKey or bytes (AES)
    key_ops: list[str]
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            err["innererror"] = {"code": self.inner}
        return {"error": err}


class AzureKeyVaultServer:
    """State and HTTPS listener; one per test session, keys named uniquely per test."""

    def __init__(self, tls: TlsFiles, *, tenant: str = "nebula-test-tenant") -> None:
        self.tls = tls
        self.tenant = tenant
        self.keys: dict[str, list[KeyVersion]] = {}
        #: token -> the key permissions it carries
        self.tokens: dict[str, frozenset[str]] = {}
        #: client_id -> (client secret, permissions) for the token endpoint
        self.clients: dict[str, tuple[str, frozenset[str]]] = {}
        self.requests: list[tuple[str, str]] = []
        self._failures = 0
        self._failure_status = 503
        self._lock = threading.Lock()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ---- test controls ----------------------------------------------------------
    def start(self) -> AzureKeyVaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def issue_token(self, permissions: Iterable[str] = ALL_OPS) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = frozenset(permissions)
        return token

    def register_client(
        self, client_id: str, secret: str, permissions: Iterable[str] = ALL_OPS
    ) -> None:
        self.clients[client_id] = (secret, frozenset(permissions))

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures, self._failure_status = count, status

    def set_enabled(self, name: str, version: str | None, enabled: bool) -> None:
        self._version(name, version or "").enabled = enabled

    def versions(self, name: str) -> list[str]:
        return [kv.version for kv in self.keys.get(name, [])]

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))

    # ---- model --------------------------------------------------------------------
    def _version(self, name: str, version: str) -> KeyVersion:
        versions = self.keys.get(name)
        if not versions:
            raise ApiError(
                404,
                "KeyNotFound",
                f"A key with (name/id) {name} was not found in this key vault. If you recently "
                "deleted this key you may be able to recover it using the correct recovery "
                "command.",
            )
        if not version:
            return versions[-1]
        for kv in versions:
            if kv.version == version:
                return kv
        raise ApiError(
            404,
            "KeyNotFound",
            f"A key with (name/id) {name}/{version} was not found in this key vault.",
        )

    def _new_version(self, name: str, kty: str, key_size: int, key_ops: list[str]) -> KeyVersion:
        if kty in ("RSA", "RSA-HSM"):
            if key_size not in (2048, 3072, 4096):
                raise ApiError(400, "BadParameter", "The key size is not supported.")
            material: Any = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        elif kty == "oct-HSM":
            if key_size not in (128, 192, 256):
                raise ApiError(400, "BadParameter", "The key size is not supported.")
            material = os.urandom(key_size // 8)
        else:
            raise ApiError(400, "BadParameter", f"Key type {kty} is not supported by this vault.")
        kv = KeyVersion(secrets.token_hex(16), kty, key_size, material, key_ops)
        self.keys.setdefault(name, []).append(kv)
        return kv

    def bundle(self, name: str, kv: KeyVersion) -> dict[str, Any]:
        jwk: dict[str, Any] = {
            "kid": f"{self.url}/keys/{name}/{kv.version}",
            "kty": kv.kty,
            "key_ops": kv.key_ops,
        }
        if kv.kty.startswith("RSA"):
            pub = kv.material.public_key().public_numbers()
            jwk["n"] = b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big"))
        return {
            "key": jwk,
            "attributes": {
                "enabled": kv.enabled,
                "created": kv.created,
                "updated": kv.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
                "exportable": False,
            },
            "tags": {},
        }

    def _usable(self, kv: KeyVersion, op: str) -> None:
        if not kv.enabled:
            raise ApiError(
                403, "Forbidden", f"Operation {op} is not allowed on a disabled key.", "KeyDisabled"
            )

    # ---- endpoints ------------------------------------------------------------------
    def handle(
        self, method: str, parts: list[str], body: dict[str, Any], perms: frozenset[str]
    ) -> tuple[int, dict[str, Any]]:
        def need(op: str) -> None:
            if op not in perms:
                raise ApiError(
                    403,
                    "Forbidden",
                    f"The user, group or application does not have keys {op} permission on "
                    "key vault "
                    f"'127.0.0.1'.",
                    "AccessDenied",
                )

        if len(parts) < 2 or parts[0] != "keys":
            raise ApiError(404, "NotFound", "The requested resource was not found.")
        name = parts[1]
        rest = parts[2:]
        with self._lock:
            if method == "POST" and rest == ["create"]:
                need("create")
                kty = str(body.get("kty", ""))
                size = int(body.get("key_size") or (2048 if kty.startswith("RSA") else 256))
                ops = list(body.get("key_ops") or ["encrypt", "decrypt", "wrapKey", "unwrapKey"])
                kv = self._new_version(name, kty, size, ops)
                if body.get("attributes", {}).get("enabled") is False:
                    kv.enabled = False
                return 200, self.bundle(name, kv)
            if method == "POST" and rest == ["rotate"]:
                need("rotate")
                last = self._version(name, "")
                return 200, self.bundle(
                    name, self._new_version(name, last.kty, last.key_size, last.key_ops)
                )
            if method == "GET" and len(rest) <= 1:
                need("get")
                kv = self._version(name, rest[0] if rest else "")
                self._usable(kv, "get")
                return 200, self.bundle(name, kv)
            if method == "PATCH" and len(rest) <= 1:
                need("update")
                kv = self._version(name, rest[0] if rest else "")
                enabled = body.get("attributes", {}).get("enabled")
                if enabled is not None:
                    kv.enabled = bool(enabled)
                kv.updated = int(time.time())
                return 200, self.bundle(name, kv)
            if method == "POST" and len(rest) == 2 and rest[1] in ("wrapkey", "unwrapkey"):
                op = "wrapKey" if rest[1] == "wrapkey" else "unwrapKey"
                need(op)
                kv = self._version(name, rest[0])
                self._usable(kv, op)
                if op not in kv.key_ops:
                    raise ApiError(
                        403, "Forbidden", f"Operation {op} is not permitted on this key."
                    )
                value = unb64url(str(body.get("value", "")))
                out = self._keywrap(kv, op, str(body.get("alg", "")), value)
                return 200, {"kid": f"{self.url}/keys/{name}/{kv.version}", "value": b64url(out)}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here.")

    @staticmethod
    def _keywrap(kv: KeyVersion, op: str, alg: str, value: bytes) -> bytes:
        try:
            if kv.kty.startswith("RSA") and alg == "RSA-OAEP-256":
                if op == "wrapKey":
                    return bytes(kv.material.public_key().encrypt(value, OAEP_256))
                return bytes(kv.material.decrypt(value, OAEP_256))
            if kv.kty == "oct-HSM" and alg == f"A{kv.key_size}KW":
                if op == "wrapKey":
                    return aes_key_wrap(kv.material, value)
                return aes_key_unwrap(kv.material, value)
        except (ValueError, InvalidUnwrap):
            raise ApiError(
                400, "BadParameter", "Bad Request: the value could not be processed."
            ) from None
        raise ApiError(400, "BadParameter", f"Algorithm {alg} is not valid for a {kv.kty} key.")

    def token_endpoint(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        client_id = (form.get("client_id") or [""])[0]
        secret = (form.get("client_secret") or [""])[0]
        known = self.clients.get(client_id)
        if (
            (form.get("grant_type") or [""])[0] != "client_credentials"
            or known is None
            or not secrets.compare_digest(known[0], secret)
        ):
            return 401, {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            }
        token = self.issue_token(known[1])
        return 200, {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        }

    def openid_configuration(self) -> dict[str, Any]:
        base = f"{self.url}/{self.tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
        }

    def take_failure(self) -> int | None:
        with self._lock:
            if self._failures > 0:
                self._failures -= 1
                return self._failure_status
        return None


def _make_handler(server: AzureKeyVaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", secrets.token_hex(8))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _dispatch(self) -> None:
            raw = self._body()
            split = urlsplit(self.path)
            parts = [p for p in split.path.split("/")]
            parts = parts[1:] if parts and parts[0] == "" else parts
            while parts and parts[-1] == "":
                parts.pop()
            server.requests.append((self.command, split.path))
            status = server.take_failure()
            if status is not None:
                self._send(
                    status,
                    {
                        "error": {
                            "code": "ServiceUnavailable",
                            "message": "The service is temporarily unavailable.",
                        }
                    },
                )
                return
            # Microsoft Entra ID endpoints (client secret credential)
            if len(parts) >= 2 and parts[0] == server.tenant:
                if self.command == "GET" and parts[1:] == [
                    "v2.0",
                    ".well-known",
                    "openid-configuration",
                ]:
                    self._send(200, server.openid_configuration())
                    return
                if self.command == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
                    self._send(*server.token_endpoint(parse_qs(raw.decode())))
                    return
                self._send(404, {"error": "not_found"})
                return
            # Key Vault: bearer challenge first
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            perms = server.tokens.get(token)
            if perms is None:
                challenge = (
                    f'Bearer authorization="https://login.microsoftonline.com/{server.tenant}", '
                    'resource="https://vault.azure.net"'
                )
                self._send(
                    401,
                    {
                        "error": {
                            "code": "Unauthorized",
                            "message": "AKV10000: Request is missing a Bearer or PoP token.",
                        }
                    },
                    {"WWW-Authenticate": challenge},
                )
                return
            if "api-version" not in parse_qs(split.query):
                self._send(
                    400,
                    {
                        "error": {
                            "code": "BadParameter",
                            "message": "The 'api-version' query parameter is missing.",
                        }
                    },
                )
                return
            try:
                body = json.loads(raw) if raw else {}
                self._send(*server.handle(self.command, parts, body, perms))
            except ApiError as exc:
                self._send(exc.status, exc.body())
            except (ValueError, KeyError) as exc:
                self._send(400, {"error": {"code": "BadParameter", "message": type(exc).__name__}})

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    return Handler
