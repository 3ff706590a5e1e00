"""FHIR search parameters -> a typed ``SearchQuery``: pure, no I/O.

Comma separates OR values, a repeated parameter ANDs; every malformed value is an ``InvalidRequest`` naming the
parameter. Values that DICOM matching would read as wildcards or separators (``* ? \\``) are refused here, so no
client value can widen the query the PACS sees. How each parameter's values are read is its row's business
(``bridge.search.parameters``); this module handles what all of them share, and the result parameters.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import InvalidRequest, TooCostly
from bridge.fhirversion import FhirVersion
from bridge.search.parameters import (
    CHAINS,
    DEFAULT_COUNT,
    FORMAT_PARAMETERS,
    INCLUDE_ENDPOINT,
    MAX_COUNT,
    NAMED_IN,
    NOT_SERVED_IN,
    PATIENT_PARAMETERS,
    RESULT_PARAMETERS,
    Form,
    SearchParameter,
)
from bridge.search.values import DEFAULT_PATIENTS, Context, PatientRule, Value

__all__ = ["Criterion", "PatientRule", "SearchQuery", "parse_search"]

#: The elements of an ImagingStudy in each version, for ``_elements`` (``resourceType``, which fhirpy always names,
#: is kept too).
_COMMON_ELEMENTS = (
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "status",
    "modality",
    "subject",
    "encounter",
    "started",
    "basedOn",
    "referrer",
    "location",
    "note",
    "description",
    "numberOfSeries",
    "numberOfInstances",
    "series",
    "endpoint",
)
IMAGING_STUDY_ELEMENTS = {
    FhirVersion.R5: frozenset([*_COMMON_ELEMENTS, "partOf", "procedure", "reason"]),
    FhirVersion.R4: frozenset([*_COMMON_ELEMENTS, "interpreter", "procedureReference", "procedureCode",
                               "reasonCode", "reasonReference"]),
}  # fmt: skip
SUMMARY_MODES = ("true", "false", "data", "count")
TOTAL_MODES = ("none", "estimate", "accurate")
#: ``_totalMethod`` (Aidbox's, sent by fhirpy's ``count()``) as the ``_total`` it means.
_TOTAL_METHODS = {"count": "accurate", "estimate": "estimate", "none": "none"}
#: ``_sort`` keys served: by ``started``, oldest or newest first (studies without a date last either way).
SORT_KEYS = ("started", "-started")
#: Values one search may hold (OR and AND together): each may cost a PACS query.
MAX_VALUES = 100
#: Characters of criteria values: the next/previous links must stay GET URLs any server accepts.
MAX_LENGTH = 4000

_DICOM_UNSAFE = re.compile(r"[*?\\]")
#: ``str.isdigit`` and ``int`` accept other scripts' digits (``²``, ``٣``): a number here is ASCII digits alone.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Criterion:
    """One parameter occurrence: its values are ORed; criteria are ANDed."""

    parameter: SearchParameter
    #: The modifier as written ("" for none).
    modifier: str
    values: tuple[Value, ...]
    #: The parameter and value as applied, for the self link; None for one the server added (a grant's patients).
    applied: tuple[str, str] | None

    @property
    def name(self) -> str:
        return self.parameter.name

    @property
    def form(self) -> Form[Any]:
        return self.parameter.forms[self.modifier]


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
    #: ``_sort``, one of ``SORT_KEYS``; None: the default order (newest first, or the PACS's own where a page is
    #: read there).
    sort: str | None = None
    #: Result parameters as applied, for the links.
    applied: tuple[tuple[str, str], ...] = ()
    #: Parameters ignored under lenient handling (named in the self link's absence and the log).
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def patient_scoped(self) -> bool:
        return any(c.name in PATIENT_PARAMETERS for c in self.criteria)


def parse_search(
    params: Iterable[tuple[str, str]],
    *,
    strict: bool = True,
    zone: dt.tzinfo = dt.UTC,
    patients: PatientRule = DEFAULT_PATIENTS,
    base: str | None = None,
    version: FhirVersion = FhirVersion.R5,
) -> SearchQuery:
    """Parse query or form parameters. Unknown parameters are refused, naming them all; ``strict=False``
    (``Prefer: handling=lenient``) ignores them instead. Refusing is the default because an unknown parameter
    ignored widens the search: ``?Patient=P2`` (a misspelt ``patient``) would return every patient's studies.

    ``zone`` is the zone of date search values without one (and of whole days): BRIDGE_TIMEZONE, else UTC.
    ``patients`` turns ``Patient/<id>`` into the PatientID it stands for. ``base`` is this server's FHIR base
    URL: an absolute reference is accepted only under it (None: no absolute reference is). ``version`` is the
    FHIR version whose parameter names are read (R4's ``bodysite``, R5's ``body-site``).
    """
    context = Context(zone, patients, base)
    by_name, not_served = NAMED_IN[version], NOT_SERVED_IN[version]
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
        elif "." in name and name.split(".")[0] in by_name:
            raise InvalidRequest(f"chained search {key} is not supported (patient.identifier is)")
        if (named := name.split(".")[0]) in not_served:  # chained too: ignoring it would widen the search
            raise InvalidRequest(
                f"search parameter {named} of FHIR {version.value} is not supported: {not_served[named]}"
            )
        parameter = by_name.get(name)
        if parameter is None:
            ignored.append(key)
            continue
        form = parameter.forms.get(modifier)
        if form is None:
            allowed = ", ".join(f":{m}" for m in sorted(parameter.modifiers)) or "none"
            raise InvalidRequest(
                f"modifier :{modifier} is not supported on {name} (supported: {allowed})"
                if modifier
                else f"{name} is served only with a modifier: "
                + ", ".join(f"{name}:{m}" for m in sorted(parameter.modifiers))
            )
        if not raw:
            raise InvalidRequest(f"{key} has an empty value")
        values = tuple(form.parse(name, value, context) for value in _split(key, raw))
        criteria.append(Criterion(parameter, modifier, values, (key, raw)))
        if len(values) > MAX_VALUES or sum(len(c.values) for c in criteria) > MAX_VALUES:
            raise TooCostly(f"a search may hold at most {MAX_VALUES} values; {key} brings more")
        if sum(len(c.applied[1]) for c in criteria if c.applied) > MAX_LENGTH:
            raise TooCostly(f"the search's values exceed {MAX_LENGTH} characters: too long to page by links")
    if strict and ignored:
        raise InvalidRequest(_unknown(ignored, version))
    return _with_result_parameters(criteria, result, ignored, strict, version)


def _unknown(keys: Sequence[str], version: FhirVersion) -> str:
    """What to say of unknown parameters: their names, a known name that differs only in case or, across
    versions, in spelling (``bodysite``, ``body-site``), the way out."""
    named_in = NAMED_IN[version]
    known = {name.lower(): name for name in (*named_in, *CHAINS, *RESULT_PARAMETERS, *FORMAT_PARAMETERS)}
    known |= {name.lower().replace("-", ""): name for name in named_in}
    named = []
    for key in dict.fromkeys(keys):
        name, colon, modifier = key.partition(":")
        suggestion = known.get(name.lower()) or known.get(name.lower().replace("-", ""))
        named.append(f"{key} (did you mean {suggestion}{colon}{modifier}?)" if suggestion else key)
    return (
        f"unknown search parameter{'s' if len(named) > 1 else ''}: {', '.join(named)}; the parameters served, by "
        f"FHIR {version.value}'s names, are listed in the base's metadata (names are case-sensitive). Send "
        "Prefer: handling=lenient to have unknown parameters ignored"
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


def _with_result_parameters(
    criteria: Sequence[Criterion], result: dict[str, str], ignored: list[str], strict: bool, version: FhirVersion
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
    elements = _elements(result.get("_elements"), version)
    if elements is not None:
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
    total = _total(result)
    if total is not None:
        applied.append(("_total", total))
    sort = result.get("_sort")
    if sort is not None and sort not in SORT_KEYS:
        if strict:
            raise InvalidRequest(_unsupported_sort(sort))
        ignored.append(f"_sort={sort}")
        sort = None
    if sort is not None:
        applied.append(("_sort", sort))
    return SearchQuery(
        criteria=tuple(criteria), count=count, offset=offset, summary=summary, elements=elements,
        include_endpoint=include, total=total, sort=sort, applied=tuple(applied), ignored=tuple(ignored),
    )  # fmt: skip


def _elements(raw: str | None, version: FhirVersion) -> tuple[str, ...] | None:
    """``_elements``: the elements to keep (the mandatory ones are kept anyway, so naming them is harmless)."""
    if raw is None:
        return None
    if raw.startswith("-"):
        raise InvalidRequest("_elements: excluding elements (-name) is not supported; name the elements to keep")
    elements = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    unknown = [e for e in elements if e not in IMAGING_STUDY_ELEMENTS[version]]
    if unknown:
        raise InvalidRequest(
            f"_elements: not FHIR {version.value} ImagingStudy elements: {', '.join(unknown)} (name top-level "
            "elements, e.g. "
            "_elements=identifier,started)"
        )
    return elements


def _total(result: dict[str, str]) -> str | None:
    total = result.get("_total")
    if total is not None and total not in TOTAL_MODES:
        raise InvalidRequest(f"_total takes {', '.join(TOTAL_MODES)}, not {total!r}")
    method = result.get("_totalMethod")
    if method is None:
        return total
    if method not in _TOTAL_METHODS:
        raise InvalidRequest(f"_totalMethod takes {', '.join(_TOTAL_METHODS)}, not {method!r}")
    if total is not None and total != _TOTAL_METHODS[method]:
        raise InvalidRequest(f"_total={total} and _totalMethod={method} disagree")
    return _TOTAL_METHODS[method]


def _unsupported_sort(sort: str) -> str:
    keys = [key.strip() for key in sort.split(",")]
    served = ", ".join(SORT_KEYS)
    if any(key.lstrip("-") == "_lastUpdated" for key in keys):
        return (
            f"_sort={sort} is not supported: a PACS keeps no modification time a search could order by "
            f"(sorts served: {served})"
        )
    if len(keys) > 1:
        return f"_sort={sort}: one sort key is served, one of {served}"
    return f"_sort={sort} is not supported (sorts served: {served})"


def _non_negative(result: dict[str, str], name: str, default: int) -> int:
    raw = result.get(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise InvalidRequest(f"{name} takes a whole number ≥ 0, not {raw!r}")
    return int(raw)
