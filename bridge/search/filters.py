"""QIDO-RS filter sets for search values: the building blocks of each parameter's QIDO translation. Pure.

A translation returns *alternatives*: a list of QIDO filter sets whose union covers every study a criterion can
match, or ``None`` when QIDO cannot narrow it (``ne``, ``:missing``), or ``[]`` when nothing can match. QIDO's
answer is only a superset: every row is then checked exactly against the FHIR it maps to.

Client values never widen the query: ``* ? \\`` were refused by the parser. Characters outside the URL's
unreserved set are replaced by our own ``*`` (some PACSes, Orthanc among them, do not percent-decode query values
and would otherwise match nothing); the exact check makes up for the wider match.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TypeVar

from bridge.datatypes import is_uid
from bridge.qido.source import qido_value
from bridge.search.dates import DateValue

Filters = dict[str, str]
Alternatives = list[Filters] | None

#: UIDs in one QIDO UID-list filter.
UID_CHUNK = 50
# Studies are stored under their local date; the bridge reads instants: a day's slack on each side of a range.
_SLACK = dt.timedelta(days=1)
_INSTANT = dt.timedelta(microseconds=1)  # ranges are [low, high): the last instant inside is high - 1 µs

V = TypeVar("V")


def each(filters: Callable[[V], list[Filters]]) -> Callable[[Sequence[V]], Alternatives]:
    """A translation from one for each OR value: the union of theirs (``[]`` for a value nothing can match)."""

    def alternatives(values: Sequence[V]) -> Alternatives:
        return unique([alternative for value in values for alternative in filters(value)])

    return alternatives


def matching(key: str, value: str) -> list[Filters]:
    """One attribute matched on a client's value, made safe for the PACS (see the module docstring). An empty
    value names nothing: QIDO would read it as universal matching, every study."""
    return [{key: qido_value(value)}] if value else []


def uid_list(key: str, uids: Sequence[str | None]) -> list[Filters]:
    """A UID-list filter over the valid UIDs among ``uids`` (an invalid one names no study: ``[]`` if none is)."""
    return uid_lists(key, [uid for uid in dict.fromkeys(uids) if uid is not None and is_uid(uid)])


def uid_lists(key: str, uids: Sequence[str]) -> list[Filters]:
    """UID lists are comma-separated in QIDO: one filter set per ``UID_CHUNK`` UIDs (URLs have limits)."""
    return [{key: ",".join(uids[i : i + UID_CHUNK])} for i in range(0, len(uids), UID_CHUNK)]


def date_range(key: str, values: Sequence[DateValue]) -> Alternatives:
    """One DA range filter covering every OR value (with a day's slack), or None where it cannot narrow."""
    lows: list[dt.date | None] = []
    highs: list[dt.date | None] = []
    for value in values:
        if value.prefix == "ne":
            return None
        # A target (a study's started) spans at most a day; the slack covers any zone difference.
        low = high = None
        if value.prefix in ("eq", "ge"):
            low = _day(value.low, -_SLACK)
        elif value.prefix in ("gt", "sa"):
            low = _day(value.high, -2 * _SLACK)
        if value.prefix in ("eq", "le"):
            high = _day(value.high, _SLACK - _INSTANT)
        elif value.prefix in ("lt", "eb"):
            high = _day(value.low, _SLACK - _INSTANT)
        lows.append(low)
        highs.append(high)
    low = None if None in lows else min(d for d in lows if d)
    high = None if None in highs else max(d for d in highs if d)
    if low is None and high is None:
        return None
    return [{key: f"{_da(low)}-{_da(high)}"}]


def both_ranges(left: str, right: str) -> str:
    """The DA range both ``low-high`` ranges cover (an empty end is open; an empty result matches nothing)."""
    left_low, _, left_high = left.partition("-")
    right_low, _, right_high = right.partition("-")
    low = max(left_low, right_low)  # "" sorts first: an open end loses to a set one
    high = min(h for h in (left_high, right_high) if h) if left_high or right_high else ""
    return f"{low}-{high}"


def empty_range(value: str | None) -> bool:
    low, _, high = (value or "").partition("-")
    return bool(low and high and low > high)


def unique(alternatives: list[Filters]) -> list[Filters]:
    seen: dict[tuple[tuple[str, str], ...], Filters] = {}
    for alternative in alternatives:
        seen.setdefault(tuple(sorted(alternative.items())), alternative)
    return list(seen.values())


def _day(instant: dt.datetime, shift: dt.timedelta) -> dt.date:
    """The date of ``instant + shift``, held within the calendar (year 1 to 9999)."""
    try:
        return (instant + shift).date()
    except OverflowError:
        return dt.date.min if shift < dt.timedelta(0) else dt.date.max


def _da(day: dt.date | None) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" if day else ""
