"""Vault's JSON policy syntax, turned into the document python-hcl2 gives for HCL.

Vault parses policies with HashiCorp's HCL library, which reads JSON as
well (JSON is valid HCL there); python-hcl2 reads HCL only.  A policy whose
text starts with ``{`` is read as JSON here and handed to the same checks
(:func:`.policies.parse`), so both syntaxes are enforced identically.
Errors are ``ValueError``; the caller turns them into its ``PolicyError``.
"""

from __future__ import annotations

import json
from typing import Any


def looks_like_json(text: str) -> bool:
    return text.lstrip().startswith("{")


def _blocks(value: Any) -> list[Any]:
    """HCL's JSON form writes repeated blocks as an object or a list of objects."""
    return value if isinstance(value, list) else [value]


def json_document(text: str) -> dict[str, Any]:
    """``{"path": {"a/*": {"capabilities": ["read"]}}}`` as ``{"path": [{"a/*": {...}}]}``."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"policy is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ValueError("a JSON policy must be an object")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key != "path":
            out[key] = value  # refused by the caller, with the stanza's name
            continue
        paths: list[Any] = []
        for block in _blocks(value):
            if not isinstance(block, dict):
                raise ValueError("path must be an object of PATTERN: {\"capabilities\": [...]}")
            for pattern, body in block.items():
                bodies = _blocks(body)
                merged: dict[str, Any] = {}
                for part in bodies:
                    if not isinstance(part, dict):
                        raise ValueError(f"path {pattern!r}: expected an object")
                    merged.update(part)
                paths.append({pattern: merged})
        out["path"] = paths
    return out
