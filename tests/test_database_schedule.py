"""When a static role is due: periods, cron schedules in a time zone, rotation windows, clock jumps."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from nebula_credential.database import DatabaseInputError
from nebula_credential.database import schedule as s
from nebula_credential.database.templates import render

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[misc]


def test_period() -> None:
    assert not s.is_due(3600, "", "UTC", 0, 1000.0, 4599.0)
    assert s.is_due(3600, "", "UTC", 0, 1000.0, 4600.0)
    assert s.ttl(3600, "", "UTC", 0, 1000.0, 1000.0 - 86400) == 3600  # clock set back: never beyond the period
    assert s.ttl(3600, "", "UTC", 0, 1000.0, 1000.0 + 86400) == 0


def test_cron_in_a_time_zone_with_a_window() -> None:
    last = ts(2026, 3, 1, 3, 0)
    cron = "0 3 * * *"  # 03:00 Berlin time
    assert not s.is_due(0, cron, "Europe/Berlin", 3600, last, ts(2026, 3, 2, 2, 59))
    assert s.is_due(0, cron, "Europe/Berlin", 3600, last, ts(2026, 3, 2, 3, 0))
    assert s.is_due(0, cron, "Europe/Berlin", 3600, last, ts(2026, 3, 2, 3, 59))
    assert not s.is_due(0, cron, "Europe/Berlin", 3600, last, ts(2026, 3, 2, 4, 30))  # window missed: wait
    assert s.is_due(0, cron, "Europe/Berlin", 0, last, ts(2026, 3, 2, 4, 30))  # no window: any time after
    assert s.next_rotation(0, cron, "Europe/Berlin", last, last) == ts(2026, 3, 2, 3, 0)
    assert s.ttl(0, cron, "Europe/Berlin", 0, last, ts(2026, 3, 1, 15, 0)) == 12 * 3600
    # across the change to summer time (29 March 2026): still 03:00 local
    assert s.next_fire(cron, "Europe/Berlin", ts(2026, 3, 28, 12, 0)) == ts(2026, 3, 29, 3, 0)


def test_bad_schedules_are_input_errors() -> None:
    with pytest.raises(DatabaseInputError):
        s.check_schedule("not cron", "UTC")
    with pytest.raises(DatabaseInputError):
        s.check_schedule("0 3 * * *", "Mars/Olympus")


def test_templates_quote_identifiers_and_literals() -> None:
    psycopg = pytest.importorskip("psycopg")
    stmt = render("CREATE ROLE \"{{name}}\" WITH PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                  {"name": 'evil"; DROP TABLE x; --', "password": "p'w; DROP", "expiration": "2026-01-01"})
    text = stmt.as_string(None) if hasattr(stmt, "as_string") else str(stmt)
    assert text == ('CREATE ROLE "evil""; DROP TABLE x; --" WITH PASSWORD \'p\'\'w; DROP\' '
                    "VALID UNTIL '2026-01-01'")
    assert psycopg
    with pytest.raises(DatabaseInputError):
        render("GRANT {{nope}}", {})
