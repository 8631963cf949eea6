"""The redacting filter scrubs what botocore, hvac and the Azure SDK log at DEBUG."""

from __future__ import annotations

import logging

import pytest

from nebula_credential import logredact

SECRET = "c2VjcmV0LWtleS1tYXRlcmlhbC0zMi1ieXRlcy0hIQ=="


@pytest.mark.parametrize(
    "template",
    [
        "Response body: b'{\"KeyId\":\"arn:x\",\"Plaintext\":\"%s\",\"CiphertextBlob\":\"AQID\"}'",
        "Response body: {'Plaintext': b'%s', 'KeyId': 'k'}",
        "headers: {'X-Vault-Token': '%s', 'Content-Type': 'application/json'}",
        "Request header 'Authorization': 'Bearer %s'",
        "{\"data\": {\"plaintext\": \"%s\"}}",
        "unwrap result {\"kid\": \"https://v/keys/k/1\", \"value\": \"%s\"}",
    ],
)
def test_secret_fields_are_redacted(template: str, caplog: pytest.LogCaptureFixture) -> None:
    logredact.install(("test.redaction",))
    logger = logging.getLogger("test.redaction")
    with caplog.at_level(logging.DEBUG, logger="test.redaction"):
        logger.debug(template, SECRET)
    assert SECRET not in caplog.text
    assert logredact.REDACTED in caplog.text


def test_harmless_messages_are_untouched() -> None:
    assert logredact.redact("rotated keyring default: v1 -> v2") == "rotated keyring default: v1 -> v2"


def test_install_is_idempotent() -> None:
    logredact.install(("test.idem",))
    logredact.install(("test.idem",))
    assert logging.getLogger("test.idem").filters.count(logredact._FILTER) == 1
