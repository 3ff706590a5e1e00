"""From a ``SearchQuery`` to the QIDO-RS queries that find candidates: pure, no I/O.

Each criterion becomes *alternatives*: a list of QIDO filter sets whose union covers every study the criterion
can match (one per OR value, or one UID list), or ``None`` when QIDO cannot narrow it (``ne``, ``:missing``), or
``[]`` when nothing can match. QIDO's answer is only a superset: every row is then checked exactly against the
FHIR it maps to (``bridge.search.match``), because PACSes ignore filters they do not support and differ in case
and character handling.

Client values never widen the query: ``* ? \\`` were refused by the parser. Characters outside the URL's
unreserved set are replaced by our own ``*`` (some PACSes, Orthanc among them, do not percent-decode query values
and would otherwise match nothing); the exact check makes up for the wider match.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bridge import terminology
from bridge.errors import TooCostly
from bridge.qido.source import qido_value
from bridge.search.parameters import BY_NAME, Level
from bridge.search.query import Criterion, DateValue, Reference, SearchQuery, Token, TypedToken

Filters = dict[str, str]

DCM = terminology.DCM
SNOMED = terminology.SNOMED
ACSN = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
DICOM_UID = "urn:dicom:uid"
STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Studies are stored under their local date; the bridge reads instants: a day's slack on each side of a range.
_SLACK = dt.timedelta(days=1)
#: The most QIDO queries one search may fan out to at the study level, by default (BRIDGE_SEARCH_MAX_QUERIES).
MAX_QUERIES = 30
#: UIDs in one QIDO UID-list filter.
UID_CHUNK = 50
PATIENT_PARAMETERS = frozenset({"patient", "subject"})
#: Study-level filters that narrow a search to a few studies by themselves.
NARROWING_KEYS = frozenset({"PatientID", "StudyInstanceUID", "AccessionNumber"})
#: Study-level keys that series and instance queries accept everywhere.
LOWER_LEVEL_KEYS = frozenset({"PatientID", "StudyInstanceUID"})
_INSTANT = dt.timedelta(microseconds=1)  # ranges are [low, high): the last instant inside is high - 1 µs


@dataclass(frozen=True)
class LevelQueries:
    """The QIDO queries (their union) that find the candidates of one series- or instance-level criterion."""

    criterion: Criterion
    level: Level
    queries: tuple[Filters, ...]


@dataclass(frozen=True)
class Plan:
    #: Study-level queries whose union holds every candidate; None when no study-level criterion narrows.
    study_queries: tuple[Filters, ...] | None
    #: One entry per series- or instance-level criterion; its candidates are intersected with the rest.
    level_queries: tuple[LevelQueries, ...]
    #: Some criterion can match nothing: no PACS query is needed at all.
    unsatisfiable: bool = False


def plan_search(query: SearchQuery, max_queries: int = MAX_QUERIES) -> Plan:
    """The QIDO queries for a search (see the module docstring); more than ``max_queries`` at any one level is
    refused before any is asked (the search's budget bounds them all together as they are asked)."""
    study: list[tuple[bool, list[Filters] | None]] = []
    lower: list[tuple[Criterion, list[Filters] | None]] = []
    for criterion in query.criteria:
        alternatives = alternatives_for(criterion)
        if alternatives == []:
            return Plan(None, (), unsatisfiable=True)
        if BY_NAME[criterion.name].level is Level.STUDY:
            study.append((criterion.name in PATIENT_PARAMETERS, alternatives))
        else:
            lower.append((criterion, alternatives))
    # Patient criteria first, and always asked of the PACS: its match on its own stored PatientID is a second,
    # independent check of identity, whatever its JSON makes of the value (Orthanc drops what its character
    # set cannot encode).
    study.sort(key=lambda item: not item[0])
    study_queries = _combine(study, max_queries)
    if study_queries and all(_empty_range(q.get("StudyDate")) for q in study_queries):
        return Plan(None, (), unsatisfiable=True)  # started=ge2025&started=le2020: no date is in both
    if study_queries and any("StudyDate" in q and q.keys() & NARROWING_KEYS for q in study_queries):
        # A patient, a UID or an accession number narrows to a few studies already: let the bridge alone decide
        # the date, so studies stored with a malformed date (1997.04.24), which no PACS date range matches, are
        # still found. (Not a modality: the date is what keeps such a search within its budget.)
        study_queries = tuple(
            {k: v for k, v in q.items() if k != "StudyDate" or not q.keys() & NARROWING_KEYS} for q in study_queries
        )
    single = study_queries[0] if study_queries and len(study_queries) == 1 else {}
    narrowing = {key: value for key, value in single.items() if key in LOWER_LEVEL_KEYS}
    level_queries = []
    for criterion, alternatives in lower:
        level = BY_NAME[criterion.name].level
        # Relational QIDO: study-level filters narrow series and instance queries too (a PACS that ignores them
        # returns more, which the intersection removes). Only keys every level carries: Orthanc answers a
        # series query holding ModalitiesInStudy with nothing.
        queries = tuple({**narrowing, **alt} for alt in alternatives) if alternatives is not None else (narrowing,)
        level_queries.append(LevelQueries(criterion, level, queries))
    if sum(len(level.queries) for level in level_queries) > max_queries:
        raise TooCostly(f"the search needs more than {max_queries} series and instance queries; use fewer OR values")
    if study_queries is None and not level_queries:
        study_queries = ({},)  # no criteria at all: every study
    return Plan(study_queries, tuple(level_queries))


def _combine(criteria: Sequence[tuple[bool, list[Filters] | None]], max_queries: int) -> tuple[Filters, ...] | None:
    """AND of criteria, each an OR of filter sets: one QIDO query, or a fan-out over ORs. A criterion that must
    narrow (patient) always takes part; any other OR after the first is left to the exact check rather than
    multiply the queries."""
    narrowing = [(must, alternatives) for must, alternatives in criteria if alternatives is not None]
    if not narrowing:
        return None if not criteria else ({},)
    combos: list[Filters] = [{}]
    for must, alternatives in narrowing:
        if must or len(alternatives) == 1 or len(combos) == 1:
            combos = _unique([_merge(combo, alt) for combo in combos for alt in alternatives])
        if len(combos) > max_queries:
            raise TooCostly(f"the search needs more than {max_queries} PACS queries; use fewer OR values")
    return tuple(combos)


def _merge(left: Filters, right: Filters) -> Filters:
    merged = dict(left)
    for key, value in right.items():
        if key == "StudyDate" and key in merged:
            merged[key] = _both_ranges(merged[key], value)  # started=ge…&started=le…: one range, both ends
        elif key not in merged:
            merged[key] = value
        # else: two different filters on one attribute: keep the first, the exact check does the rest
    return merged


def _empty_range(value: str | None) -> bool:
    low, _, high = (value or "").partition("-")
    return bool(low and high and low > high)


def _both_ranges(left: str, right: str) -> str:
    """The DA range both ``low-high`` ranges cover (an empty end is open; an empty result matches nothing)."""
    left_low, _, left_high = left.partition("-")
    right_low, _, right_high = right.partition("-")
    low = max(left_low, right_low)  # "" sorts first: an open end loses to a set one
    high = min(h for h in (left_high, right_high) if h) if left_high or right_high else ""
    return f"{low}-{high}"


def alternatives_for(criterion: Criterion) -> list[Filters] | None:
    """The QIDO filter sets whose union covers the criterion (see the module docstring)."""
    name, values = criterion.name, criterion.values
    if criterion.modifier == "missing":
        return None
    if name == "_id":
        return _uid_list("StudyInstanceUID", [v.code for v in values if isinstance(v, Token)])
    if name == "series":
        return _uid_list("SeriesInstanceUID", [v.code for v in values if isinstance(v, Token)])
    if name == "instance":
        return _uid_list("SOPInstanceUID", [v.code for v in values if isinstance(v, Token)])
    if name == "dicom-class":
        uids = [sop_class_uid(v) for v in values if isinstance(v, Token)]
        return _uid_list("SOPClassUID", [u for u in uids if u])
    if name == "started":
        return _date_filter([v for v in values if isinstance(v, DateValue)])
    alternatives: list[Filters] = []
    for value in values:
        alternatives.extend(_value_filters(name, value))
    return _unique(alternatives)


def _value_filters(name: str, value: object) -> list[Filters]:
    """The filter sets for one OR value of a study- or series-level criterion; [] if it can match nothing."""
    if name == "identifier" and isinstance(value, Token):
        if value.system == DICOM_UID or (value.system is None and value.code.startswith("urn:oid:")):
            uid = value.code.removeprefix("urn:oid:")
            return [{"StudyInstanceUID": uid}] if _UID.match(uid) else []
        return [{"AccessionNumber": qido_value(value.code)}]
    if name == "identifier" and isinstance(value, TypedToken):
        return [{"AccessionNumber": qido_value(value.value)}] if (value.type_system, value.type_code) == ACSN else []
    if name in ("patient", "subject"):
        if isinstance(value, Reference):
            return [{"PatientID": qido_value(value.id)}] if value.type == "Patient" and value.id else []
        if isinstance(value, Token):
            return [{"PatientID": qido_value(value.code)}]
    if name == "based-on" and isinstance(value, Token):
        return [{"AccessionNumber": qido_value(value.code)}]
    if name == "modality" and isinstance(value, Token):
        return [{"ModalitiesInStudy": value.code}] if value.system in (None, DCM) and _is_code(value.code) else []
    if name == "body-site" and isinstance(value, Token):
        if value.system not in (None, SNOMED):
            return []
        return [{"BodyPartExamined": term} for term in terminology.body_part_terms(value.code)]
    if name == "status" and isinstance(value, Token):
        return [{}] if value.system in (None, STATUS_SYSTEM) and value.code == "available" else []
    if name == "endpoint":
        return [{}]  # every study references the one Endpoint; the exact check compares the id
    return [{}]


def _uid_list(key: str, uids: list[str]) -> list[Filters]:
    return uid_lists(key, [uid for uid in dict.fromkeys(uids) if _UID.match(uid)])


def uid_lists(key: str, uids: Sequence[str]) -> list[Filters]:
    """UID lists are comma-separated in QIDO: one filter set per ``UID_CHUNK`` UIDs (URLs have limits)."""
    return [{key: ",".join(uids[i : i + UID_CHUNK])} for i in range(0, len(uids), UID_CHUNK)]


def _date_filter(values: list[DateValue]) -> list[Filters] | None:
    """One StudyDate range covering every OR value (with a day's slack), or None where it cannot narrow."""
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
    return [{"StudyDate": f"{_da(low)}-{_da(high)}"}]


def _day(instant: dt.datetime, shift: dt.timedelta) -> dt.date:
    """The date of ``instant + shift``, held within the calendar (year 1 to 9999)."""
    try:
        return (instant + shift).date()
    except OverflowError:
        return dt.date.min if shift < dt.timedelta(0) else dt.date.max


def _da(day: dt.date | None) -> str:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" if day else ""


def sop_class_uid(token: Token) -> str | None:
    """The SOP Class UID of a dicom-class value (``urn:oid:1.2…`` or ``1.2…``, system rfc3986 or none)."""
    if token.system not in (None, "urn:ietf:rfc:3986"):
        return None
    uid = token.code.removeprefix("urn:oid:")
    return uid if _UID.match(uid) else None


def _is_code(code: str) -> bool:
    return bool(re.fullmatch(r"[A-Z0-9_]{1,16}", code))


def _unique(alternatives: list[Filters]) -> list[Filters]:
    seen: dict[tuple[tuple[str, str], ...], Filters] = {}
    for alt in alternatives:
        seen.setdefault(tuple(sorted(alt.items())), alt)
    return list(seen.values())
