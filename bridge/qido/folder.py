"""``QidoSource`` over a local folder of DICOM files, through dicomweb-client's ``DICOMfileClient``.

This serves the embedded default (pydicom's sample files) and ``BRIDGE_QIDO_URL=file:///folder``. The file
client is synchronous and keeps an SQLite index bound to the thread that built it, so it lives on one
dedicated worker thread: its calls never block the event loop and never cross threads.

The file client indexes a file's study and series before its instance and gives up on the instance when the
file has no File Meta Information (it reads the transfer syntax from there): the study then shows a series with
no instances. After it has indexed, every file it skipped is read again here, and indexed with the transfer
syntax pydicom detected, or reported with a warning naming the file.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.errors import UpstreamBadResponse, UpstreamUnavailable
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido.paging import merge_rows
from bridge.qido.source import NO_FILTERS, Filters

if TYPE_CHECKING:
    from pydicom import Dataset

# pydicom is imported where a folder is read, not with this module: importing it imports numpy and requests too,
# a quarter of the memory of a bridge that reads an HTTP PACS and never opens a file.

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The transfer syntax of a file without File Meta Information, from the encoding pydicom detected while
#: reading it: (implicit VR, little endian). Implicit VR big endian is no transfer syntax at all.
_ENCODINGS: dict[tuple[bool | None, bool | None], str] = {
    (True, True): "1.2.840.10008.1.2",  # Implicit VR Little Endian
    (False, True): "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    (False, False): "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
}
#: What an instance needs to be listed in a study (the file client's index requires each).
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


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
            client = DICOMfileClient(url=self.description, in_memory=True, readonly=True)
            _index_skipped_files(client._db_manager)
        return client

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> None:
        if self._client is None:
            raise UpstreamUnavailable(f"{self.description} is not indexed yet")

    async def search_studies(
        self,
        filters: Filters,
        fields: Sequence[str],
        *,
        limit: int | None = None,
        offset: int = 0,
        as_listed: bool = False,
    ) -> list[DicomJson]:
        rows = await self._call(lambda c: _each_uid(filters, lambda f: c.search_for_studies(search_filters=f)))
        found = rows if as_listed else merge_rows(rows, (tags.STUDY_INSTANCE_UID, *tags.OWNER))
        return found[offset : offset + limit] if limit is not None else found[offset:]

    async def search_series(
        self,
        study_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
        *,
        prove: bool = True,
    ) -> list[DicomJson]:
        rows = await self._call(
            lambda c: _owned(
                c,
                study_uid,
                _each_uid(filters, lambda f: c.search_for_series(study_instance_uid=study_uid, search_filters=f)),
            )
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
            lambda c: _owned(
                c,
                study_uid,
                _each_uid(
                    filters,
                    lambda f: c.search_for_instances(
                        study_instance_uid=study_uid, series_instance_uid=series_uid, search_filters=f
                    ),
                ),
            )
        )
        return merge_rows(rows, (tags.SOP_INSTANCE_UID, *tags.OWNER))

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        return await self._call(
            lambda c: c.retrieve_series_metadata(study_instance_uid=study_uid, series_instance_uid=series_uid)
        )

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        return await self._call(lambda c: c.retrieve_study_metadata(study_instance_uid=study_uid))

    async def instance_files(
        self, study_uid: str, series_uid: str | None = None, instance_uid: str | None = None
    ) -> list[tuple[str, str, Path]]:
        """(series UID, SOP instance UID, file) of each instance indexed under the study (and series, and
        instance, when given): the files WADO-RS serves. Compared exactly: no wildcard reaches the index."""
        client = self._client
        if client is None:
            raise UpstreamUnavailable(f"{self.description} is not indexed yet")

        def find() -> list[tuple[str, str, Path]]:
            index = client._db_manager  # what the file client's own retrieve_* methods ask
            found = index.get_instance_identifiers(study_uid, series_uid)
            return [
                (series, instance, index.get_instance_file_path(study, series, instance))
                for study, series, instance in found
                if study == study_uid
                and (instance_uid is None or instance == instance_uid)
                and (series_uid is None or series == series_uid)
            ]

        return await self._run(find)

    def unmatched(self, level: str, filters: Filters) -> list[str]:
        """The matching keys of ``filters`` (by keyword) that the folder's index would skip, answering wider than
        asked: an attribute it does not hold at ``level``, a date or time it cannot read (a range), a list of
        values (compared as one string), ``%`` or ``_`` beside a wildcard (its SQL wildcards). The FHIR search
        checks every row against its query; the gateway's QIDO-RS answers the rows as they come, so refuses
        these."""
        from dicomweb_client.file import _QueryResourceType as Table
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.valuerep import DA, DT, TM

        if self._client is None:
            return []
        columns = self._client._db_manager._attributes  # what the file client's own searches match on
        searchable = {*columns[Table.STUDIES]}
        if level != "studies":
            searchable |= {*columns[Table.SERIES]}
        if level == "instances":  # as the file client's search_for_instances adds them
            searchable |= {"SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated"}
            searchable |= {"NumberOfFrames"}
        readers = {"DA": DA, "DT": DT, "TM": TM}
        unmatched = []
        for keyword, value in filters.items():
            tag = tag_for_keyword(keyword)
            read = readers.get(dictionary_VR(tag)) if tag is not None else None
            try:
                if read is not None:
                    read(value)
            except ValueError:
                unmatched.append(keyword)
                continue
            wildcard = "*" in value or "?" in value
            if (
                keyword not in searchable
                or "\\" in value
                or (wildcard and ("%" in value or "_" in value or ("*" in value and "?" in value)))
            ):
                unmatched.append(keyword)
        return unmatched

    async def on_worker(self, func: Callable[[], T]) -> T:
        """``func`` run on the folder's worker thread (reading its files), warnings about broken values hidden."""

        def run() -> T:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return func()

        return await self._run(run)

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


def _each_uid(filters: Filters, search: Callable[[dict[str, str]], list[DicomJson]]) -> list[DicomJson]:
    """The rows of ``search`` for ``filters``, a QIDO UID list (``a,b`` or ``a\\b``) asked one UID at a time: the
    file client's index compares a value as one string, so a list matched nothing (the FHIR search asks for the
    studies its series or instance rows found by such a list)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    queries = [dict(filters)]
    for key, value in filters.items():
        tag = tag_for_keyword(key)
        if tag is not None and dictionary_VR(tag) == "UI" and ("," in value or "\\" in value):
            # An empty item is dropped, not asked: the index would take it as matching every UID.
            uids = dict.fromkeys(uid for uid in value.replace("\\", ",").split(",") if uid) or {value: None}
            queries = [{**query, key: one} for query in queries for one in uids]
    return [row for query in queries for row in search(query)]


def _owned(client: Any, study_uid: str | None, rows: list[DicomJson]) -> list[DicomJson]:
    """Series or instance rows given their study's PatientID and IssuerOfPatientID, which the file client's series
    and instance tables do not hold: the gateway keeps for a confined token only rows that name its patient.
    Left without them (so kept from every confined token) when the study UID is held under several patients."""
    if study_uid is None or not rows:
        return rows
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    owners = {tuple((tag, repr(study.get(tag))) for tag in tags.OWNER) for study in studies}
    if len(studies) == 0 or len(owners) != 1:
        return rows
    owner = {tag: studies[0][tag] for tag in tags.OWNER if tag in studies[0]}
    return [{**owner, **row} for row in rows]


def _index_skipped_files(index: Any) -> None:
    """Index the instances in files the file client skipped, or log a warning naming each file that holds an
    instance which cannot be served. Files that hold no instance (DICOMDIRs, text) are passed over.

    ``index`` is the client's private ``_DatabaseManager``: nothing public adds a file that is already in the
    folder (``store_instances`` writes a copy into it). Its methods used here are the ones its own indexing
    calls, unchanged since dicomweb-client 0.59.
    """
    from pydicom import dcmread

    base: Path = index.base_dir
    indexed = set(index._get_indexed_file_paths())
    known = set(index.get_instance_identifiers())
    duplicates: dict[tuple[str, str, str], list[Path]] = {}
    for path in sorted(base.glob("**/*")):
        if path in indexed or path.name == "DICOMDIR" or not path.is_file():
            continue
        try:
            # Not what the client reads (only its columns' tags), so a file it could not read may still be read.
            dataset = dcmread(path, stop_before_pixels=True, force=True)
            uids = {keyword: str(dataset.get(keyword) or "") for keyword in _REQUIRED}
        except Exception:  # pydicom raises many kinds on what is not DICOM, and holds no instance then
            log.debug("%s: not DICOM", path)
            continue
        sop_uid = uids["SOPInstanceUID"]
        if not sop_uid:
            continue  # not an instance: a DICOMDIR under another name, a sample dataset, a dump
        if missing := [keyword for keyword, value in uids.items() if not value]:
            log.warning("%s: instance %s is not served: it has no %s", path, sop_uid, " or ".join(missing))
            continue
        key = (uids["StudyInstanceUID"], uids["SeriesInstanceUID"], sop_uid)
        if key in known:
            # Another file holds the same instance (pydicom's samples re-encode some, and truncate one).
            duplicates.setdefault(key, []).append(path)
            continue
        try:
            _index_file(index, path.relative_to(base), dataset)
        except Exception as exc:  # whatever the index makes of this file's values, the file is reported
            log.warning("%s: instance %s is not served: %s", path, sop_uid, exc)
        else:
            known.add(key)
            log.debug("%s: indexed instance %s, which the DICOM file client skipped", path, sop_uid)
    for key, paths in duplicates.items():
        _serve_the_best_copy(index, key, paths)


def _serve_the_best_copy(index: Any, key: tuple[str, str, str], others: list[Path]) -> None:
    """Of the files that hold one instance, index the one a viewer can best show: whole pixel data first, then
    uncompressed, then by name (so the choice does not depend on the order the folder is listed in)."""
    from bridge.qido.folder_wado import pixel_rank

    base: Path = index.base_dir
    current = index.get_instance_file_path(*key)
    best = min([current, *others], key=lambda path: (pixel_rank(path), str(path)))
    if best == current:
        return
    try:
        from pydicom import dcmread

        _index_file(index, best.relative_to(base), dcmread(best, stop_before_pixels=True, force=True))
    except Exception as exc:  # the file already indexed stays served
        log.warning("%s: not served in place of %s: %s", best, current, exc)
    else:
        log.debug("%s: served for instance %s in place of %s", best, key[2], current)


def _index_file(index: Any, relative_path: Path, dataset: Dataset) -> None:
    """Add one file's study, series and instance rows to the index, as the file client's own indexing does."""
    if "TransferSyntaxUID" not in dataset.file_meta:
        from pydicom.uid import UID

        # pydicom 2 has no original_encoding, only its two halves.
        encoding = getattr(dataset, "original_encoding", None) or (dataset.read_implicit_vr, dataset.read_little_endian)
        transfer_syntax = _ENCODINGS.get(encoding)
        if transfer_syntax is None:
            raise ValueError(f"its encoding (implicit VR, little endian: {encoding}) is no transfer syntax")
        dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    for element in list(dataset):
        # pydicom keeps an IS that is no number as text, which the index would store and every query of the
        # series then fail on: the value is left out instead.
        if element.VR == "IS" and isinstance(element.value, str) and element.value.strip():
            del dataset[element.tag]
    instance = (
        *index._extract_instance_metadata(dataset),
        str(dataset.file_meta.TransferSyntaxUID),
        str(relative_path),
        # No frame offsets, as the client records for a file without pixel data: the bridge retrieves no frames.
        -1,
        None,
    )
    index._insert_into_db(
        [index._extract_study_metadata(dataset)], [index._extract_series_metadata(dataset)], [instance]
    )
