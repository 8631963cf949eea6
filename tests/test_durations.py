"""Durations in every form Vault accepts (Go's time.ParseDuration, seconds, days)."""

from __future__ import annotations

import pytest

from nebula_credential.durations import parse_duration
from nebula_credential.exceptions import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h0m0s", 3600), ("90m", 5400), ("1.5h", 5400), ("300", 300), ("0", 0), ("0s", 0), ("1h30m", 5400),
    ("2h45m30.5s", 9930.5), ("500ms", 0.5), ("1d", 86400), ("90d", 7776000), ("2w", 1209600), (" 30s ", 30),
    ("+5m", 300), (".5h", 1800), ("1.h", 3600), (300, 300), (1.5, 1.5), (0, 0), ("768h", 768 * 3600),
    ("1h1m1s1ms", 3661.001), ("30.0", 30),
])
def test_vault_forms(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", "h", "-1h", "-5", "1x", "1h-5m", "h1", "1 h 2", "1hh", "ninety days", "1e3", "x" * 100,
    "1.2.3s", "0x10", "nan", "inf",
])
def test_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "ttl")


def test_error_names_the_field_and_never_overflows() -> None:
    with pytest.raises(ConfigError, match="^ttl"):
        parse_duration("1y", "ttl")
    with pytest.raises(ConfigError, match="100 years"):
        parse_duration("9999999999999h")
    with pytest.raises(ConfigError):
        parse_duration(True)
