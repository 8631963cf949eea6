"""The OpenAPI 3.0 document served at ``/v1/sys/internal/specs/openapi``.

Written by hand from the routes (one table below), so it states exactly
what the server answers; the schemathesis test fuzzes the server against it.
"""

from __future__ import annotations

from typing import Any

_ERRORS = {"type": "object", "properties": {"errors": {"type": "array", "items": {"type": "string"}}}}
_TOKEN = [{"in": "header", "name": "X-Vault-Token", "required": False, "schema": {"type": "string"}}]
_PATH = {"in": "path", "name": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_LIST = {"in": "query", "name": "list", "required": True, "schema": {"type": "string", "enum": ["true"]},
         "description": "Vault's LIST operation (the LIST method is accepted too)"}
_LIST_OPTIONAL = {**_LIST, "required": False}
_VERSION = {"in": "query", "name": "version", "required": False, "schema": {"type": "integer", "minimum": 0}}
_NAME = {"in": "path", "name": "name", "required": True, "schema": {"type": "string", "minLength": 1}}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_VERSIONS = {"type": "object", "properties": {"versions": {"type": "array", "items": {"type": "integer"}}}}
_KV_WRITE = {
    "type": "object",
    "properties": {
        "data": {"type": "object"},
        "options": {"type": "object", "properties": {"cas": {"type": "integer", "minimum": 0}}},
    },
}
_METADATA_WRITE = {
    "type": "object",
    "properties": {
        "custom_metadata": _STR_MAP,
        "max_versions": {"type": "integer"},
        "cas_required": {"type": "boolean"},
        "delete_version_after": {"type": "string"},
    },
}
_TOKEN_CREATE = {
    "type": "object",
    "properties": {
        "policies": {"type": "array", "items": {"type": "string"}},
        "ttl": {"type": "string"},
        "explicit_max_ttl": {"type": "string"},
        "display_name": {"type": "string"},
        "meta": _STR_MAP,
        "renewable": {"type": "boolean"},
    },
}
_ACCESSOR = {"type": "object", "properties": {"accessor": {"type": "string"}}, "required": ["accessor"]}
_POLICY = {"type": "object", "properties": {"policy": {"type": "string"}}, "required": ["policy"]}
_INCREMENT = {"type": "object", "properties": {"increment": {"type": "string"}}}
_LEASE = {"type": "object", "properties": {"lease_id": {"type": "string"}, "increment": {"type": "integer"},
                                           "sync": {"type": "boolean"}}}
_PATHS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_CAPS = {"type": "object", "properties": {"paths": _PATHS, "path": _PATHS, "token": {"type": "string"}}}
_CAPS_ACCESSOR = {"type": "object", "properties": {"paths": _PATHS, "path": _PATHS, "accessor": {"type": "string"}}}

#: (path, method, parameters, request body schema, success status, summary)
_Route = tuple[str, str, list[dict[str, Any]], dict[str, Any] | None, str, str]
_ROUTES: list[_Route] = [
    ("/sys/health", "get", [], None, "200", "Health, as Vault answers it"),
    ("/sys/seal-status", "get", [], None, "200", "Seal status: never sealed"),
    ("/sys/leader", "get", [], None, "200", "Leader: a node without HA"),
    ("/sys/init", "get", [], None, "200", "Initialisation status: always initialised"),
    ("/sys/policies/acl", "get", [_LIST], None, "200", "List ACL policies"),
    ("/sys/policy", "get", [], None, "200", "List policies (legacy: keys and policies)"),
    ("/sys/policy/{name}", "get", [_NAME], None, "200", "Read a policy (legacy: rules)"),
    ("/sys/policy/{name}", "delete", [_NAME], None, "204", "Delete a policy (legacy)"),
    ("/sys/capabilities", "post", [], _CAPS, "200", "A token's capabilities on paths"),
    ("/sys/capabilities-self", "post", [], _CAPS, "200", "The request token's capabilities on paths"),
    ("/sys/capabilities-accessor", "post", [], _CAPS_ACCESSOR, "200", "Capabilities of a token by accessor"),
    ("/sys/audit", "get", [], None, "200", "The audit device (read-only)"),
    ("/sys/policies/acl/{name}", "get", [_NAME], None, "200", "Read an ACL policy"),
    ("/sys/policies/acl/{name}", "put", [_NAME], _POLICY, "204", "Write an ACL policy (HCL)"),
    ("/sys/policies/acl/{name}", "delete", [_NAME], None, "204", "Delete an ACL policy"),
    ("/sys/internal/ui/mounts/{path}", "get", [_PATH], None, "200", "Which engine serves a path"),
    ("/sys/leases/lookup", "put", [], _LEASE, "200", "Look up a lease (lease_id in the body)"),
    ("/sys/leases/renew", "put", [], _LEASE, "200", "Renew a lease by increment seconds (capped at max_ttl)"),
    ("/sys/leases/revoke", "put", [], _LEASE, "204", "Revoke a lease (idempotent; 202 with sync false)"),
    ("/sys/leases/tidy", "post", [], None, "202", "Remove the rows of revoked leases"),
    ("/auth/token/create", "post", [], _TOKEN_CREATE, "200", "Create a child token"),
    ("/auth/token/lookup-self", "get", [], None, "200", "Look up the request's token"),
    ("/auth/token/lookup-accessor", "post", [], _ACCESSOR, "200", "Look up a token by accessor"),
    ("/auth/token/renew-self", "post", [], _INCREMENT, "200", "Renew the request's token"),
    ("/auth/token/revoke-self", "post", [], None, "204", "Revoke the request's token and its children"),
    ("/auth/token/revoke-accessor", "post", [], _ACCESSOR, "204", "Revoke a token by accessor"),
]
_KV_ROUTES: list[_Route] = [
    ("/{mount}/data/{path}", "get", [_PATH, _VERSION], None, "200", "Read a secret"),
    ("/{mount}/data/{path}", "post", [_PATH], _KV_WRITE, "200",
     "Write a new version (options.cas: the latest version number)"),
    ("/{mount}/data/{path}", "put", [_PATH], _KV_WRITE, "200", "Write a new version"),
    ("/{mount}/data/{path}", "patch", [_PATH], _KV_WRITE, "200",
     "Merge-patch the latest version (Content-Type: application/merge-patch+json)"),
    ("/{mount}/data/{path}", "delete", [_PATH], None, "204", "Soft-delete the latest version"),
    ("/{mount}/metadata", "get", [_LIST], None, "200", "List the top-level keys"),
    ("/{mount}/metadata/{path}", "get", [_PATH, _LIST_OPTIONAL], None, "200",
     "Read a secret's metadata, or with list=true the keys below it (folders end in /)"),
    ("/{mount}/metadata/{path}", "post", [_PATH], _METADATA_WRITE, "204",
     "Write max_versions, cas_required, delete_version_after, custom_metadata (scope)"),
    ("/{mount}/metadata/{path}", "patch", [_PATH], _METADATA_WRITE, "204",
     "Merge-patch the settings (Content-Type: application/merge-patch+json)"),
    ("/{mount}/metadata/{path}", "delete", [_PATH], None, "204", "Delete a secret with every version"),
    ("/{mount}/delete/{path}", "post", [_PATH], _VERSIONS, "204", "Soft-delete versions"),
    ("/{mount}/undelete/{path}", "post", [_PATH], _VERSIONS, "204", "Undelete versions"),
    ("/{mount}/destroy/{path}", "post", [_PATH], _VERSIONS, "204", "Destroy versions"),
    ("/{mount}/config", "get", [], None, "200", "The mount's max_versions, cas_required, delete_version_after"),
    ("/{mount}/config", "post", [], _METADATA_WRITE, "204", "Set the mount's defaults"),
]


def _operation(params: list[dict[str, Any]], body: dict[str, Any] | None, ok: str, summary: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": _TOKEN + params,
        "responses": {
            ok: {"description": "success"} if ok == "204" else {
                "description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
            **{code: {"description": text, "content": {"application/json": {"schema": _ERRORS}}}
               for code, text in (("400", "bad input"), ("403", "no or bad token, or denied"),
                                  ("404", "unknown path"), ("405", "method not allowed"),
                                  ("413", "body too large"), ("415", "PATCH without merge-patch JSON"))},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


def document(kv_mounts: dict[str, str]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    table = list(_ROUTES)
    for mount in kv_mounts:
        table += [(p.replace("{mount}", mount), *rest) for p, *rest in _KV_ROUTES]  # type: ignore[misc]
    for path, method, params, body, ok, summary in table:
        paths.setdefault(path, {})[method] = _operation(params, body, ok, summary)
    return {
        "openapi": "3.0.3",
        "info": {"title": "nebula-credential (Vault-compatible subset)", "version": "1"},
        "servers": [{"url": "/v1"}],
        "paths": paths,
    }
