"""The one seam between the bridge and a PACS: QIDO-RS queries, plus WADO-RS metadata where QIDO falls short.

The web layer depends on ``QidoSource`` only. Two real implementations exist: ``HttpQidoSource`` (a DICOMweb
server over aiohttp) and ``FolderQidoSource`` (a local folder of DICOM files, also the tests' in-process PACS).
Each returns every matching row, whatever paging the PACS needs, with duplicate rows merged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from bridge.mapping.dicomjson import DicomJson

#: QIDO matching attributes: keyword or tag -> value, as QIDO-RS takes them (already validated by the caller).
Filters = Mapping[str, str]
NO_FILTERS: Filters = {}

_UNRESERVED = re.compile(r"[^A-Za-z0-9\-._~]+")


def qido_value(value: str) -> str:
    """An exact value as a portable QIDO match value: runs of characters outside the URL's unreserved set become
    ``*``. Some PACSes (Orthanc among them) do not percent-decode query values, so ``PAT%2001`` would match
    nothing; ``PAT*01`` matches a superset, which the caller must check exactly. Callers refuse client values
    holding ``*``, ``?`` or ``\\`` first, so only this function ever writes a wildcard."""
    return _UNRESERVED.sub("*", value)


class QidoSource(Protocol):
    """A PACS answering QIDO-RS queries."""

    #: Where the rows come from, for logs and messages: never with credentials.
    description: str

    async def search_studies(
        self, filters: Filters, fields: Sequence[str], *, limit: int | None = None, offset: int = 0
    ) -> list[DicomJson]:
        """Every study row matching ``filters``, with ``fields`` included; with ``limit``, at most that many of
        them from ``offset`` on, in the PACS's own order (a page of its answer)."""
        ...

    async def search_series(
        self,
        study_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
        *,
        prove: bool = True,
    ) -> list[DicomJson]:
        """Every series row of one study (of all studies with ``study_uid`` None) matching ``filters``;
        ``expected`` is the PACS's own count, a hint for paging. Without a count, the end of the list is proved
        by asking past it, unless ``prove`` is False (the caller will know the count when the answer is in)."""
        ...

    async def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
    ) -> list[DicomJson]:
        """Every instance row of one series (of a study or all studies, with UIDs None) matching ``filters``."""
        ...

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        """WADO-RS Retrieve Series Metadata: one dataset per instance, with every attribute (sequences too)."""
        ...

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        """WADO-RS Retrieve Study Metadata: one dataset per instance of the study."""
        ...

    async def check(self) -> None:
        """Raise an ``UpstreamError`` unless the PACS answers a trivial query."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...
