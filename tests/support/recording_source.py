"""A ``QidoSource`` that passes every call on to another (a real PACS) and records what was asked of it, so a
test can tell what a request cost the PACS, or that it asked nothing at all."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.mapping.dicomjson import DicomJson
from bridge.qido.source import NO_FILTERS, Filters, QidoSource


class RecordingSource:
    def __init__(self, inner: QidoSource) -> None:
        self.inner = inner
        self.description = inner.description
        #: Each search asked, in order: its level (``studies``, ``series``, ``instances``) and its filters (the
        #: UIDs in the path among them).
        self.searches: list[tuple[str, dict[str, str]]] = []

    async def search_studies(
        self,
        filters: Filters,
        fields: Sequence[str],
        *,
        limit: int | None = None,
        offset: int = 0,
        as_listed: bool = False,
    ) -> list[DicomJson]:
        self.searches.append(("studies", dict(filters)))
        return await self.inner.search_studies(filters, fields, limit=limit, offset=offset, as_listed=as_listed)

    async def search_series(
        self,
        study_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
        *,
        prove: bool = True,
    ) -> list[DicomJson]:
        self.searches.append(("series", {**filters, **({"StudyInstanceUID": study_uid} if study_uid else {})}))
        return await self.inner.search_series(study_uid, fields, expected, filters, prove=prove)

    async def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
    ) -> list[DicomJson]:
        path = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        self.searches.append(("instances", {**filters, **{key: uid for key, uid in path.items() if uid}}))
        return await self.inner.search_instances(study_uid, series_uid, fields, expected, filters)

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        return await self.inner.series_metadata(study_uid, series_uid)

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        return await self.inner.study_metadata(study_uid)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()
