"""From a ``SearchQuery`` to the QIDO-RS queries that find candidates: pure, no I/O.

Each criterion becomes *alternatives* by its parameter's row (``bridge.search.parameters``; what alternatives
are is told in ``bridge.search.filters``); this module combines them: the study-level criteria ANDed into as few
QIDO queries as keep every match, the series- and instance-level ones into their own queries, whose studies
are intersected with the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import TooCostly
from bridge.search.filters import Filters, both_ranges, empty_range, uid_lists, unique
from bridge.search.parameters import Level
from bridge.search.query import Criterion, SearchQuery

__all__ = ["LevelQueries", "Plan", "alternatives_for", "plan_search", "uid_lists"]

#: The most QIDO queries one search may fan out to at the study level, by default (BRIDGE_SEARCH_MAX_QUERIES).
MAX_QUERIES = 30
#: Study-level filters that narrow a search to a few studies by themselves.
NARROWING_KEYS = frozenset({"PatientID", "StudyInstanceUID", "AccessionNumber"})
#: Study-level keys that series and instance queries accept everywhere.
LOWER_LEVEL_KEYS = frozenset({"PatientID", "StudyInstanceUID"})


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


def alternatives_for(criterion: Criterion) -> list[Filters] | None:
    """The QIDO filter sets whose union covers the criterion, by its parameter's row."""
    return criterion.form.qido(criterion.values)


def plan_search(query: SearchQuery, max_queries: int = MAX_QUERIES) -> Plan:
    """The QIDO queries for a search (see the module docstring); more than ``max_queries`` at any one level is
    refused before any is asked (the search's budget bounds them all together as they are asked)."""
    study: list[tuple[bool, list[Filters] | None]] = []
    lower: list[tuple[Criterion, list[Filters] | None]] = []
    for criterion in query.criteria:
        if criterion.parameter.level is Level.RESOURCE:
            continue  # decided on the complete studies, after the candidates are found
        alternatives = alternatives_for(criterion)
        if alternatives == []:
            return Plan(None, (), unsatisfiable=True)
        if criterion.parameter.level is Level.STUDY:
            study.append((criterion.parameter.names_patient, alternatives))
        else:
            lower.append((criterion, alternatives))
    # Patient criteria first, and always asked of the PACS: its match on its own stored PatientID is a second,
    # independent check of identity, whatever its JSON makes of the value (Orthanc drops what its character
    # set cannot encode).
    study.sort(key=lambda item: not item[0])
    study_queries = _combine(study, max_queries)
    if study_queries and all(empty_range(q.get("StudyDate")) for q in study_queries):
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
        # Relational QIDO: study-level filters narrow series and instance queries too (a PACS that ignores them
        # returns more, which the intersection removes). Only keys every level carries: Orthanc answers a
        # series query holding ModalitiesInStudy with nothing.
        queries = tuple({**narrowing, **alt} for alt in alternatives) if alternatives is not None else (narrowing,)
        level_queries.append(LevelQueries(criterion, criterion.parameter.level, queries))
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
            combos = unique([_merge(combo, alt) for combo in combos for alt in alternatives])
        if len(combos) > max_queries:
            raise TooCostly(f"the search needs more than {max_queries} PACS queries; use fewer OR values")
    return tuple(combos)


def _merge(left: Filters, right: Filters) -> Filters:
    merged = dict(left)
    for key, value in right.items():
        if key == "StudyDate" and key in merged:
            merged[key] = both_ranges(merged[key], value)  # started=ge…&started=le…: one range, both ends
        elif key not in merged:
            merged[key] = value
        # else: two different filters on one attribute: keep the first, the exact check does the rest
    return merged
