"""A logging filter that scrubs secrets from third-party debug logs.

botocore logs whole KMS responses at DEBUG (``Plaintext`` of a data key
included), hvac/urllib3 log headers with Vault tokens, and the Azure SDK logs
request bodies.  :func:`install` attaches :class:`RedactingFilter` to those
loggers and to ours, so turning on ``--debug`` never prints key material.
Redaction is by field name, which is what those libraries emit; it is a
safety net, not a licence to log secrets.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"

_FIELDS = (
    "Plaintext", "plaintext", "CiphertextBlob", "token", "client_token", "X-Vault-Token", "x-vault-token",
    "secret_id", "client_secret", "password", "pin", "key", "value", "dek", "SecretString", "SecretBinary",
)
_FIELD_ALT = "|".join(re.escape(f) for f in _FIELDS)
_PATTERNS = (
    # "Plaintext": "...", 'Plaintext': b'...', "value":"..."
    re.compile(r"""(?P<k>["']?(?:""" + _FIELD_ALT + r""")["']?\s*[:=]\s*)(?P<v>b?"[^"]*"|b?'[^']*'|[^\s,}&]+)"""),
    # Authorization: Bearer xxx / Basic xxx
    re.compile(r"""(?P<k>[Aa]uthorization["']?\s*[:=]\s*["']?(?:Bearer|Basic)?\s*)(?P<v>[^"'\s,}]+)"""),
    # our server's tokens wherever they appear (recognisable by their prefix)
    re.compile(r"""(?P<k>\bncs\.)(?P<v>[A-Za-z0-9_-]{16,})"""),
)
#: Loggers of the libraries our providers drive, plus our own.
LOGGERS = ("nebula_credential", "botocore", "boto3", "urllib3", "hvac", "azure", "requests", "psycopg", "granian")


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group("k") + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secret-bearing fields redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party record: drop its arguments, keep the template
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return True


_FILTER = RedactingFilter()


def install(names: tuple[str, ...] = LOGGERS) -> None:
    """Attach the filter to the given loggers and to the root handlers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
