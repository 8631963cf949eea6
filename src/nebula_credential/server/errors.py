"""The one place that turns exceptions into Vault's ``{"errors": [...]}`` answers.

Bad input is a 4xx with a message that names what is wrong; a server fault
is a 5xx with a fixed text (the exception type goes to the log, never the
message, which could name a credential).  No traceback ever reaches a body.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from ..exceptions import (
    CheckAndSetError,
    ConfigError,
    CredentialNotFoundError,
    NebulaCredentialError,
    ProviderUnavailableError,
    StoreUnavailableError,
)
from .policies import BadPathError, PolicyError
from .tokens import TokenError

logger = logging.getLogger("nebula_credential.server")

PERMISSION_DENIED = "permission denied"


class HTTPError(NebulaCredentialError):
    """An answer decided by the HTTP layer itself (status, messages, optional data)."""

    def __init__(self, status: int, *messages: str, data: Any = None) -> None:
        self.status = status
        self.messages = list(messages)
        self.data = data
        super().__init__(messages[0] if messages else str(status))


class PermissionDenied(HTTPError):
    def __init__(self) -> None:
        super().__init__(403, PERMISSION_DENIED)


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


#: Answers in our words for exceptions whose own text is Python's (``use sys.set_int_max_str_digits()``)
#: or says nothing useful to a client.
OUR_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    # the server framework ends the body stream when it cannot decode it (a chunked header with a
    # plain body, a bad chunk): the request is malformed, not the server broken
    (ClientDisconnect, "the request body could not be read: malformed or incomplete body framing"),
    (OverflowError, "a number in the request is out of range"),
)

#: Our typed exceptions, most specific first, and the status each one means.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (CheckAndSetError, 400),  # Vault answers a failed check-and-set with 400
    (CredentialNotFoundError, 404),
    (PolicyError, 400),
    (BadPathError, 400),
    (TokenError, 400),
    (ConfigError, 400),
    (ValueError, 400),
    (OverflowError, 400),
    (ClientDisconnect, 400),
    (StoreUnavailableError, 503),
    (ProviderUnavailableError, 503),
)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(exc: BaseException) -> JSONResponse:
    status = status_of(exc)
    if isinstance(exc, HTTPError):
        body: dict[str, Any] = {"errors": exc.messages}
        if exc.data is not None:
            body["data"] = exc.data
        return JSONResponse(body, status_code=status)
    for kind, text in OUR_WORDS:
        if isinstance(exc, kind):
            return JSONResponse({"errors": [text]}, status_code=status)
    if status == 400 and not isinstance(exc, NebulaCredentialError) and "sys.set_int_max_str_digits" in str(exc):
        return JSONResponse({"errors": ["a number in the request has too many digits"]}, status_code=status)
    if status >= 500:
        logger.error("request failed: %s", type(exc).__name__)
        logger.debug("request failure detail", exc_info=exc)
        text = "service unavailable" if status == 503 else "internal error"
        return JSONResponse({"errors": [text]}, status_code=status)
    return JSONResponse({"errors": [str(exc)]}, status_code=status)
