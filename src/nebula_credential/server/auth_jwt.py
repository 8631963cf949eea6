"""``auth/<mount>`` JWT: workloads log in with a signed JWT they already hold (Vault's JWT method,
without the OIDC browser flow).

Signatures are checked by PyJWT, never here: the key comes from the
configured PEM keys, a JWKS URL fetched over HTTPS (with ``jwks_ca_pem``
as the trust root when given; cached, refreshed on an unknown ``kid`` at
most once per :attr:`JWTEngine.refresh_cooldown` seconds) or an OIDC
discovery document.  Only asymmetric algorithms are accepted
(:data:`ALLOWED_ALGS`): ``none`` and every HS* are refused before any key
is touched, so an HS256 token "signed" with the public key never verifies.
The time claims use Vault's three leeways; the role's bound audiences,
subject and claims (exact or glob, a value or a list) are checked after.
"""

from __future__ import annotations

import fnmatch
import json
import re
import ssl
import threading
import time
import urllib.request
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._backend import Backend
from ._request import Ctx, endpoint, read_json, source_of
from .authcommon import (
    auth_store,
    integer,
    invalid,
    issue,
    item_endpoint,
    login_endpoint,
    login_reply,
    source_allowed,
    strings,
    token_read,
    token_settings,
)
from .errors import HTTPError, PermissionDenied, bad_request

ALLOWED_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
#: Vault's leeways: 0 (the stored default) means these seconds, -1 means none.
_DEFAULT_LEEWAY = {"clock_skew_leeway": 60, "expiration_leeway": 150, "not_before_leeway": 150}


def _https_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by JSON pointer (``/groups/0``) as Vault allows."""
    if not path.startswith("/"):
        return claims.get(path)
    value: Any = claims
    for part in path.strip("/").split("/"):
        if isinstance(value, dict):
            value = value.get(part.replace("~1", "/").replace("~0", "~"))
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def claims_match(claims: dict[str, Any], bound: dict[str, Any], kind: str) -> bool:
    """Every bound claim holds: one of its allowed values equals (or, as glob, matches) one of the token's."""
    for name, allowed in bound.items():
        have = _claim(claims, name)
        if have is None:
            return False
        have_list = have if isinstance(have, list) else [have]
        want_list = allowed if isinstance(allowed, list) else [allowed]
        if kind == "glob":
            ok = any(isinstance(h, str) and fnmatch.fnmatchcase(h, str(w)) for h in have_list for w in want_list)
        else:
            ok = any(str(h) == str(w) for h in have_list for w in want_list if not isinstance(h, dict | list))
        if not ok:
            return False
    return True


class JWTEngine:
    """One JWT mount (``auth/jwt`` by default)."""

    method = "jwt"
    #: Seconds between two JWKS refreshes forced by unknown ``kid`` values (a flood of made-up kids is one fetch).
    refresh_cooldown = 1.0

    def __init__(self, mount: str = "auth/jwt") -> None:
        self.mount = mount.strip("/")
        self._clients: dict[tuple[str, str], jwt.PyJWKClient] = {}
        self._discovered: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # ---- config --------------------------------------------------------------------
    async def config(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        if request.method == "GET":
            ctx.require("read")
            found = await ctx.backend.run(store.get, self.mount, "config", "config")
            if found is None:
                raise HTTPError(404)
            return ctx.reply({k: v for k, v in found.items() if not k.startswith("_")})
        ctx.require("update")
        body = await read_json(request)
        keys = strings(body, "jwt_validation_pubkeys") if not isinstance(body.get("jwt_validation_pubkeys"), str) \
            else [body["jwt_validation_pubkeys"]]
        for pem in keys:
            try:
                load_pem_public_key(pem.encode())
            except Exception:
                raise bad_request("error parsing public key: expected PEM public keys") from None
        jwks_url = str(body.get("jwks_url") or "")
        discovery = str(body.get("oidc_discovery_url") or "")
        sources = [bool(keys), bool(jwks_url), bool(discovery)]
        if sum(sources) != 1:
            raise bad_request("exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url' must be set")
        for url in (jwks_url, discovery):
            if url and not url.startswith("https://"):
                raise bad_request("JWKS and OIDC discovery URLs must use https")
        algs = strings(body, "jwt_supported_algs") or list(ALLOWED_ALGS)
        refused = [a for a in algs if a not in ALLOWED_ALGS]
        if refused:
            raise bad_request(f"unsupported signing algorithm {refused[0]!r}: only {', '.join(ALLOWED_ALGS)}")
        config = {
            "jwt_validation_pubkeys": keys,
            "jwks_url": jwks_url,
            "jwks_ca_pem": str(body.get("jwks_ca_pem") or ""),
            "oidc_discovery_url": discovery,
            "oidc_discovery_ca_pem": str(body.get("oidc_discovery_ca_pem") or ""),
            "bound_issuer": str(body.get("bound_issuer") or ""),
            "jwt_supported_algs": algs,
            "default_role": str(body.get("default_role") or ""),
        }
        await ctx.backend.write(store.put, self.mount, "config", "config", config)
        with self._lock:
            self._clients.clear()
            self._discovered.clear()
        return Response(status_code=204)

    # ---- roles ---------------------------------------------------------------------
    def _name(self, request: Request) -> str:
        name = str(request.path_params["name"])
        if not _NAME.match(name):
            raise bad_request(f"invalid role name {name!r}")
        return name

    async def role(self, request: Request, ctx: Ctx) -> Response:
        store = auth_store(request)
        name = self._name(request)

        async def save(old: dict[str, Any] | None) -> None:
            role = build_role(await read_json(request), old)
            await ctx.backend.write(store.put, self.mount, "role", name, role)

        return await item_endpoint(request, ctx, store, self.mount, "role", name, shown=self._role_json, save=save)

    @staticmethod
    def _role_json(role: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in role.items() if not k.startswith("_") and not k.startswith("token_")}
        return {**out, **token_read(role), "verbose_oidc_logging": False}

    async def list_roles(self, request: Request, ctx: Ctx) -> Response:
        ctx.require("list", self.mount + "/role/")
        names = await ctx.backend.run(auth_store(request).names, self.mount, "role")
        if not names:
            raise HTTPError(404)
        return ctx.reply({"keys": names})

    # ---- verification --------------------------------------------------------------------
    def _discover(self, config: dict[str, Any]) -> dict[str, Any]:
        key = (config["oidc_discovery_url"], config["oidc_discovery_ca_pem"])
        with self._lock:
            hit = self._discovered.get(key)
        if hit is not None and time.monotonic() - hit[0] < 300:
            return hit[1]
        url = key[0].rstrip("/") + "/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10, context=_https_context(key[1])) as answer:  # noqa: S310 - https only
            document = json.loads(answer.read(1 << 20))
        if not isinstance(document, dict) or not str(document.get("jwks_uri", "")).startswith("https://"):
            raise invalid("the OIDC discovery document names no https jwks_uri")
        with self._lock:
            self._discovered[key] = (time.monotonic(), document)
        return document

    def _jwks_client(self, url: str, ca_pem: str) -> jwt.PyJWKClient:
        with self._lock:
            client = self._clients.get((url, ca_pem))
            if client is None:
                client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10,
                                         ssl_context=_https_context(ca_pem), cooldown_duration=self.refresh_cooldown)
                self._clients[(url, ca_pem)] = client
            return client

    def verify(self, config: dict[str, Any], role: dict[str, Any], token: str, now: float) -> dict[str, Any]:
        """The token's claims when its signature, times, issuer and audience hold; else 400."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid("error validating token: malformed JWT") from None
        alg = header.get("alg")
        allowed = [a for a in config.get("jwt_supported_algs") or ALLOWED_ALGS if a in ALLOWED_ALGS]
        if alg not in allowed:
            raise invalid(f"error validating token: unsupported signing algorithm {str(alg)[:16]!r}")
        issuer = config.get("bound_issuer") or None
        keys: list[Any]
        if config.get("jwt_validation_pubkeys"):
            keys = list(config["jwt_validation_pubkeys"])
        else:
            if config.get("oidc_discovery_url"):
                document = self._discover(config)
                url, ca_pem = str(document["jwks_uri"]), config["oidc_discovery_ca_pem"]
                issuer = issuer or document.get("issuer")
            else:
                url, ca_pem = config["jwks_url"], config["jwks_ca_pem"]
            try:
                keys = [self._jwks_client(url, ca_pem).get_signing_key_from_jwt(token).key]
            except jwt.PyJWKClientError as exc:
                raise invalid(f"error validating token: no key for this token ({type(exc).__name__})") from None
        audience = role.get("bound_audiences") or None
        claims: dict[str, Any] | None = None
        failure = "error validating token: signature verification failed"
        for key in keys:
            try:
                claims = jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=issuer,
                                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                             "require": ["iss"] if issuer else []})
                break
            except jwt.InvalidAudienceError:
                raise invalid("error validating claims: invalid audience (aud) claim") from None
            except jwt.InvalidIssuerError:
                raise invalid("error validating claims: invalid issuer (iss) claim") from None
            except jwt.MissingRequiredClaimError:
                raise invalid("error validating claims: missing issuer (iss) claim") from None
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError, ValueError, TypeError):
                continue
            except jwt.PyJWTError:
                raise invalid("error validating token: malformed JWT") from None
        if claims is None:
            raise invalid(failure)
        self._check_times(claims, role, now)
        return claims

    @staticmethod
    def leeway(role: dict[str, Any], field: str) -> int:
        """A leeway in seconds: 0 is Vault's default for the field, -1 none (the claim is still checked)."""
        value = int(role.get(field, 0))
        return _DEFAULT_LEEWAY[field] if value == 0 else max(value, 0)

    def _check_times(self, claims: dict[str, Any], role: dict[str, Any], now: float) -> None:
        skew = self.leeway(role, "clock_skew_leeway")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf), ("iat", claims.get("iat"))):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise invalid(f"error validating claims: {name} is not a number")
        if exp is None:  # a token without an end is refused (a deliberate difference: Vault accepts one)
            raise invalid("error validating claims: no exp claim")
        if now > exp + skew + self.leeway(role, "expiration_leeway"):
            raise invalid("error validating claims: token is expired (exp)")
        if nbf is not None and now < nbf - skew - self.leeway(role, "not_before_leeway"):
            raise invalid("error validating claims: token not valid yet (nbf)")

    async def login(self, request: Request, backend: Backend, details: dict[str, Any]) -> Response:
        store = auth_store(request)
        body = await read_json(request)
        config = await backend.run(store.get, self.mount, "config", "config")
        if config is None:
            raise invalid("could not load configuration")
        name = str(body.get("role") or config.get("default_role") or "")
        if not name:
            raise bad_request("missing role")
        details["role"] = name[:128]
        token = body.get("jwt")
        if not isinstance(token, str) or not token:
            raise bad_request("missing token")
        role = await backend.run(store.get, self.mount, "role", name)
        if role is None:
            raise invalid(f'role "{name[:128]}" could not be found')
        if not source_allowed(source_of(request), role.get("token_bound_cidrs", [])):
            raise PermissionDenied()  # before the JWT is looked at, as Vault
        # off the event loop: a JWKS fetch blocks (and on PostgreSQL backend.run would run it on the loop)
        claims = await anyio.to_thread.run_sync(self.verify, config, role, token, store.now())
        if role.get("bound_subject") and claims.get("sub") != role["bound_subject"]:
            raise invalid("sub claim does not match bound subject")
        if role.get("bound_claims") and not claims_match(claims, role["bound_claims"], role["bound_claims_type"]):
            raise invalid("error validating claims: claim is missing or does not match bound claims")
        user = _claim(claims, role["user_claim"])
        if user is None or isinstance(user, dict | list):
            raise invalid(f"claim {role['user_claim']!r} not found in token")
        details["subject"] = str(user)[:128]
        metadata = {"role": name}
        for claim, key in role.get("claim_mappings", {}).items():
            value = _claim(claims, claim)
            if value is not None and not isinstance(value, dict | list):
                metadata[key] = str(value)[:512]
        auth = await issue(backend, role, display_name=f"{self.mount.split('/')[-1]}-{str(user)[:64]}",
                           metadata=metadata, path=f"{self.mount}/login")
        return login_reply(auth, details)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/login", login_endpoint(self.login, method=self.method, mount=self.mount),
                  methods=["POST", "PUT"]),
            Route("/config", endpoint(self.config), methods=["GET", "POST", "PUT"]),
            Route("/role", endpoint(self.list_roles), methods=["LIST"]),
            Route("/role/{name}", endpoint(self.role), methods=["GET", "POST", "PUT", "DELETE"]),
        ]


def build_role(body: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """A JWT role's stored settings from a write's fields over the old role (Vault's defaults and checks)."""
    role = token_settings(body, old)
    role_type = str(body.get("role_type") or role.get("role_type") or "jwt")
    if role_type != "jwt":
        raise bad_request("only role_type=jwt is served here (no OIDC browser flow)")
    role["role_type"] = role_type
    for field in ("bound_audiences", "allowed_redirect_uris"):
        if field in body:
            role[field] = strings(body, field)
        role.setdefault(field, [])
    for field in ("bound_subject", "user_claim", "groups_claim"):
        if field in body:
            role[field] = str(body.get(field) or "")
    role.setdefault("bound_subject", "")
    role.setdefault("groups_claim", "")
    if not role.get("user_claim"):
        raise bad_request("a user claim must be defined on the role")
    for field in ("bound_claims", "claim_mappings"):
        if field in body:
            value = body.get(field) or {}
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise bad_request(f"{field}: expected a JSON object") from None
            if not isinstance(value, dict):
                raise bad_request(f"{field}: expected an object")
            role[field] = value
        role.setdefault(field, {})
    if not all(isinstance(v, str) for v in role["claim_mappings"].values()):
        raise bad_request("claim_mappings: values must be strings")
    kind = str(body.get("bound_claims_type") or role.get("bound_claims_type") or "string")
    if kind not in ("string", "glob"):
        raise bad_request("bound_claims_type must be 'string' or 'glob'")
    role["bound_claims_type"] = kind
    for field in _DEFAULT_LEEWAY:
        if field in body:
            value = body[field]
            role[field] = -1 if value in (-1, "-1") else integer(body, field)
        role.setdefault(field, 0)
    if role_type == "jwt" and not (role["bound_audiences"] or role["bound_subject"] or role["bound_claims"]):
        raise bad_request("must have at least one bound constraint when creating/updating a role")
    return role
