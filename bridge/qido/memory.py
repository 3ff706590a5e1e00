"""``QidoSource`` held in memory: a PACS double for tests and demos.

It answers with real QIDO-RS matching on the attributes the bridge filters on (exact and ``*``/``?`` wildcard
strings, UID lists, date ranges), and answers exactly what it was given, duplicates and all, so tests can
reproduce a PACS's quirks without a server. Failures can be injected with ``fail_with`` (for every call, or
those named by ``fail_only``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from pydicom.datadict import tag_for_keyword

from bridge.errors import UpstreamError
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson, texts
from bridge.qido.budget import current as current_budget
from bridge.qido.source import NO_FILTERS, Filters


def qido_match(row: DicomJson, filters: Filters) -> bool:
    """QIDO-RS matching of one row (PS3.4 C.2.2.2) on keyword filters; an attribute the row lacks matches."""
    for keyword, wanted in filters.items():
        number = tag_for_keyword(keyword)
        if number is None:
            continue  # QIDO: an unsupported filter is ignored
        tag = f"{number:08X}"
        if tag not in row or not wanted:
            continue
        have = texts(row, tag)
        if keyword.endswith("Date") and "-" in wanted:
            low, _, high = wanted.partition("-")
            if not any((not low or low <= v) and (not high or v <= high) for v in have):
                return False
        elif tag.startswith("0020000") or keyword.endswith("UID"):
            if not set(have) & set(wanted.split(",")):
                return False
        elif not any(fnmatch.fnmatchcase(v, wanted) for v in have):
            return False
    return True


class MemoryQidoSource:
    """Study, series and instance rows in memory."""

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

    async def search_studies(
        self, filters: Filters, fields: Sequence[str], *, limit: int | None = None, offset: int = 0
    ) -> list[DicomJson]:
        self._called("studies")
        found = [row for row in self.studies if qido_match(row, filters)]
        return self._spent(found[offset : offset + limit] if limit is not None else found[offset:], "studies")

    async def search_series(
        self,
        study_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
        *,
        prove: bool = True,
    ) -> list[DicomJson]:
        self._called(f"series {study_uid}")
        studies = [study_uid] if study_uid else list(self.series)
        located = [
            {tags.STUDY_INSTANCE_UID: {"vr": "UI", "Value": [study]}, **row}
            for study in studies
            for row in self.series.get(study, [])
        ]
        return self._spent([row for row in located if qido_match(row, filters)], "series")

    async def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
    ) -> list[DicomJson]:
        self._called(f"instances {series_uid}")
        found = []
        for (study, series), rows in self.instances.items():
            if (study_uid and study != study_uid) or (series_uid and series != series_uid):
                continue
            for row in rows:
                located = {
                    tags.STUDY_INSTANCE_UID: {"vr": "UI", "Value": [study]},
                    tags.SERIES_INSTANCE_UID: {"vr": "UI", "Value": [series]},
                    **row,
                }
                if qido_match(located, filters):
                    found.append(located if not study_uid else row)
        return self._spent(found, "instances")

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

    def _spent(self, rows: list[DicomJson], where: str) -> list[DicomJson]:
        """The rows, charged to the request's budget as a PACS would charge it."""
        if (budget := current_budget()) is not None:
            budget.spend_rows(len(rows), where)
        return rows

    def _called(self, what: str) -> None:
        if (budget := current_budget()) is not None:
            budget.spend_query(what)
        self.calls.append(what)
        if self.fail_with is not None and (self.fail_only is None or what.startswith(self.fail_only)):
            raise self.fail_with
