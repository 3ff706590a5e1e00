"""A QIDO-RS server over HTTP with the habits of PACSes that Orthanc does not have: it caps every answer
silently (no ``Warning`` header), may leave out the computed counts, may ignore ``offset``, and logs every request
so a test can count what a client request cost the PACS.

The rows come from a ``MemoryQidoSource`` (its matching: exact, ``*``/``?`` wildcards, UID lists, date ranges).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido.memory import MemoryQidoSource

COUNTS = (
    tags.NUMBER_OF_STUDY_RELATED_SERIES,
    tags.NUMBER_OF_STUDY_RELATED_INSTANCES,
    tags.NUMBER_OF_SERIES_RELATED_INSTANCES,
)
_NOT_FILTERS = frozenset({"includefield", "limit", "offset", "fuzzymatching"})


@dataclass
class PacsDouble:
    rows: MemoryQidoSource
    #: Rows in one answer at most, whatever ``limit`` asks (None: no cap).
    cap: int | None = None
    #: Leave out NumberOfStudyRelatedSeries/Instances and NumberOfSeriesRelatedInstances.
    counts: bool = True
    honours_offset: bool = True
    #: Every request's path and query, in order.
    requests: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        base = "/dicom-web"
        app.router.add_get(f"{base}/studies", self._studies)
        app.router.add_get(f"{base}/series", self._series)
        app.router.add_get(f"{base}/studies/{{study}}/series", self._series)
        app.router.add_get(f"{base}/instances", self._instances)
        app.router.add_get(f"{base}/studies/{{study}}/instances", self._instances)
        app.router.add_get(f"{base}/studies/{{study}}/series/{{series}}/instances", self._instances)
        return app

    async def _studies(self, request: web.Request) -> web.Response:
        return self._answer(request, await self.rows.search_studies(_filters(request), ()))

    async def _series(self, request: web.Request) -> web.Response:
        study = request.match_info.get("study")
        return self._answer(request, await self.rows.search_series(study, (), filters=_filters(request)))

    async def _instances(self, request: web.Request) -> web.Response:
        study, series = request.match_info.get("study"), request.match_info.get("series")
        found = await self.rows.search_instances(study, series, (), filters=_filters(request))
        return self._answer(request, found)

    def _answer(self, request: web.Request, rows: list[DicomJson]) -> web.Response:
        self.requests.append(request.path_qs)
        offset = int(request.query.get("offset", 0)) if self.honours_offset else 0
        limit = int(request.query.get("limit", 0)) or len(rows)
        if self.cap is not None:
            limit = min(limit, self.cap)
        window = rows[offset : offset + limit]
        if not self.counts:
            window = [{tag: value for tag, value in row.items() if tag not in COUNTS} for row in window]
        return web.Response(body=orjson.dumps(window), content_type="application/dicom+json")


def _filters(request: web.Request) -> dict[str, str]:
    return {key: value for key, value in request.query.items() if key not in _NOT_FILTERS}


@asynccontextmanager
async def serving(double: PacsDouble) -> AsyncIterator[str]:
    """The double on a loopback port; yields its DICOMweb base URL."""
    server = TestServer(double.app())
    await server.start_server()
    try:
        yield str(server.make_url("/dicom-web"))
    finally:
        await server.close()
