"""Exact matching of search criteria against the FHIR the bridge emits: pure, no I/O.

The PACS's answer to a QIDO query is only a candidate list. Each candidate row is mapped to the element it
becomes (a study-level ImagingStudy, a series, an instance) and the criterion is decided on that, with FHIR's
own rules (token ``system|code``, date ranges and prefixes, references). What a client filters on is therefore
exactly what it receives, whatever the PACS made of the filter.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bridge.search.plan import DCM, SNOMED, STATUS_SYSTEM, sop_class_uid
from bridge.search.query import Criterion, DateValue, Reference, Token, TypedToken, parse_date

Element = dict[str, Any]


def study_matches(criterion: Criterion, study: Element, zone: dt.tzinfo = dt.UTC) -> bool:
    """Whether a study-level ImagingStudy meets a study-level criterion (any of its OR values)."""
    return any(_study_value(criterion, value, study, zone) for value in criterion.values)


def series_matches(criterion: Criterion, series: Element) -> bool:
    if criterion.name == "series":
        return any(isinstance(v, Token) and v.system is None and v.code == series["uid"] for v in criterion.values)
    if criterion.name == "body-site":
        codings = series.get("bodySite", {}).get("concept", {}).get("coding", [])
        return any(isinstance(v, Token) and _coding_match(v, codings, SNOMED) for v in criterion.values)
    raise ValueError(f"{criterion.name} is not a series-level criterion")


def instance_matches(criterion: Criterion, instance: Element) -> bool:
    if criterion.name == "instance":
        return any(isinstance(v, Token) and v.system is None and v.code == instance["uid"] for v in criterion.values)
    if criterion.name == "dicom-class":
        code = instance["sopClass"]["code"]
        return any(isinstance(v, Token) and f"urn:oid:{sop_class_uid(v)}" == code for v in criterion.values)
    raise ValueError(f"{criterion.name} is not an instance-level criterion")


def _study_value(criterion: Criterion, value: object, study: Element, zone: dt.tzinfo) -> bool:
    name = criterion.name
    if criterion.modifier == "missing":
        element = {"started": "started", "based-on": "basedOn"}[name]
        return (element not in study) is value
    if name == "_id":
        return isinstance(value, Token) and value.system in (None, "") and value.code == study["id"]
    if name == "identifier":
        if isinstance(value, TypedToken):
            return any(_typed_match(value, identifier) for identifier in study.get("identifier", []))
        return isinstance(value, Token) and any(_identifier_match(value, i) for i in study.get("identifier", []))
    if name in ("patient", "subject"):
        identifier = study["subject"].get("identifier")
        if identifier is None:
            return False
        if isinstance(value, Reference):
            # The parser turned the Patient's id into the PatientID it stands for (BRIDGE_PATIENT_REFERENCE).
            return value.type == "Patient" and bool(value.id) and identifier.get("value") == value.id
        return isinstance(value, Token) and _identifier_match(value, identifier)
    if name == "started":
        return isinstance(value, DateValue) and "started" in study and _date_match(value, study["started"], zone)
    if name == "modality":
        codings = [c for concept in study.get("modality", []) for c in concept.get("coding", [])]
        return isinstance(value, Token) and _coding_match(value, codings, DCM)
    if name == "based-on":
        identifiers = [ref["identifier"] for ref in study.get("basedOn", []) if "identifier" in ref]
        return isinstance(value, Token) and any(_identifier_match(value, i) for i in identifiers)
    if name == "status":
        return isinstance(value, Token) and value.system in (None, STATUS_SYSTEM) and value.code == study["status"]
    if name == "endpoint":
        references = {ref.get("reference") for ref in study.get("endpoint", [])}
        return isinstance(value, Reference) and f"{value.type}/{value.id}" in references
    raise ValueError(f"{name} is not a study-level criterion")


def _identifier_match(token: Token, identifier: Element) -> bool:
    if identifier.get("value") != token.code:
        return False
    if token.system is None:
        return True
    return bool(identifier.get("system", "") == token.system)


def _typed_match(token: TypedToken, identifier: Element) -> bool:
    codings = identifier.get("type", {}).get("coding", [])
    typed = any((c.get("system"), c.get("code")) == (token.type_system, token.type_code) for c in codings)
    return typed and identifier.get("value") == token.value


def _coding_match(token: Token, codings: list[Element], system: str) -> bool:
    if token.system not in (None, system):
        return False
    return any(c.get("system") == system and c.get("code") == token.code for c in codings)


def _date_match(value: DateValue, started: str, zone: dt.tzinfo) -> bool:
    """FHIR R5 date search: the search value and the target are both ranges (search.html#prefix)."""
    low, high = target_range(started, zone)
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


def target_range(started: str, zone: dt.tzinfo = dt.UTC) -> tuple[dt.datetime, dt.datetime]:
    """The instants a ``started`` value spans: a date is the whole day in ``zone``; a dateTime is its second."""
    parsed = parse_date(started, zone)  # the same grammar as a search value, without prefix
    return parsed.low, parsed.high
