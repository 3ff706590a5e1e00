"""FHIR search parameters -> a typed ``SearchQuery``: pure, no I/O.

Comma separates OR values, a repeated parameter ANDs; every malformed value is an ``InvalidRequest`` naming the
parameter. Values that DICOM matching would read as wildcards or separators (``* ? \\``) are refused here, so no
client value can widen the query the PACS sees.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge.errors import InvalidRequest, TooCostly
from bridge.search.parameters import (
    BY_NAME,
    CHAINS,
    DEFAULT_COUNT,
    FORMAT_PARAMETERS,
    INCLUDE_ENDPOINT,
    MAX_COUNT,
    RESULT_PARAMETERS,
)

#: The top-level elements of an ImagingStudy, for ``_elements``.
IMAGING_STUDY_ELEMENTS = frozenset(
    [
        "identifier",
        "status",
        "modality",
        "subject",
        "encounter",
        "started",
        "basedOn",
        "partOf",
        "referrer",
        "procedure",
        "location",
        "reason",
        "note",
        "description",
        "numberOfSeries",
        "numberOfInstances",
        "series",
        "endpoint",
    ]
)
SUMMARY_MODES = ("true", "false", "data", "count")
#: Values one search may hold (OR and AND together): each may cost a PACS query.
MAX_VALUES = 100
#: Characters of criteria values: the next/previous links must stay GET URLs any server accepts.
MAX_LENGTH = 4000

_DICOM_UNSAFE = re.compile(r"[*?\\]")
#: ``str.isdigit`` and ``int`` accept other scripts' digits (``²``, ``٣``): a number here is ASCII digits alone.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATE = re.compile(
    r"^(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True)
class Token:
    """``system|code``; ``system`` None means any system, "" means explicitly none."""

    system: str | None
    code: str


@dataclass(frozen=True)
class TypedToken:
    """``:of-type`` value: identifier type ``system|code`` and the identifier value."""

    type_system: str
    type_code: str
    value: str


@dataclass(frozen=True)
class Reference:
    type: str
    id: str


@dataclass(frozen=True)
class PatientRule:
    """``Patient/<id>`` -> DICOM PatientID, from the BRIDGE_PATIENT_REFERENCE template (``mrn-{PatientID}``)."""

    template: str = "{PatientID}"

    def patient_id(self, patient_id: str) -> str | None:
        """The PatientID a Patient id stands for; None when the id does not fit the template."""
        prefix, _, suffix = self.template.partition("{PatientID}")
        if len(patient_id) <= len(prefix) + len(suffix) or not patient_id.startswith(prefix):
            return None
        if suffix and not patient_id.endswith(suffix):
            return None
        return patient_id[len(prefix) : len(patient_id) - len(suffix)]


@dataclass(frozen=True)
class DateValue:
    """A date search value: its prefix and the instant range ``[low, high)`` its precision spans."""

    prefix: str
    low: dt.datetime
    high: dt.datetime


Value = Token | TypedToken | Reference | DateValue | bool


@dataclass(frozen=True)
class Criterion:
    """One parameter occurrence: its values are ORed; criteria are ANDed."""

    name: str
    modifier: str | None
    values: tuple[Value, ...]
    #: The parameter and value as applied, for the self link.
    applied: tuple[str, str]


@dataclass(frozen=True)
class SearchQuery:
    criteria: tuple[Criterion, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    include_endpoint: bool = False
    #: ``_total``: ``accurate`` asks for a count even where a page could be read at the PACS without one.
    total: str | None = None
    #: Result parameters as applied, for the links.
    applied: tuple[tuple[str, str], ...] = ()
    #: Parameters ignored under lenient handling (named in the self link's absence and the log).
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def patient_scoped(self) -> bool:
        return any(c.name in ("patient", "subject") for c in self.criteria)


def parse_search(
    params: Iterable[tuple[str, str]],
    *,
    strict: bool = True,
    zone: dt.tzinfo = dt.UTC,
    patients: PatientRule = PatientRule(),
    base: str | None = None,
) -> SearchQuery:
    """Parse query or form parameters. Unknown parameters are refused, naming them all; ``strict=False``
    (``Prefer: handling=lenient``) ignores them instead. Refusing is the default because an unknown parameter
    ignored widens the search: ``?Patient=P2`` (a misspelt ``patient``) would return every patient's studies.

    ``zone`` is the zone of date search values without one (and of whole days): BRIDGE_TIMEZONE, else UTC.
    ``patients`` turns ``Patient/<id>`` into the PatientID it stands for. ``base`` is this server's FHIR base
    URL: an absolute reference is accepted only under it (None: no absolute reference is).
    """
    criteria: list[Criterion] = []
    result: dict[str, str] = {}
    ignored: list[str] = []
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if name in FORMAT_PARAMETERS:
            continue
        if name in RESULT_PARAMETERS:
            if name in result:
                raise InvalidRequest(f"{name} may be given once")
            result[name] = raw
            continue
        if name in CHAINS and not modifier:
            name, modifier = CHAINS[name], "identifier"
        elif "." in name and name.split(".")[0] in BY_NAME:
            raise InvalidRequest(f"chained search {key} is not supported (patient.identifier is)")
        parameter = BY_NAME.get(name)
        if parameter is None:
            ignored.append(key)
            continue
        if modifier == "Patient" and name in ("patient", "subject"):
            modifier = ""  # the type modifier: only Patient subjects exist here
        if modifier and modifier not in parameter.modifiers:
            allowed = ", ".join(f":{m}" for m in sorted(parameter.modifiers)) or "none"
            raise InvalidRequest(f"modifier :{modifier} is not supported on {name} (supported: {allowed})")
        if not raw:
            raise InvalidRequest(f"{key} has an empty value")
        values = tuple(_parse_value(name, modifier or None, value, zone, patients, base) for value in _split(key, raw))
        criteria.append(Criterion(name, modifier or None, values, (key, raw)))
        if len(values) > MAX_VALUES or sum(len(c.values) for c in criteria) > MAX_VALUES:
            raise TooCostly(f"a search may hold at most {MAX_VALUES} values; {key} brings more")
        if sum(len(c.applied[1]) for c in criteria) > MAX_LENGTH:
            raise TooCostly(f"the search's values exceed {MAX_LENGTH} characters: too long to page by links")
    if strict and ignored:
        raise InvalidRequest(_unknown(ignored))
    return _with_result_parameters(criteria, result, ignored, strict)


def _unknown(keys: Sequence[str]) -> str:
    """What to say of unknown parameters: their names, a known name that differs only in case, the way out."""
    known = {name.lower(): name for name in (*BY_NAME, *CHAINS, *RESULT_PARAMETERS, *FORMAT_PARAMETERS)}
    named = []
    for key in dict.fromkeys(keys):
        name, colon, modifier = key.partition(":")
        suggestion = known.get(name.lower())
        named.append(f"{key} (did you mean {suggestion}{colon}{modifier}?)" if suggestion else key)
    return (
        f"unknown search parameter{'s' if len(named) > 1 else ''}: {', '.join(named)}; the parameters served are "
        "listed in /fhir/metadata (names are case-sensitive). Send Prefer: handling=lenient to have unknown "
        "parameters ignored"
    )


def _split(key: str, raw: str) -> list[str]:
    r"""Comma-separated OR values. FHIR escapes a literal comma as ``\,``; DICOM cannot match one, so refuse it."""
    if _DICOM_UNSAFE.search(raw):
        raise InvalidRequest(
            f"{key}: the characters * ? \\ cannot be matched literally by a PACS (DICOM has no escape for them)"
        )
    values = raw.split(",")
    if any(not value for value in values):
        raise InvalidRequest(f"{key} has an empty value in its list")
    return values


def _parse_value(
    name: str, modifier: str | None, value: str, zone: dt.tzinfo, patients: PatientRule, base: str | None
) -> Value:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidRequest(f"{name}:missing takes true or false, not {value!r}")
        return value == "true"
    if name == "started":
        return parse_date(value, zone)
    if name in ("patient", "subject") and modifier is None:
        reference = _reference(name, value, "Patient", base)
        if reference.type != "Patient":
            return reference
        # Matched on the PatientID it stands for; an id outside the template stands for none ("").
        return Reference("Patient", patients.patient_id(reference.id) or "")
    if name == "endpoint":
        return _reference(name, value, "Endpoint", base)
    if name == "based-on" and modifier is None:
        raise InvalidRequest("based-on is supported as based-on:identifier=[system|]accession (or :missing)")
    if name == "identifier" and modifier == "of-type":
        parts = value.split("|")
        if len(parts) != 3 or not all(parts):
            raise InvalidRequest(f"identifier:of-type takes system|code|value, not {value!r}")
        return TypedToken(*parts)
    token = _token(name, value)
    if name in ("_id", "series", "instance") and not _FHIR_ID.match(token.code):
        raise InvalidRequest(f"{name}={value!r} is not a DICOM UID")
    return token


def _token(name: str, value: str) -> Token:
    if value.count("|") > 1:
        raise InvalidRequest(f"{name}: a token is [system|]code, not {value!r}")
    system, bar, code = value.rpartition("|")
    if not code:
        raise InvalidRequest(f"{name}: {value!r} has no code")
    return Token(system if bar else None, code)


def _reference(name: str, value: str, default_type: str, base: str | None) -> Reference:
    """``id``, ``Type/id``, or ``[base]/Type/id`` where ``base`` is this server's own."""
    parts = _relative(name, value, base).rstrip("/").split("/")
    if "_history" in parts:
        raise InvalidRequest(f"{name}: versioned references are not supported ({value!r})")
    if len(parts) > 2:
        raise InvalidRequest(f"{name}: {value!r} is not a reference (Type/id)")
    type_, id_ = (default_type, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if not re.fullmatch(r"[A-Z][A-Za-z]+", type_) or not id_:
        raise InvalidRequest(f"{name}: {value!r} is not a reference (Type/id)")
    return Reference(type_, id_)


#: A scheme (``http:``) before the first slash: an absolute URL. ``P:1`` stays an id (PatientIDs may hold ``:``).
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^/]*/|/")


def _relative(name: str, value: str, base: str | None) -> str:
    """The reference relative to this server: an absolute URL (or a path from the root) must be under ``base``.

    Another server's ``http://other/fhir/Patient/P1`` names another server's patient, whose id may mean someone
    else here: it is refused, never read as the local ``Patient/P1``."""
    if not _ABSOLUTE.match(value):
        return value
    url, own = urlsplit(value), urlsplit(base or "")
    root = own.path.rstrip("/") + "/"
    if (
        base is None
        or (url.scheme.lower(), url.netloc.lower()) != (own.scheme.lower(), own.netloc.lower())
        or not url.path.startswith(root)
        or url.query
        or url.fragment
    ):
        where = f"this server's base {base}" if base else "this server"
        raise InvalidRequest(f"{name}: {value!r} refers to another server; only references to {where} are searched")
    return url.path[len(root) :]


def parse_date(value: str, zone: dt.tzinfo = dt.UTC) -> DateValue:
    """A FHIR date search value with its prefix, as the instant range its precision spans."""
    match = _DATE.match(value)
    if not match:
        raise InvalidRequest(f"started: {value!r} is not a FHIR date (e.g. ge2024-03, 2024-03-05T10:00:00+01:00)")
    prefix = match["prefix"] or "eq"
    if prefix == "ap":
        raise InvalidRequest("started: the ap prefix is not supported")
    try:
        low, high = date_range(match, zone)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"started: {value!r} is not a real date or time ({exc})") from None
    return DateValue(prefix, low, high)


def date_range(match: re.Match[str], zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
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
    return _local(start, tz), _local(end, tz)


def _zone(text: str) -> dt.tzinfo:
    """``Z`` or ``±hh:mm``; a space stands for ``+`` (an unencoded ``+`` in a URL arrives as one)."""
    if text == "Z":
        return dt.UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"offset {text} out of range")
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def _local(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
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


def _with_result_parameters(
    criteria: Sequence[Criterion], result: dict[str, str], ignored: list[str], strict: bool
) -> SearchQuery:
    applied: list[tuple[str, str]] = []
    count = _non_negative(result, "_count", DEFAULT_COUNT)
    count = min(count, MAX_COUNT)  # never more than asked, and never more than the cap
    offset = _non_negative(result, "_offset", 0)
    summary = result.get("_summary")
    if summary is not None:
        if summary not in SUMMARY_MODES:
            raise InvalidRequest(f"_summary={summary} is not supported (supported: {', '.join(SUMMARY_MODES)})")
        applied.append(("_summary", summary))
    elements = None
    if "_elements" in result:
        elements = tuple(e.strip() for e in result["_elements"].split(",") if e.strip())
        unknown = sorted(set(elements) - IMAGING_STUDY_ELEMENTS)
        if unknown:
            raise InvalidRequest(f"_elements: {', '.join(unknown)} are not ImagingStudy elements")
        if summary is not None:
            raise InvalidRequest("_summary and _elements cannot be combined")
        applied.append(("_elements", ",".join(elements)))
    include = False
    if "_include" in result:
        wanted = result["_include"]
        if wanted in (INCLUDE_ENDPOINT, f"{INCLUDE_ENDPOINT}:Endpoint", "*"):
            include = True
            applied.append(("_include", INCLUDE_ENDPOINT))
        elif strict:
            raise InvalidRequest(f"_include={wanted} is not supported (supported: {INCLUDE_ENDPOINT})")
        else:
            ignored.append(f"_include={wanted}")
    total = result.get("_total")
    if total is not None:
        if total not in ("none", "estimate", "accurate"):
            raise InvalidRequest("_total takes none, estimate or accurate")
        applied.append(("_total", total))
    return SearchQuery(
        criteria=tuple(criteria), count=count, offset=offset, summary=summary, elements=elements,
        include_endpoint=include, total=total, applied=tuple(applied), ignored=tuple(ignored),
    )  # fmt: skip


def _non_negative(result: dict[str, str], name: str, default: int) -> int:
    raw = result.get(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise InvalidRequest(f"{name} takes a whole number ≥ 0, not {raw!r}")
    return int(raw)
