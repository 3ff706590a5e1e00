"""DICOM DA/TM/offset -> FHIR dateTime, as one table."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from bridge.mapping.datetimes import fhir_datetime

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("date", "time", "offset", "zone", "expected"),
    [
        ("20240305", "143000", "+0100", None, "2024-03-05T14:30:00+01:00"),
        ("20240305", "143000.123456", "-0500", None, "2024-03-05T14:30:00.123456-05:00"),
        ("20240305", "1430", "+0000", None, "2024-03-05T14:30:00+00:00"),
        ("20240305", "14", "+0530", None, "2024-03-05T14:00:00+05:30"),
        ("20240305", "143000", None, None, "2024-03-05"),  # no zone known: the date alone, never a guess
        ("20240305", None, "+0100", None, "2024-03-05"),
        ("20240305", "143000", None, BERLIN, "2024-03-05T14:30:00+01:00"),  # winter
        ("20240715", "143000", None, BERLIN, "2024-07-15T14:30:00+02:00"),  # summer
        ("20240715", "143000", "-0300", BERLIN, "2024-07-15T14:30:00-03:00"),  # the DICOM offset wins
        ("1997.04.24", "14:04:38", "+0100", None, "1997-04-24T14:04:38+01:00"),  # legacy forms repaired
        ("2024-03-05", None, None, None, "2024-03-05"),
        ("20240305", "235960", "+0100", None, "2024-03-05T23:59:59+01:00"),  # leap second clamped
        ("20240230", "143000", "+0100", None, None),  # no such day
        ("2024030", None, None, None, None),
        ("", "143000", None, None, None),
        (None, None, None, None, None),
        ("20240305", "250000", "+0100", None, "2024-03-05"),  # a bad time loses the time, not the date
        ("20240305", "14a", "+0100", None, "2024-03-05"),
        ("20240305", "143000", "+2500", None, "2024-03-05"),  # a bad offset is no offset
        ("20240305", "143000", "0100", None, "2024-03-05"),
        ("20240305", "143000", "+0160", None, "2024-03-05"),
        # DICOM's range is -1200..+1400: beyond it the offset is absent (the date alone, or the configured zone)
        ("20240305", "143000", "-1200", None, "2024-03-05T14:30:00-12:00"),
        ("20240305", "143000", "+1400", None, "2024-03-05T14:30:00+14:00"),
        ("20240305", "143000", "-1201", None, "2024-03-05"),
        ("20240305", "143000", "-1400", None, "2024-03-05"),
        ("20240305", "143000", "+1401", None, "2024-03-05"),
        ("20240305", "143000", "-1300", BERLIN, "2024-03-05T14:30:00+01:00"),
        ("09990101", "120000", "+0100", None, "0999-01-01T12:00:00+01:00"),  # years are always four digits
        ("00010101", "000000", "+0000", None, "0001-01-01T00:00:00+00:00"),
    ],
)
def test_fhir_datetime(date: str | None, time: str | None, offset: str | None, zone: ZoneInfo | None,
                       expected: str | None) -> None:  # fmt: skip
    assert fhir_datetime(date, time, offset, zone) == expected
