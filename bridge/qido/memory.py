"""``QidoSource`` held in memory: a PACS double for tests and demos, with real matching of the UID paths.

It answers exactly what it was given, duplicates and all, so tests can reproduce a PACS's quirks without a
server. Failures can be injected with ``fail_with`` (for every call, or those named by ``fail_only``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bridge.errors import UpstreamError
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, text
from bridge.qido.source import Filters


class MemoryQidoSource:
    """Study, series and instance rows in memory; filters on StudyInstanceUID and PatientID only."""

    description = "memory"

    def __init__(
        self,
        studies: Iterable[DicomJson] = (),
        series: dict[str, list[DicomJson]] | None = None,
        instances: dict[tuple[str, str], list[DicomJson]] | None = None,
    ) -> None:
        self.studies = list(studies)
        self.series = series or {}
        self.instances = instances or {}
        #: WADO-RS metadata per series; defaults to the instance rows.
        self.metadata: dict[tuple[str, str], list[DicomJson]] = {}
        self.fail_with: UpstreamError | None = None
        #: With ``fail_with``: fail only the calls whose description starts with this (e.g. "metadata").
        self.fail_only: str | None = None
        self.calls: list[str] = []

    async def search_studies(self, filters: Filters, fields: Sequence[str]) -> list[DicomJson]:
        self._called("studies")
        wanted = {
            tags.STUDY_INSTANCE_UID: filters.get("StudyInstanceUID"),
            tags.PATIENT_ID: filters.get("PatientID"),
        }
        return [row for row in self.studies if all(v is None or text(row, tag) == v for tag, v in wanted.items())]

    async def search_series(
        self, study_uid: str, fields: Sequence[str], expected: int | None = None
    ) -> list[DicomJson]:
        self._called(f"series {study_uid}")
        return list(self.series.get(study_uid, []))

    async def search_instances(
        self, study_uid: str, series_uid: str, fields: Sequence[str], expected: int | None = None
    ) -> list[DicomJson]:
        self._called(f"instances {series_uid}")
        return list(self.instances.get((study_uid, series_uid), []))

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        self._called(f"metadata {series_uid}")
        return list(self.metadata.get((study_uid, series_uid), self.instances.get((study_uid, series_uid), [])))

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        self._called(f"metadata {study_uid}")
        return [row for (study, _), rows in self.metadata.items() if study == study_uid for row in rows]

    async def check(self) -> None:
        self._called("check")

    async def close(self) -> None:
        pass

    def _called(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_with is not None and (self.fail_only is None or what.startswith(self.fail_only)):
            raise self.fail_with
