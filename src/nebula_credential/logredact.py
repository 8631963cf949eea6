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
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

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
    # our server's tokens and Vault's wherever they appear (recognisable by their prefix), inside a
    # word too: a value match, not a segment match
    re.compile(r"""(?P<k>(?:ncs|hv[sbr])\.)(?P<v>[A-Za-z0-9_-]{16,})"""),
)
#: Secrets of the request being served (its presented token, whatever it looks like), replaced by value.
presented: ContextVar[tuple[str, ...]] = ContextVar("nebula_credential_presented", default=())
#: A presented value shorter than this is not searched for (it would redact ordinary words).
MIN_VALUE_CHARS = 8
#: Loggers of the libraries our providers drive, plus our own.
LOGGERS = ("nebula_credential", "botocore", "boto3", "urllib3", "hvac", "azure", "requests", "psycopg", "granian")


def replace_value(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced wherever it appears, as sent or percent-encoded."""
    if len(secret) < MIN_VALUE_CHARS:
        return text
    # a percent-encoded form needs a '%' in the text: without one, skip the two quote() calls (every request
    # redacts its path by the token it presented)
    forms: Iterable[str] = (secret,)
    if "%" in text:
        from urllib.parse import quote  # here: only the server's logging needs it, not start-up (issue 27)

        forms = {secret, quote(secret, safe=""), quote(secret)}
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def redact(text: str) -> str:
    for secret in presented.get():
        text = replace_value(text, secret)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group("k") + REDACTED, text)
    return text


def scrub(record: logging.LogRecord) -> None:
    """Redact one record in place: its message is formatted once and its arguments dropped."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed third-party record: drop its arguments, keep the template
        message = str(record.msg)
    cleaned = redact(message)
    if cleaned != message or record.args:
        record.msg, record.args = cleaned, ()


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secret-bearing fields redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub(record)
        return True


_FILTER = RedactingFilter()


class _RedactingFactory:
    """A log record factory that scrubs every record as it is created.

    Filters on handlers only cover handlers that exist when they are added,
    and a filter on a logger does not see records of its child loggers
    (``botocore.endpoint``); the record factory sees every record of every
    logger, whatever handlers are added later (the daemon's included).
    """

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        scrub(record)
        return record


def install(names: tuple[str, ...] = LOGGERS) -> None:
    """Scrub every log record at creation, and filter the given loggers and root handlers (idempotent)."""
    if not isinstance(logging.getLogRecordFactory(), _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(logging.getLogRecordFactory()))
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
