"""Exact matching of search criteria against the FHIR the bridge emits: pure, no I/O.

The PACS's answer to a QIDO query is only a candidate list. Each candidate row is mapped to the element it
becomes (a study-level ImagingStudy, a series, an instance) and the criterion is decided on that by its
parameter's row (``bridge.search.parameters``), with FHIR's own rules (token ``system|code``, date ranges and
prefixes, references). What a client filters on is therefore exactly what it receives, whatever the PACS made of
the filter.
"""

from __future__ import annotations

import datetime as dt

from bridge.search.parameters import Element, Level
from bridge.search.query import Criterion


def matches(criterion: Criterion, element: Element, zone: dt.tzinfo = dt.UTC) -> bool:
    """Whether an element of the criterion's level meets it (any of its OR values)."""
    check = criterion.form.check
    return any(check(value, element, zone) for value in criterion.values)


def study_matches(criterion: Criterion, study: Element, zone: dt.tzinfo = dt.UTC) -> bool:
    """Whether a study-level ImagingStudy meets a study-level criterion."""
    return matches(_at(criterion, Level.STUDY), study, zone)


def series_matches(criterion: Criterion, series: Element) -> bool:
    return matches(_at(criterion, Level.SERIES), series)


def instance_matches(criterion: Criterion, instance: Element) -> bool:
    return matches(_at(criterion, Level.INSTANCE), instance)


def _at(criterion: Criterion, level: Level) -> Criterion:
    if criterion.parameter.level is not level:
        raise ValueError(f"{criterion.name} is not a {level}-level criterion")
    return criterion
