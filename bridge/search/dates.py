"""FHIR date search values: parsing (``ge2024-03``, ``2024-03-05T10:00:00+01:00``) into the instant range their
precision spans, and R5's comparison of two ranges (search.html#prefix): pure, no I/O.

A date without a zone, or a whole day, is read in the bridge's zone (BRIDGE_TIMEZONE, else UTC). Every range is
``[low, high)`` in UTC, held within the calendar at its ends (0001-01-01, 9999-12-31).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from bridge.errors import InvalidRequest

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")

_DATE = re.compile(
    r"^(?P<prefix>[a-z]{2})?(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)


@dataclass(frozen=True)
class DateValue:
    """A date search value: its prefix and the instant range ``[low, high)`` its precision spans."""

    prefix: str
    low: dt.datetime
    high: dt.datetime


def parse_date(name: str, value: str, zone: dt.tzinfo = dt.UTC) -> DateValue:
    """A FHIR date search value with its prefix (``eq`` when none); ``name`` is the parameter, for the error."""
    match = _DATE.match(value)
    if not match:
        raise InvalidRequest(f"{name}: {value!r} is not a FHIR date (e.g. ge2024-03, 2024-03-05T10:00:00+01:00)")
    prefix = match["prefix"] or "eq"
    if prefix == "ap":
        raise InvalidRequest(f"{name}: the ap prefix is not supported")
    if prefix not in PREFIXES:
        raise InvalidRequest(f"{name}: {prefix!r} is not a date prefix ({', '.join(PREFIXES)})")
    try:
        low, high = _span(match, zone)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{name}: {value!r} is not a real date or time ({exc})") from None
    return DateValue(prefix, low, high)


def target_range(value: str, zone: dt.tzinfo = dt.UTC) -> tuple[dt.datetime, dt.datetime]:
    """The instants a date or dateTime the bridge emitted spans: a date is the whole day in ``zone``; a dateTime
    is its second (the same grammar as a search value, without prefix)."""
    parsed = parse_date("date", value, zone)
    return parsed.low, parsed.high


def date_matches(value: DateValue, target: str, zone: dt.tzinfo = dt.UTC) -> bool:
    """FHIR R5 date search: the search value and the target are both ranges (search.html#prefix)."""
    low, high = target_range(target, zone)
    contained = value.low <= low and high <= value.high
    match value.prefix:
        case "eq":
            return contained
        case "ne":
            return not contained
        case "gt":
            return high > value.high
        case "lt":
            return low < value.low
        case "ge":
            return high > value.high or contained
        case "le":
            return low < value.low or contained
        case "sa":
            return low >= value.high
        case "eb":
            return high <= value.low
    raise ValueError(f"unsupported prefix {value.prefix}")


def _span(match: re.Match[str], zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The ``[low, high)`` instants a parsed date or dateTime spans at its precision."""
    year = int(match["year"])
    tz = _zone(match["zone"]) if match["zone"] else zone
    if match["month"] is None:
        start, end = dt.datetime(year, 1, 1), _after(dt.datetime(year, 1, 1), years=1)
    elif match["day"] is None:
        start = dt.datetime(year, int(match["month"]), 1)
        end = _after(start, months=1)
    elif match["hour"] is None:
        start = dt.datetime(year, int(match["month"]), int(match["day"]))
        end = _after(start, days=1)
    else:
        start = dt.datetime(year, int(match["month"]), int(match["day"]), int(match["hour"]), int(match["minute"]))
        if match["second"] is None:
            end = _after(start, minutes=1)
        else:
            start = start.replace(second=int(match["second"]))
            if match["fraction"] is None:
                end = _after(start, seconds=1)
            else:
                digits = match["fraction"][:6]
                start = start.replace(microsecond=int(digits.ljust(6, "0")))
                end = _after(start, microseconds=10 ** (6 - len(digits)))
    return _utc(start, tz), _utc(end, tz)


def _zone(text: str) -> dt.tzinfo:
    """``Z`` or ``±hh:mm``; a space stands for ``+`` (an unencoded ``+`` in a URL arrives as one)."""
    if text == "Z":
        return dt.UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"offset {text} out of range")
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def _utc(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """A local time as a UTC instant, held within the calendar at its ends (0001-01-01, 9999-12-31)."""
    try:
        return naive.replace(tzinfo=tz).astimezone(dt.UTC)
    except OverflowError:
        edge = dt.datetime.min if naive.year == dt.MINYEAR else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


def _after(start: dt.datetime, **step: int) -> dt.datetime:
    """``start`` plus a step (a year, a month, a day…) in local time, or the calendar's end past 9999."""
    try:
        if "years" in step:
            return start.replace(year=start.year + step["years"])
        if "months" in step:
            return start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
        return start + dt.timedelta(**step)
    except (ValueError, OverflowError):
        return dt.datetime.max
