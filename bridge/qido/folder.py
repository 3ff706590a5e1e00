"""``QidoSource`` over a local folder of DICOM files, through dicomweb-client's ``DICOMfileClient``.

This serves the embedded default (pydicom's sample files) and ``BRIDGE_QIDO_URL=file:///folder``. The file
client is synchronous and keeps an SQLite index bound to the thread that built it, so it lives on one
dedicated worker thread: its calls never block the event loop and never cross threads.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import UpstreamBadResponse, UpstreamUnavailable
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido.paging import merge_rows
from bridge.qido.source import NO_FILTERS, Filters

log = logging.getLogger(__name__)
T = TypeVar("T")


def pydicom_samples() -> Path:
    """The folder of sample DICOM files that pydicom ships: the embedded default PACS."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


class FolderQidoSource:
    """A folder of DICOM files answering QIDO-RS queries."""

    def __init__(self, folder: Path, *, quiet: bool = False) -> None:
        """``quiet`` hides the per-file complaints while indexing (pydicom's samples include broken files)."""
        self.folder = folder
        self._quiet = quiet
        self.description = f"file://{folder}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicom-folder")
        self._client: Any = None

    async def open(self) -> None:
        """Index the folder (on the worker thread)."""
        if not self.folder.is_dir():
            raise UpstreamUnavailable(f"{self.folder} is not a folder")
        self._client = await self._run(self._build)

    def _build(self) -> Any:
        from dicomweb_client import DICOMfileClient

        # Unreadable and non-conformant files are skipped with a log line by the file client; pydicom's
        # warnings about them would otherwise repeat on every start.
        # Both libraries also complain on every query about the same broken values: for the embedded samples,
        # whose brokenness is known and deliberate, that is noise.
        if self._quiet:
            for name in ("dicomweb_client", "pydicom"):
                logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DICOMfileClient(url=self.description, in_memory=True, readonly=True)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> None:
        if self._client is None:
            raise UpstreamUnavailable(f"{self.description} is not indexed yet")

    async def search_studies(self, filters: Filters, fields: Sequence[str]) -> list[DicomJson]:
        rows = await self._call(lambda c: c.search_for_studies(search_filters=dict(filters)))
        return merge_rows(rows, (tags.STUDY_INSTANCE_UID, *tags.OWNER))

    async def search_series(
        self, study_uid: str | None, fields: Sequence[str], expected: int | None = None, filters: Filters = NO_FILTERS
    ) -> list[DicomJson]:
        rows = await self._call(
            lambda c: c.search_for_series(study_instance_uid=study_uid, search_filters=dict(filters))
        )
        return merge_rows(rows, (tags.SERIES_INSTANCE_UID, *tags.OWNER))

    async def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
    ) -> list[DicomJson]:
        rows = await self._call(
            lambda c: c.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, search_filters=dict(filters)
            )
        )
        return merge_rows(rows, (tags.SOP_INSTANCE_UID, *tags.OWNER))

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        return await self._call(
            lambda c: c.retrieve_series_metadata(study_instance_uid=study_uid, series_instance_uid=series_uid)
        )

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        return await self._call(lambda c: c.retrieve_study_metadata(study_instance_uid=study_uid))

    async def _call(self, query: Callable[[Any], list[DicomJson]]) -> list[DicomJson]:
        client = self._client
        if client is None:
            raise UpstreamUnavailable(f"{self.description} is not indexed yet")

        def run() -> list[DicomJson]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return query(client)

        try:
            return await self._run(run)
        except (ValueError, TypeError, OSError) as exc:
            raise UpstreamBadResponse(f"the DICOM folder index failed: {exc}") from None

    async def _run(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)
