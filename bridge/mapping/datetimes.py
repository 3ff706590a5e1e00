"""DICOM DA/TM (+ TimezoneOffsetFromUTC) to a FHIR ``dateTime``.

FHIR requires a zone on any dateTime that carries a time. DICOM stores local time and, optionally, the
offset in TimezoneOffsetFromUTC (0008,0201). So:

- date, time and offset         -> ``2024-03-05T14:30:00+01:00``
- date and time, no offset, but a configured IANA zone -> the zone's offset on that date (DST-aware)
- otherwise                     -> the date alone, ``2024-03-05``: an honest, coarser value rather than a guess

Legacy forms that real files carry (``1997.04.24``, ``14:04:38``) are repaired; anything else that does not
parse is dropped (None), never passed through as invalid FHIR.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_DATE = re.compile(r"^(\d{4})[.\-]?(\d{2})[.\-]?(\d{2})$")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
_OFFSET_MIN, _OFFSET_MAX = dt.timedelta(hours=-12), dt.timedelta(hours=14)


def parse_date(value: str | None) -> dt.date | None:
    """A DICOM DA (or its legacy dotted form) as a date; None if absent or not a real calendar date."""
    if not value:
        return None
    match = _DATE.match(value.strip())
    if not match:
        return None
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_time(value: str | None) -> tuple[dt.time, str] | None:
    """A DICOM TM (or ``hh:mm:ss``) as a time plus its fraction digits as written; None if malformed."""
    if not value:
        return None
    match = _TIME.match(value.strip())
    if not match:
        return None
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    fraction = match[4] or ""
    # DICOM allows second 60 (a leap second); Python and FHIR do not: clamp rather than drop the time.
    second = min(second, 59)
    if hour > 23 or minute > 59:
        return None
    return dt.time(hour, minute, second), fraction


def parse_offset(value: str | None) -> dt.timezone | None:
    """TimezoneOffsetFromUTC (``+0100``, ``-0500``) as a timezone; None if absent or out of range."""
    if not value:
        return None
    match = _OFFSET.match(value.strip())
    if not match:
        return None
    hours, minutes = int(match[2]), int(match[3])
    delta = dt.timedelta(hours=hours, minutes=minutes)
    if match[1] == "-":
        delta = -delta
    # DICOM bounds offsets to -1200..+1400 (PS3.5 6.2, DT), the zones the world has: one past them is garbage,
    # and a time read with it would name the wrong instant. It is treated as absent.
    if minutes > 59 or not _OFFSET_MIN <= delta <= _OFFSET_MAX:
        return None
    return dt.timezone(delta)


def fhir_datetime(date: str | None, time: str | None, offset: str | None, zone: ZoneInfo | None = None) -> str | None:
    """The FHIR dateTime for a DICOM date, time and offset, per the module's rules."""
    day = parse_date(date)
    if day is None:
        return None
    parsed = parse_time(time)
    tz: dt.tzinfo | None = parse_offset(offset)
    if parsed is None or (tz is None and zone is None):
        return day.isoformat()
    clock, fraction = parsed
    local = dt.datetime.combine(day, clock)
    if tz is None:
        tz = zone
    utc_offset = local.replace(tzinfo=tz).utcoffset()
    if utc_offset is None:  # pragma: no cover - zoneinfo always answers
        return day.isoformat()
    # isoformat, not strftime: %Y does not zero-pad years before 1000 on every platform.
    stamp = local.isoformat(timespec="seconds")
    return f"{stamp}{'.' + fraction if fraction else ''}{_format_offset(utc_offset)}"


def _format_offset(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"
