"""Reading one study from the PACS and turning it into an ImagingStudy.

The PACS is not trusted: every row it returns is checked against what was asked (a PACS may ignore a filter
or a path), rows that cannot become valid FHIR are dropped with a warning naming their UID, and the mapper's
notes (repairs, count disagreements) are logged, each once however often its study is read.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.aio import gather_all
from bridge.datatypes import is_uid
from bridge.errors import Conflict, InvalidRequest, NotFound, UpstreamError
from bridge.logs import Once
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, fhir_id, items, text, uid, unsigned
from bridge.mapping.facts import StudyFacts
from bridge.mapping.identity import Identity, Owners, merged_issuers
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, study_facts
from bridge.qido.paging import RowMerger
from bridge.qido.source import QidoSource
from bridge.render import r5

log = logging.getLogger(__name__)

#: Series whose instances have titles (DocumentTitle, or an SR's Concept Name) worth a metadata read.
TITLED_MODALITIES = frozenset({"SR", "KO", "DOC"})
#: The mapper's notes logged so far. A study is read again and again (searches, the refresh, an expired entry) and
#: its notes ("series X: no Modality") say the same each time: news once. A note names its study or series.
NOTES_LOGGED = Once(4096)


def check_study_id(study_id: str) -> str:
    """The id if it is a StudyInstanceUID (ImagingStudy ids are the UID itself), else ``InvalidRequest``."""
    if not is_uid(study_id):
        shown = study_id if len(study_id) <= 80 else study_id[:80] + "…"
        raise InvalidRequest(
            f"ImagingStudy id {shown!r} is not a DICOM StudyInstanceUID (digits and dots, at most 64 characters)"
        )
    return study_id


async def fetch_study(source: QidoSource, study_uid: str, patient: Identity | None = None) -> StudyRows:
    """The study row, its series and every instance of each, as the PACS has them.

    With ``patient`` the read is scoped to that patient's part of the study: rows of other patients sharing the
    StudyInstanceUID are out of scope and left out. Without it they are a ``Conflict``. Rows are asked for by
    UID alone and their PatientID and IssuerOfPatientID are compared by the bridge, exactly and on raw values
    (``bridge.mapping.identity``): a PACS's own PatientID filter may widen (wildcards, case) or miss (values its
    character set lost).
    """
    study_rows, series_rows = await gather_all(
        source.search_studies({"StudyInstanceUID": study_uid}, tags.STUDY_FIELDS),
        # Asked at once with the study row, whose count then says whether this is the whole list.
        source.search_series(study_uid, tags.SERIES_FIELDS, prove=False),
    )
    study_rows = [row for row in study_rows if uid(row, tags.STUDY_INSTANCE_UID) == study_uid]
    study = _the_study(study_rows, study_uid, patient, Owners.of(study_rows, series_rows))
    expected = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_SERIES)
    if expected is None or len(series_rows) < expected:
        # Fewer rows than the PACS counts (a silent cap: page up to the count), or no count to tell (prove the
        # list's end by asking past it): read again.
        series_rows = await source.search_series(study_uid, tags.SERIES_FIELDS, expected=expected)
    scope = _scope(study_uid, study, study_rows, series_rows, scoped=patient is not None)
    listed = _checked_series(series_rows, study_uid, scope)
    instance_lists = await gather_all(
        *(_series_instances(source, study_uid, series_uid, row, scope) for series_uid, row in listed)
    )
    series = [SeriesRows(row, instances) for (_, row), instances in zip(listed, instance_lists, strict=True)]
    if expected is not None and len(listed) < expected:
        series += await _series_from_metadata(source, study_uid, scope, {uid for uid, _ in listed}, expected)
    return StudyRows(study, series)


@dataclass(frozen=True)
class StudyRead:
    """A study read from the PACS: its study row (for the cache's change signal) and its facts, which
    ``bridge.render`` writes in either version."""

    study: DicomJson
    facts: StudyFacts

    @functools.cached_property
    def resource(self) -> dict[str, Any]:
        """The R5 ImagingStudy, rendered on first use (the cache renders both versions at once instead)."""
        return r5.imaging_study(self.facts)


async def read_study(
    source: QidoSource, study_uid: str, options: MappingOptions, patient: Identity | None = None
) -> StudyRead:
    """The ImagingStudy for one StudyInstanceUID, scoped to ``patient`` as ``fetch_study`` explains, with the
    mapper's notes logged once (``NotFound``, ``Conflict`` or an ``UpstreamError`` else)."""
    rows = await fetch_study(source, check_study_id(study_uid), patient=patient)
    facts = study_facts(rows, options)
    for note in facts.notes:
        if NOTES_LOGGED.first(note):
            log.warning("%s", note)
    return StudyRead(rows.study, facts)


async def _series_instances(
    source: QidoSource, study_uid: str, series_uid: str, row: DicomJson, scope: Scope
) -> list[DicomJson]:
    """Every instance of one series: QIDO first, WADO-RS metadata where QIDO lists fewer than the PACS counts
    (a hard cap) or leaves document titles out (sequences are not returned by every QIDO service)."""
    expected = unsigned(row, tags.NUMBER_OF_SERIES_RELATED_INSTANCES)
    rows = await source.search_instances(study_uid, series_uid, tags.INSTANCE_FIELDS, expected=expected)
    short = expected is not None and len(rows) < expected
    untitled = (text(row, tags.MODALITY) or "").upper() in TITLED_MODALITIES and any(not _titled(r) for r in rows)
    if short or untitled:
        try:
            metadata = await source.series_metadata(study_uid, series_uid)
        except UpstreamError as exc:
            # Best effort: the QIDO list stands, and a shortfall is logged by the mapper's count check.
            log.warning("series %s: WADO-RS metadata unavailable (%s)", series_uid, exc.diagnostics)
        else:
            if short:
                log.warning("series %s: QIDO listed %d of %d instances; completed from WADO-RS metadata",
                            series_uid, len(rows), expected)  # fmt: skip
            # QIDO rows first; metadata adds the instances and attributes they lack. Keyed by PatientID too: a
            # PACS that kept an instance re-sent under a corrected PatientID lists its UID under both.
            merged = RowMerger((tags.SOP_INSTANCE_UID, tags.PATIENT_ID))
            merged.add(rows)
            merged.add(metadata)
            rows = merged.rows
    return _checked_instances(rows, series_uid, scope)


async def _series_from_metadata(
    source: QidoSource, study_uid: str, scope: Scope, known: set[str], expected: int
) -> list[SeriesRows]:
    """Series QIDO could not list (a hard cap), rebuilt from the study's WADO-RS metadata."""
    try:
        metadata = await source.study_metadata(study_uid)
    except UpstreamError as exc:
        log.warning("study %s: QIDO listed %d of %d series and WADO-RS metadata is unavailable (%s)",
                    study_uid, len(known), expected, exc.diagnostics)  # fmt: skip
        return []
    by_series: dict[str, list[DicomJson]] = {}
    for instance in metadata:
        series_uid = fhir_id(instance, tags.SERIES_INSTANCE_UID)
        if series_uid is not None and series_uid not in known:
            by_series.setdefault(series_uid, []).append(instance)
    log.warning("study %s: QIDO listed %d of %d series; %d more from WADO-RS metadata",
                study_uid, len(known), expected, len(by_series))  # fmt: skip
    # An instance's metadata carries its series' attributes too: the first one stands for the series row, and is
    # checked as one (a scoped read must not take in another holder's series).
    found = []
    for series_uid, instances in by_series.items():
        if scope.admits(instances[0], f"series {series_uid}"):
            found.append(SeriesRows(instances[0], _checked_instances(instances, series_uid, scope)))
    return found


def _titled(row: DicomJson) -> bool:
    return text(row, tags.DOCUMENT_TITLE) is not None or bool(items(row, tags.CONCEPT_NAME_CODE_SEQUENCE))


@dataclass(frozen=True)
class Scope:
    """Whose part of a study is read: ``patient`` (None if the study row names none), among the ``owners``
    that the study's rows name."""

    patient: Identity | None
    owners: Owners
    #: The patients holding the StudyInstanceUID with a study row of their own.
    holders: frozenset[Identity | None] = frozenset()
    #: A scoped read was asked for one patient: the other holders' rows are left out, not a conflict.
    scoped: bool = False
    #: The patient of each series whose UID one patient alone holds: its instance rows are that patient's too
    #: when they do not say (they were asked for under the series' path).
    series_owners: Mapping[str, Identity] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """The StudyInstanceUID is held under several patients: a row must say whose it is."""
        return len(self.owners.identities) > 1

    def admits(self, row: DicomJson, what: str, series_uid: str | None = None) -> bool:
        """Whether a row (an instance row of ``series_uid``) belongs to the scope. Another holder's row is left
        out of a scoped read; any other row that is not the patient's refuses the study (``Conflict``): leaving
        it out would present a shorter study as complete, keeping it would show it as another's."""
        owner = self.owners.attribute(row)
        if owner is None and series_uid is not None:
            owner = self.series_owners.get(series_uid)
        if owner is None:
            if self.shared:
                raise Conflict(
                    f"{what} does not say which of the patients sharing its StudyInstanceUID it belongs to "
                    "(no PatientID, or no IssuerOfPatientID for a PatientID that two issuers assign)"
                )
            return True
        if owner == self.patient or (self.patient is None and not self.shared):
            return True
        if self.scoped and owner in self.holders:
            return False
        raise Conflict(f"the PACS lists {what} under a different patient than its study; refusing to merge them")


def _the_study(rows: list[DicomJson], study_uid: str, patient: Identity | None, owners: Owners) -> DicomJson:
    """The study row (of ``patient``, when a scoped read asks for one)."""
    patients = {owners.attribute(row) for row in rows}
    wanted = owners.canonical(patient) if patient is not None else None
    matching = rows if patient is None else [row for row in rows if owners.attribute(row) == wanted]
    if not matching:
        raise NotFound(f"the PACS has no study with StudyInstanceUID {study_uid}")
    if patient is None and len(patients) > 1:
        # One resource cannot have two subjects, and merging would show one patient's images as another's.
        raise Conflict(
            f"StudyInstanceUID {study_uid} is registered under {len(patients)} different patients in the PACS; "
            "search with patient=… to get each patient's part of it"
        )
    return matching[0]


def _scope(
    study_uid: str, study: DicomJson, study_rows: list[DicomJson], series_rows: list[DicomJson], *, scoped: bool
) -> Scope:
    """The scope the series and instance rows are read in. Series that give a PatientID issuers the study rows
    do not (two at least, in all) mean the PACS keeps two issuers' patients as one study: none of its rows can
    then be trusted to say whose it is, so the study is refused."""
    owners = Owners.of(study_rows, series_rows)
    if merged_issuers(study_rows, series_rows):
        raise Conflict(
            f"the PACS holds study {study_uid} as one study, but its series give a PatientID of it issuers its "
            "study row does not: one PatientID from two issuers is two patients; refusing to merge them"
        )
    series_owners: dict[str, Identity | None] = {}
    for row in series_rows:
        if (series_uid := fhir_id(row, tags.SERIES_INSTANCE_UID)) is not None:
            owner = owners.attribute(row)
            series_owners[series_uid] = owner if series_owners.get(series_uid, owner) == owner else None
    return Scope(
        owners.attribute(study),
        owners,
        holders=frozenset(owners.attribute(row) for row in study_rows),
        scoped=scoped,
        series_owners={series_uid: owner for series_uid, owner in series_owners.items() if owner is not None},
    )


def _checked_series(rows: list[DicomJson], study_uid: str, scope: Scope) -> list[tuple[str, DicomJson]]:
    checked = []
    for row in rows:
        row_study = text(row, tags.STUDY_INSTANCE_UID)
        if row_study is not None and row_study != study_uid:
            log.warning("PACS returned series of study %r when asked for study %s; ignored", row_study, study_uid)
            continue
        series_uid = fhir_id(row, tags.SERIES_INSTANCE_UID)
        if series_uid is None:
            log.warning("study %s: PACS returned a series row without a valid SeriesInstanceUID; dropped", study_uid)
            continue
        if scope.admits(row, f"series {series_uid}"):
            checked.append((series_uid, row))
    return checked


#: What ``row.get`` gives for an attribute a row does not have.
_ABSENT = object()


def _checked_instances(rows: list[DicomJson], series_uid: str, scope: Scope) -> list[DicomJson]:
    checked = []
    # Whose an instance row is depends, within one series, on its PatientID and IssuerOfPatientID alone; and the
    # rows of a series nearly always hold the very same two objects (the HTTP source keeps an attribute its rows
    # repeat once: ``bridge.qido.paging.RowTrimmer``). A row holding the objects of the row admitted before it is
    # admitted without asking again, which took the check from a tenth of a large read's CPU time to next to none.
    admitted: tuple[object, object] | None = None
    for row in rows:
        row_series = text(row, tags.SERIES_INSTANCE_UID)
        instance_uid = fhir_id(row, tags.SOP_INSTANCE_UID)
        if row_series is not None and row_series != series_uid:
            log.warning("PACS returned instance %r of series %r under series %s; ignored",
                        instance_uid, row_series, series_uid)  # fmt: skip
            continue
        if instance_uid is None or fhir_id(row, tags.SOP_CLASS_UID) is None:
            log.warning("series %s: instance %r has no usable SOPInstanceUID or SOPClassUID; dropped",
                        series_uid, text(row, tags.SOP_INSTANCE_UID))  # fmt: skip
            continue
        owner = (row.get(tags.PATIENT_ID, _ABSENT), row.get(tags.ISSUER_OF_PATIENT_ID, _ABSENT))
        if admitted is not None and owner[0] is admitted[0] and owner[1] is admitted[1]:
            checked.append(row)
        elif scope.admits(row, f"instance {instance_uid}", series_uid):
            checked.append(row)
            admitted = owner
    return checked
