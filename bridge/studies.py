"""Reading one study from the PACS and turning it into an ImagingStudy.

The PACS is not trusted: every row it returns is checked against what was asked (a PACS may ignore a filter
or a path), rows that cannot become valid FHIR are dropped with a warning naming their UID, and the mapper's
notes on count disagreements are logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.errors import Conflict, InvalidRequest, NotFound
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, fhir_id, is_uid, text, uid, unsigned
from bridge.mapping.imagingstudy import MappingOptions, SeriesRows, StudyRows, imaging_study
from bridge.qido.source import QidoSource

log = logging.getLogger(__name__)


def check_study_id(study_id: str) -> str:
    """The id if it is a StudyInstanceUID (ImagingStudy ids are the UID itself), else ``InvalidRequest``."""
    if not is_uid(study_id):
        shown = study_id if len(study_id) <= 80 else study_id[:80] + "…"
        raise InvalidRequest(
            f"ImagingStudy id {shown!r} is not a DICOM StudyInstanceUID (digits and dots, at most 64 characters)"
        )
    return study_id


async def fetch_study(source: QidoSource, study_uid: str) -> StudyRows:
    """The study row, its series and every instance of each, as the PACS has them."""
    study_rows, series_rows = await asyncio.gather(
        source.search_studies({"StudyInstanceUID": study_uid}, tags.STUDY_FIELDS),
        source.search_series(study_uid, tags.SERIES_FIELDS),
    )
    study = _the_study(study_rows, study_uid)
    expected_series = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_SERIES)
    if expected_series is not None and len(series_rows) < expected_series:
        # The first read may have stopped at a silent cap: read again, paging up to the PACS's count.
        series_rows = await source.search_series(study_uid, tags.SERIES_FIELDS, expected=expected_series)

    checked = _checked_series(series_rows, study_uid)
    instance_lists = await asyncio.gather(
        *(
            source.search_instances(
                study_uid, series_uid, tags.INSTANCE_FIELDS,
                expected=unsigned(row, tags.NUMBER_OF_SERIES_RELATED_INSTANCES),
            )
            for series_uid, row in checked
        )
    )  # fmt: skip
    series = [
        SeriesRows(row, _checked_instances(instances, series_uid))
        for (series_uid, row), instances in zip(checked, instance_lists, strict=True)
    ]
    return StudyRows(study, series)


async def read_study(source: QidoSource, study_uid: str, options: MappingOptions) -> dict[str, Any]:
    """The ImagingStudy for one StudyInstanceUID (``NotFound``, ``Conflict`` or an ``UpstreamError`` else)."""
    rows = await fetch_study(source, check_study_id(study_uid))
    mapped = imaging_study(rows, options)
    for note in mapped.notes:
        log.warning("%s", note)
    return mapped.resource


def _the_study(rows: list[DicomJson], study_uid: str) -> DicomJson:
    matching = [row for row in rows if uid(row, tags.STUDY_INSTANCE_UID) == study_uid]
    if not matching:
        raise NotFound(f"the PACS has no study with StudyInstanceUID {study_uid}")
    patients = sorted({text(row, tags.PATIENT_ID) or "" for row in matching})
    if len(patients) > 1:
        # One resource cannot have two subjects, and merging would show one patient's images as another's.
        raise Conflict(
            f"StudyInstanceUID {study_uid} is registered under {len(patients)} different patients in the PACS; "
            "search with patient=… to get each patient's part of it"
        )
    return matching[0]


def _checked_series(rows: list[DicomJson], study_uid: str) -> list[tuple[str, DicomJson]]:
    checked = []
    for row in rows:
        row_study = text(row, tags.STUDY_INSTANCE_UID)
        if row_study is not None and row_study != study_uid:
            log.warning("PACS returned series of study %s when asked for study %s; ignored", row_study, study_uid)
            continue
        series_uid = fhir_id(row, tags.SERIES_INSTANCE_UID)
        if series_uid is None:
            log.warning("study %s: PACS returned a series row without a valid SeriesInstanceUID; dropped", study_uid)
            continue
        checked.append((series_uid, row))
    return checked


def _checked_instances(rows: list[DicomJson], series_uid: str) -> list[DicomJson]:
    checked = []
    for row in rows:
        row_series = text(row, tags.SERIES_INSTANCE_UID)
        instance_uid = fhir_id(row, tags.SOP_INSTANCE_UID)
        if row_series is not None and row_series != series_uid:
            log.warning("PACS returned instance %s of series %s under series %s; ignored",
                        instance_uid, row_series, series_uid)  # fmt: skip
            continue
        if instance_uid is None or fhir_id(row, tags.SOP_CLASS_UID) is None:
            log.warning("series %s: instance %s has no valid SOPInstanceUID or SOPClassUID; dropped",
                        series_uid, text(row, tags.SOP_INSTANCE_UID))  # fmt: skip
            continue
        checked.append(row)
    return checked
