"""Running a search against the PACS: candidates from the plan's QIDO queries, each checked exactly, then one
deterministic order sliced into pages, whose studies are assembled concurrently.

Every page re-runs the candidate queries (study rows are small), so a page link needs no server state and
works on any replica; as long as the PACS's content does not change, pages neither repeat nor skip a study.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.aio import gather_all
from bridge.cache.service import StudyCache
from bridge.errors import BridgeError, BudgetExceeded, Conflict, NotFound, TooCostly
from bridge.fhirversion import FhirVersion
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, fhir_id, uid
from bridge.mapping.facts import StudyFacts
from bridge.mapping.identity import Identity, Owners, identity_of, merged_issuers
from bridge.mapping.imagingstudy import (
    MappingOptions,
    StudyRows,
    instance_element,
    series_element,
    study_facts,
)
from bridge.qido.budget import Budget, sharing, spending
from bridge.qido.paging import RowMerger
from bridge.qido.source import QidoSource
from bridge.render import imaging_study, r5
from bridge.search.dates import target_range
from bridge.search.filters import uid_lists
from bridge.search.match import instance_matches, matches, series_matches, study_matches
from bridge.search.parameters import PATIENT_PARAMETERS, Level
from bridge.search.plan import LevelQueries, Plan, plan_search
from bridge.search.query import Criterion, SearchQuery
from bridge.search.values import Reference, Token
from bridge.studies import read_study

log = logging.getLogger(__name__)

Key = tuple[str, Identity | None]  # (StudyInstanceUID, whose: None if the row does not say)


@dataclass(frozen=True)
class Candidate:
    """A matching study (one patient's part of it): its study-level facts, and their R5 rendering, which the
    criteria are matched on."""

    row: DicomJson
    summary: dict[str, Any]
    facts: StudyFacts

    @property
    def key(self) -> Key:
        return (self.summary["id"], identity_of(self.row))


@dataclass
class SearchResult:
    #: Every match across all pages; None where the page was read at the PACS and no count was made.
    total: int | None
    #: Whether a next page may hold more.
    has_next: bool = False
    #: The page's studies, in the version asked for: study-level resources, or complete ones when series were
    #: asked for.
    resources: list[dict[str, Any]] = field(default_factory=list)
    #: Warnings for the Bundle (studies left out and why).
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    """What one search may cost the PACS to find its candidates (BRIDGE_SEARCH_MAX_QUERIES, _MAX_ROWS)."""

    queries: int = 30
    rows: int = 5000


async def run_search(
    source: QidoSource,
    query: SearchQuery,
    options: MappingOptions,
    *,
    complete: bool,
    cache: StudyCache | None = None,
    limits: Limits = Limits(),
    version: FhirVersion = FhirVersion.R5,
) -> SearchResult:
    """The page ``query`` asks for, its resources in ``version``; ``complete`` reads every series and instance of
    the page's studies (through ``cache`` when given). Finding the candidates runs under one budget (``limits``)
    across every level; the page's studies are read as reads are (through the cache, one PACS read per study at
    a time). Criteria are matched on the R5 rendering whatever the version: both state the same facts."""
    zone: dt.tzinfo = options.zone or dt.UTC
    plan = plan_search(query, max_queries=limits.queries)
    if (needed := planned_requests(query, plan)) > limits.queries:
        # Refused before the PACS is asked anything: the requests would be spent, and the search refused anyway.
        raise TooCostly(
            f"the search needs at least {needed} PACS requests, more than the {limits.queries} a search may make "
            "(BRIDGE_SEARCH_MAX_QUERIES); use fewer OR values"
        )
    paged = paged_at_pacs(query, plan)
    try:
        with spending(Budget(limits.queries, limits.rows)):
            if paged:
                page, more, warnings = await _pacs_page(source, query, plan, options, zone)
                result = SearchResult(total=None, has_next=more, warnings=warnings)
            else:
                candidates, warnings = await find_candidates(source, query, plan, options, zone)
                candidates.sort(key=lambda c: _order(c, zone, oldest_first=query.sort == "started"))
    except BudgetExceeded as exc:
        raise TooCostly(f"the search is too broad: {exc.diagnostics}; {narrowing(query)}") from None
    whole: dict[str, dict[str, Any]] = {}  # complete resources already read, by id
    if not paged:
        if any(c.parameter.level is Level.RESOURCE for c in query.criteria):
            candidates, whole = await _on_resources(source, query, candidates, options, cache, warnings, version)
        end = query.offset + query.count
        result = SearchResult(total=len(candidates), has_next=end < len(candidates), warnings=warnings)
        page = candidates[query.offset : end] if query.summary != "count" else []
    if not complete:
        result.resources = [summary_in(c, version) for c in page]
        return result
    unread = [c for c in page if c.summary["id"] not in whole]
    reads = await gather_all(*(_complete(source, c, options, cache, version) for c in unread))
    served: dict[str, dict[str, Any] | BridgeError] = {**whole}
    served.update((c.summary["id"], read) for c, read in zip(unread, reads, strict=True))
    for candidate in page:
        read = served[candidate.summary["id"]]
        if isinstance(read, BridgeError):
            result.warnings.append(f"study {candidate.summary['id']} could not be read: {read.diagnostics}")
        else:
            result.resources.append(read)
    return result


#: Candidates a search may read whole to decide criteria on the complete resources (``_lastUpdated``).
MAX_READ_WHOLE = 100


async def _on_resources(
    source: QidoSource,
    query: SearchQuery,
    candidates: list[Candidate],
    options: MappingOptions,
    cache: StudyCache | None,
    warnings: list[str],
    version: FhirVersion,
) -> tuple[list[Candidate], dict[str, dict[str, Any]]]:
    """The candidates whose complete resources meet the criteria no QIDO row can decide (``_lastUpdated``, on
    ``meta``, which both versions write alike), and those resources in ``version``."""
    if len(candidates) > MAX_READ_WHOLE:
        raise TooCostly(
            f"the search has {len(candidates)} candidates, and _lastUpdated reads each whole: at most "
            f"{MAX_READ_WHOLE} are read; narrow it with a patient or a started range"
        )
    late = [c for c in query.criteria if c.parameter.level is Level.RESOURCE]
    zone: dt.tzinfo = options.zone or dt.UTC
    reads = await gather_all(*(_complete(source, c, options, cache, version) for c in candidates))
    kept, resources = [], {}
    for candidate, resource in zip(candidates, reads, strict=True):
        if isinstance(resource, BridgeError):
            warnings.append(f"study {candidate.summary['id']} could not be read: {resource.diagnostics}")
        elif all(matches(criterion, resource, zone) for criterion in late):
            kept.append(candidate)
            resources[candidate.summary["id"]] = resource
    return kept, resources


def paged_at_pacs(query: SearchQuery, plan: Plan) -> bool:
    """Whether the page can be read at the PACS, in the PACS's order: one study-level query, matched there as the
    bridge would match it (only parameters whose row says so, each bare: not ``modality``, for Orthanc 1.10
    applies ``limit`` before ``offset`` to a ModalitiesInStudy query, so pages past the first would come back
    empty, as if at the end), no count asked for (``_summary=count``, ``_count=0``, ``_total=accurate`` need every
    match) and no order (``_sort`` needs every match too)."""
    return (
        not plan.unsatisfiable
        and plan.study_queries is not None
        and len(plan.study_queries) == 1
        and not plan.level_queries
        and all(c.parameter.paged_at_pacs and not c.modifier for c in query.criteria)
        and query.summary != "count"
        and query.count > 0
        and query.total != "accurate"
        and query.sort is None
    )


def planned_requests(query: SearchQuery, plan: Plan) -> int:
    """The fewest PACS requests a plan can cost: each list it asks for, and one request past the end of each
    (no count proves those lists complete), plus a patient search's check of its studies' issuers (one series
    list at least)."""
    if plan.unsatisfiable:
        return 0
    lists = len(plan.study_queries or ()) + sum(len(level.queries) for level in plan.level_queries)
    if any(c.name in PATIENT_PARAMETERS for c in query.criteria) and plan.study_queries is not None:
        lists += 1
    return 2 * lists


def narrowing(query: SearchQuery) -> str:
    """What to add to a search that costs the PACS too much."""
    named = {c.name for c in query.criteria}
    hints = []
    if not named & PATIENT_PARAMETERS:
        hints.append("a patient (patient=… or patient:identifier=…)")
    if "started" not in named:
        hints.append("a started range (started=ge…&started=le…)")
    hints.append("fewer OR values" if any(len(c.values) > 1 for c in query.criteria) else "an identifier")
    return "narrow it with " + ", or ".join(hints)


async def _pacs_page(
    source: QidoSource, query: SearchQuery, plan: Plan, options: MappingOptions, zone: dt.tzinfo
) -> tuple[list[Candidate], bool, list[str]]:
    """One page of study rows read at the PACS, each checked exactly, and a full page taken to mean there may be a
    next one.

    A StudyInstanceUID the PACS lists more than once (two patients; or one patient in two entries, as Orthanc
    keeps PatientIDs differing in padding) can have its rows on two pages, and no page can tell on which the
    other is: the page's UIDs are asked for again, and those listed more than once are left out, with a warning
    that says how to get them (a search that names the patient, which reads every row of its studies)."""
    assert plan.study_queries is not None
    # As listed: a row merged away would shift the page boundary (the next page starts at the PACS's offset).
    rows = await source.search_studies(
        plan.study_queries[0], tags.STUDY_FIELDS, limit=query.count, offset=query.offset, as_listed=True
    )
    lists = uid_lists("StudyInstanceUID", sorted(_by_study(rows)))
    with sharing(len(lists)):
        answers = await gather_all(
            *(source.search_studies(filters, (tags.STUDY_INSTANCE_UID, *tags.OWNER), as_listed=True)
              for filters in lists)
        )  # fmt: skip
    listed = _by_study(row for rows in answers for row in rows)
    warnings = []
    for study_uid in sorted(u for u, held in listed.items() if len(held) > 1):
        patients = len({identity_of(row) for row in listed[study_uid]})
        warnings.append(
            f"study {study_uid} is registered under {patients} patients in the PACS and was left out; "
            "search with patient=… to get each patient's part of it"
            if patients > 1
            else f"study {study_uid} is listed {len(listed[study_uid])} times by the PACS (one patient) and was "
            "left out of this page, which cannot tell on which page it belongs; search with patient=… to get it"
        )
    kept = [row for row in rows if len(listed.get(uid(row, tags.STUDY_INSTANCE_UID) or "", ())) <= 1]
    return _matching(kept, query, [], options, zone), len(rows) == query.count, warnings


async def find_candidates(
    source: QidoSource, query: SearchQuery, plan: Plan, options: MappingOptions, zone: dt.tzinfo
) -> tuple[list[Candidate], list[str]]:
    """Every study that meets every criterion, checked exactly; studies whose UID spans patients set apart."""
    if plan.unsatisfiable:
        return [], []
    lower = [await _lower_level_matches(source, level_queries, options) for level_queries in plan.level_queries]
    if plan.study_queries is not None:
        rows = await _study_rows(source, plan.study_queries)
    else:
        uids = sorted(set.intersection(*(set(matches.studies) for matches in lower)) if lower else ())
        rows = await _study_rows(source, tuple(uid_lists("StudyInstanceUID", uids)))
    patient_criteria = [c for c in query.criteria if c.name in PATIENT_PARAMETERS]
    warnings: list[str] = []
    if patient_criteria and plan.study_queries is not None:
        # The PACS's answer to a patient is a superset (its case rules, our wildcards): nothing about a study that
        # another PatientID's row brought in may reach this search's answer, a warning included.
        named = {v.id if isinstance(v, Reference) else v.code
                 for c in patient_criteria for v in c.values if isinstance(v, Reference | Token)}  # fmt: skip
        rows = [row for row in rows if (owner := identity_of(row)) is not None and owner.patient_id in named]
        rows, warnings = await _without_merged_owners(source, rows)
    candidates = _matching(rows, query, lower, options, zone)
    if patient_criteria:
        candidates, ambiguous = _unambiguous_patients(candidates, patient_criteria)
        warnings += ambiguous
    kept, more = _one_patient_each(candidates, scoped=query.patient_scoped)
    return kept, warnings + more


def _matching(
    rows: list[DicomJson], query: SearchQuery, lower: list[LevelMatches], options: MappingOptions, zone: dt.tzinfo
) -> list[Candidate]:
    """The study rows that meet every criterion, checked exactly on the study-level resource each becomes."""
    study_criteria = [c for c in query.criteria if c.parameter.level is Level.STUDY]
    candidates = []
    for row in rows:
        if uid(row, tags.STUDY_INSTANCE_UID) is None:
            continue
        facts = study_facts(StudyRows(row), options)
        candidate = Candidate(row, r5.imaging_study(facts), facts)
        if all(study_matches(c, candidate.summary, zone) for c in study_criteria) and all(
            matches.admits(candidate.key) for matches in lower
        ):
            candidates.append(candidate)
    return candidates


async def _without_merged_owners(source: QidoSource, rows: list[DicomJson]) -> tuple[list[DicomJson], list[str]]:
    """Study rows less those the PACS keeps for two issuers' patients at once, with a warning for each.

    A PACS that keys patients by PatientID alone (Orthanc) answers one study row, with one issuer, for the
    series of two hospitals' patients sharing a PatientID and a StudyInstanceUID. The study row cannot show it;
    the series rows do: one series query per fifty of the candidates' UIDs."""
    studies = _by_study(rows)
    lists = uid_lists("StudyInstanceUID", sorted(studies))
    fields = (tags.STUDY_INSTANCE_UID, tags.SERIES_INSTANCE_UID, *tags.OWNER)
    with sharing(len(lists)):
        answers = await gather_all(*(source.search_series(None, fields, filters=filters) for filters in lists))
    series_of = _by_study(row for series in answers for row in series)
    merged = {study_uid for study_uid, own in studies.items() if merged_issuers(own, series_of.get(study_uid, ()))}
    warnings = [
        f"study {study_uid} holds series of one PatientID from two issuers as one study in the PACS and was left "
        "out: the PACS cannot tell its patients apart"
        for study_uid in sorted(merged)
    ]
    return [row for row in rows if uid(row, tags.STUDY_INSTANCE_UID) not in merged], warnings


def _by_study(rows: Iterable[DicomJson]) -> dict[str, list[DicomJson]]:
    """Rows by their StudyInstanceUID (rows without a usable one left out)."""
    grouped: dict[str, list[DicomJson]] = {}
    for row in rows:
        if (study_uid := uid(row, tags.STUDY_INSTANCE_UID)) is not None:
            grouped.setdefault(study_uid, []).append(row)
    return grouped


def _unambiguous_patients(candidates: list[Candidate], criteria: list[Criterion]) -> tuple[list[Candidate], list[str]]:
    """Unless the search names the identifier system, a PatientID assigned by more than one issuer is
    ambiguous: one PatientID from two hospitals is two patients. (Identity itself was decided on the raw
    PatientID, which the summary's subject carries: ``P1\u00a0`` never matches ``P1``.)"""
    if all(isinstance(v, Token) and v.system for c in criteria for v in c.values):
        return candidates, []
    issuers = Owners.of(c.row for c in candidates).issuers  # an issuer-less row says nothing against one
    ambiguous = {patient for patient, named in issuers.items() if len(named) > 1}
    warnings = [
        f"PatientID {patient!r} is assigned by {len(issuers[patient])} issuers in the PACS; its studies were "
        "left out: search with patient:identifier=<system>|<value>"
        for patient in sorted(ambiguous)
    ]
    kept = [c for c in candidates if c.key[1] is None or c.key[1].patient_id not in ambiguous]
    return kept, warnings


async def _study_rows(source: QidoSource, queries: tuple[dict[str, str], ...]) -> list[DicomJson]:
    merged = RowMerger((tags.STUDY_INSTANCE_UID, *tags.OWNER))
    with sharing(len(queries)):
        answers = await gather_all(*(source.search_studies(filters, tags.STUDY_FIELDS) for filters in queries))
    for rows in answers:
        merged.add(rows)
    return merged.rows


@dataclass
class LevelMatches:
    """The studies whose series or instance rows met one criterion, and whose rows they were (None: a row that
    names no patient, which stands for anyone). A row that gives no issuer stands for its PatientID under any."""

    studies: dict[str, set[Identity | None]] = field(default_factory=dict)

    def add(self, study_uid: str, row: DicomJson) -> None:
        self.studies.setdefault(study_uid, set()).add(identity_of(row))

    def admits(self, key: Key) -> bool:
        study_uid, owner = key
        found = self.studies.get(study_uid)
        if found is None:
            return False
        if owner is None or None in found:
            return True
        return any(
            row_owner is not None
            and row_owner.patient_id == owner.patient_id
            and row_owner.issuer in (None, owner.issuer)
            for row_owner in found
        )


async def _lower_level_matches(source: QidoSource, plan: LevelQueries, options: MappingOptions) -> LevelMatches:
    """The studies (and whose part of each) with series or instance rows that meet one criterion exactly."""
    with sharing(len(plan.queries)):
        if plan.level is Level.SERIES:
            answers = await gather_all(*(source.search_series(None, tags.SERIES_FIELDS, filters=f)
                                         for f in plan.queries))  # fmt: skip
        else:
            answers = await gather_all(*(source.search_instances(None, None, tags.INSTANCE_FIELDS, filters=f)
                                         for f in plan.queries))  # fmt: skip
    matched = LevelMatches()
    for row in (row for rows in answers for row in rows):
        study_uid = uid(row, tags.STUDY_INSTANCE_UID)
        if study_uid is not None and _lower_row_matches(plan, row, options):
            matched.add(study_uid, row)
    return matched


def _lower_row_matches(plan: LevelQueries, row: DicomJson, options: MappingOptions) -> bool:
    if plan.level is Level.SERIES:
        if fhir_id(row, tags.SERIES_INSTANCE_UID) is None:
            return False
        return series_matches(plan.criterion, series_element(row, options))
    if fhir_id(row, tags.SOP_INSTANCE_UID) is None or fhir_id(row, tags.SOP_CLASS_UID) is None:
        return False
    return instance_matches(plan.criterion, instance_element(row))


def _one_patient_each(candidates: list[Candidate], *, scoped: bool) -> tuple[list[Candidate], list[str]]:
    """A StudyInstanceUID under several patients cannot be one resource: outside a patient-scoped search such
    studies are left out, and the Bundle says so."""
    by_uid: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_uid.setdefault(candidate.summary["id"], []).append(candidate)
    kept, warnings = [], []
    for study_uid, group in by_uid.items():
        if len(group) == 1:
            kept.append(group[0])
        else:
            warnings.append(
                f"study {study_uid} is registered under {len(group)} patients in the PACS and was left out; "
                "search with patient=… to get each patient's part of it"
            )
    if scoped and warnings:  # a patient criterion admits one patient per UID; reaching here means a PACS bug
        log.warning("%s", "; ".join(warnings))
    return kept, warnings


def summary_in(candidate: Candidate, version: FhirVersion) -> dict[str, Any]:
    """A candidate's study-level resource (tagged SUBSETTED) in ``version``."""
    return candidate.summary if version is FhirVersion.R5 else imaging_study(candidate.facts, version)


async def _complete(
    source: QidoSource, candidate: Candidate, options: MappingOptions, cache: StudyCache | None, version: FhirVersion
) -> dict[str, Any] | BridgeError:
    """The complete resource of one candidate in ``version``, scoped to its patient (another patient's part never
    mixes in)."""
    study_uid, patient = candidate.key
    if cache is not None:
        try:
            cached: dict[str, Any] = orjson.loads((await cache.read(study_uid)).entry.body_of(version))
        except (Conflict, NotFound):
            pass  # the UID is shared by several patients, or a remembered 404 is older than the candidate: read below
        else:
            # Only if it is this patient's (a UID shared since it was cached must not show another's study): its
            # subject's identifier is the candidate's, value, system and issuer, and carries a value at all.
            identifier = candidate.summary["subject"].get("identifier", {})
            if "value" in identifier and cached["subject"].get("identifier") == identifier:
                return cached
    try:
        read = await read_study(source, study_uid, options, patient=patient)
        return read.resource if version is FhirVersion.R5 else imaging_study(read.facts, version)
    except (NotFound, Conflict) as exc:  # gone since the candidate query, or its rows are not this patient's alone
        return exc


def _order(candidate: Candidate, zone: dt.tzinfo, *, oldest_first: bool = False) -> tuple[int, float, str]:
    """Newest first (oldest first for ``_sort=started``); studies without a date last either way; the UID breaks
    ties, so the order is total and stable."""
    started = candidate.summary.get("started")
    if started is None:
        return (1, 0.0, candidate.summary["id"])
    instant = target_range(started, zone)[0].timestamp()
    return (0, instant if oldest_first else -instant, candidate.summary["id"])
