"""``QidoSource`` held in memory: a PACS double for tests and demos, with real matching of the UID paths.

It answers exactly what it was given, duplicates and all, so tests can reproduce a PACS's quirks without a
server. Failures can be injected per call with ``fail_with``.
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
        self.fail_with: UpstreamError | None = None
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

    async def check(self) -> None:
        self._called("check")

    async def close(self) -> None:
        pass

    def _called(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_with is not None:
            raise self.fail_with
