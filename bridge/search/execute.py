"""Running a search against the PACS: candidates from the plan's QIDO queries, each checked exactly, then one
deterministic order sliced into pages, whose studies are assembled concurrently.

Every page re-runs the candidate queries (study rows are small), so a page link needs no server state and
works on any replica; as long as the PACS's content does not change, pages neither repeat nor skip a study.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.aio import gather_all
from bridge.cache.service import StudyCache
from bridge.errors import BridgeError, Conflict, NotFound
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, fhir_id, raw_text, text, uid
from bridge.mapping.imagingstudy import (
    MappingOptions,
    StudyRows,
    imaging_study,
    instance_element,
    series_element,
)
from bridge.qido.paging import RowMerger
from bridge.qido.source import QidoSource
from bridge.search.match import instance_matches, series_matches, study_matches, target_range
from bridge.search.parameters import BY_NAME, Level
from bridge.search.plan import PATIENT_PARAMETERS, UID_CHUNK, LevelQueries, plan_search
from bridge.search.query import Criterion, SearchQuery, Token
from bridge.studies import read_study

log = logging.getLogger(__name__)

Key = tuple[str, str | None]  # (StudyInstanceUID, PatientID)


@dataclass(frozen=True)
class Candidate:
    """A matching study (one patient's part of it) and its study-level resource."""

    row: DicomJson
    summary: dict[str, Any]

    @property
    def key(self) -> Key:
        return (self.summary["id"], text(self.row, tags.PATIENT_ID))


@dataclass
class SearchResult:
    total: int
    #: The page's studies: study-level resources, or complete ones when series were asked for.
    resources: list[dict[str, Any]] = field(default_factory=list)
    #: Warnings for the Bundle (studies left out and why).
    warnings: list[str] = field(default_factory=list)


async def run_search(
    source: QidoSource, query: SearchQuery, options: MappingOptions, *, complete: bool, cache: StudyCache | None = None
) -> SearchResult:
    """The page ``query`` asks for; ``complete`` reads every series and instance of the page's studies (through
    ``cache`` when given)."""
    zone: dt.tzinfo = options.zone or dt.UTC
    candidates, warnings = await find_candidates(source, query, options, zone)
    candidates.sort(key=lambda c: _order(c, zone))
    result = SearchResult(total=len(candidates), warnings=warnings)
    page = candidates[query.offset : query.offset + query.count] if query.summary != "count" else []
    if not complete:
        result.resources = [c.summary for c in page]
        return result
    reads = await gather_all(*(_complete(source, c, options, cache) for c in page))
    for candidate, read in zip(page, reads, strict=True):
        if isinstance(read, BridgeError):
            result.warnings.append(f"study {candidate.summary['id']} could not be read: {read.diagnostics}")
        else:
            result.resources.append(read)
    return result


async def find_candidates(
    source: QidoSource, query: SearchQuery, options: MappingOptions, zone: dt.tzinfo
) -> tuple[list[Candidate], list[str]]:
    """Every study that meets every criterion, checked exactly; studies whose UID spans patients set apart."""
    plan = plan_search(query)
    if plan.unsatisfiable:
        return [], []
    lower: set[Key] | None = None
    for level_queries in plan.level_queries:
        matched = await _lower_level_matches(source, level_queries, options)
        lower = matched if lower is None else _intersect(lower, matched)
    if plan.study_queries is not None:
        rows = await _study_rows(source, plan.study_queries)
    else:
        uids = sorted({key[0] for key in lower or set()})
        chunks = [uids[i : i + UID_CHUNK] for i in range(0, len(uids), UID_CHUNK)]
        rows = await _study_rows(source, tuple({"StudyInstanceUID": ",".join(chunk)} for chunk in chunks))
    study_criteria = [c for c in query.criteria if BY_NAME[c.name].level is Level.STUDY]
    candidates = []
    for row in rows:
        if uid(row, tags.STUDY_INSTANCE_UID) is None:
            continue
        summary = imaging_study(StudyRows(row), options).resource
        candidate = Candidate(row, summary)
        if all(study_matches(c, summary, zone) for c in study_criteria) and (
            lower is None or _admitted(candidate.key, lower)
        ):
            candidates.append(candidate)
    warnings: list[str] = []
    patient_criteria = [c for c in study_criteria if c.name in PATIENT_PARAMETERS]
    if patient_criteria:
        candidates, warnings = _unambiguous_patients(candidates, patient_criteria)
    kept, more = _one_patient_each(candidates, scoped=query.patient_scoped)
    return kept, warnings + more


def _unambiguous_patients(candidates: list[Candidate], criteria: list[Criterion]) -> tuple[list[Candidate], list[str]]:
    """Identity is decided on the PACS's raw PatientID and, unless the search names the identifier system, on
    its being assigned by one issuer only: one PatientID from two hospitals is two patients."""
    intact = [c for c in candidates if raw_text(c.row, tags.PATIENT_ID) == text(c.row, tags.PATIENT_ID)]
    pinned = all(isinstance(v, Token) and v.system for c in criteria for v in c.values)
    if pinned:
        return intact, []
    issuers: dict[str | None, set[str | None]] = {}
    for candidate in intact:
        issuers.setdefault(text(candidate.row, tags.PATIENT_ID), set()).add(
            text(candidate.row, tags.ISSUER_OF_PATIENT_ID)
        )
    ambiguous = {patient for patient, found in issuers.items() if len(found) > 1}
    warnings = [
        f"PatientID {patient!r} is assigned by {len(issuers[patient])} issuers in the PACS; its studies were "
        "left out: search with patient:identifier=<system>|<value>"
        for patient in sorted(p for p in ambiguous if p is not None)
    ]
    return [c for c in intact if text(c.row, tags.PATIENT_ID) not in ambiguous], warnings


async def _study_rows(source: QidoSource, queries: tuple[dict[str, str], ...]) -> list[DicomJson]:
    merged = RowMerger((tags.STUDY_INSTANCE_UID, tags.PATIENT_ID))
    for rows in await gather_all(*(source.search_studies(filters, tags.STUDY_FIELDS) for filters in queries)):
        merged.add(rows)
    return merged.rows


async def _lower_level_matches(source: QidoSource, plan: LevelQueries, options: MappingOptions) -> set[Key]:
    """The (study, patient) keys of series or instance rows that meet one criterion exactly."""
    if plan.level is Level.SERIES:
        answers = await gather_all(
            *(source.search_series(None, tags.SERIES_FIELDS, filters=f)
              for f in plan.queries)
        )  # fmt: skip
    else:
        answers = await gather_all(
            *(source.search_instances(None, None, tags.INSTANCE_FIELDS, filters=f)
              for f in plan.queries)
        )  # fmt: skip
    matched: set[Key] = set()
    for row in (row for rows in answers for row in rows):
        study_uid = uid(row, tags.STUDY_INSTANCE_UID)
        if study_uid is None or not _lower_row_matches(plan, row, options):
            continue
        matched.add((study_uid, text(row, tags.PATIENT_ID)))
    return matched


def _lower_row_matches(plan: LevelQueries, row: DicomJson, options: MappingOptions) -> bool:
    if plan.level is Level.SERIES:
        if fhir_id(row, tags.SERIES_INSTANCE_UID) is None:
            return False
        return series_matches(plan.criterion, series_element(row, options))
    if fhir_id(row, tags.SOP_INSTANCE_UID) is None or fhir_id(row, tags.SOP_CLASS_UID) is None:
        return False
    return instance_matches(plan.criterion, instance_element(row))


def _intersect(left: set[Key], right: set[Key]) -> set[Key]:
    return {key for key in left if _admitted(key, right)} | {key for key in right if _admitted(key, left)}


def _admitted(key: Key, keys: set[Key]) -> bool:
    """A (study, patient) key is in ``keys``; a side that does not know the patient matches by study alone."""
    study_uid, patient = key
    return (
        key in keys
        or (study_uid, None) in keys
        or (patient is None and any(k[0] == study_uid for k in keys))
    )  # fmt: skip


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


async def _complete(
    source: QidoSource, candidate: Candidate, options: MappingOptions, cache: StudyCache | None
) -> dict[str, Any] | BridgeError:
    """The complete resource of one candidate, scoped to its patient (another patient's part never mixes in)."""
    study_uid, patient = candidate.key
    if cache is not None:
        try:
            cached: dict[str, Any] = orjson.loads((await cache.read(study_uid)).entry.body)
        except (Conflict, NotFound):
            pass  # the UID is shared by several patients, or a remembered 404 is older than the candidate: read below
        else:
            # Only if it is this patient's: a UID shared since it was cached must not show another's study.
            if cached["subject"].get("identifier", {}).get("value") == patient:
                return cached
    try:
        return (await read_study(source, study_uid, options, patient=patient)).resource
    except NotFound as exc:  # gone since the candidate query: say so rather than fail the page
        return exc


def _order(candidate: Candidate, zone: dt.tzinfo) -> tuple[int, float, str]:
    """Newest first; studies without a date last; the UID breaks ties, so the order is total and stable."""
    started = candidate.summary.get("started")
    if started is None:
        return (1, 0.0, candidate.summary["id"])
    return (0, -target_range(started, zone)[0].timestamp(), candidate.summary["id"])
