"""Pure rules for reading a QIDO-RS answer to the end, and for trimming and merging what came back.

PACSes cap answers in different ways: some send ``Warning: 299 ... additional results``, some just stop at a
fixed number. We keep asking (``offset`` = rows so far) while any sign says there is more: the warning, a page
as long as the ``limit`` we asked for, or fewer rows than the PACS's own count for that level. An empty page
always ends the read. A PACS that ignores ``offset`` sends the same rows again and again (in any order): the
read ends after ``MAX_REPEATS`` pages in a row that brought no new row (one page of duplicates does not end it).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, TypeGuard

from bridge.mapping import dicomjson
from bridge.mapping.dicomjson import DicomJson
from bridge.mapping.identity import raw

#: Never follow more pages than this for one query, whatever the PACS says.
MAX_PAGES = 10_000
#: Pages in a row without a new row that mean the PACS ignores ``offset``.
MAX_REPEATS = 2


def has_more(*, page_rows: int, limit: int | None, warning: str | None, total_rows: int, expected: int | None) -> bool:
    """Whether to ask for another page after one that returned ``page_rows`` rows (``total_rows`` so far)."""
    if page_rows == 0:
        return False
    if warning and "additional results" in warning.lower():
        return True
    if limit and page_rows >= limit:
        return True
    return expected is not None and total_rows < expected


class RowMerger:
    """Rows merged by their key as they arrive, compared on raw values (rows of ``P1`` and ``P1\u00a0`` are
    never one): first seen wins, and attributes that only a later duplicate carries (or carries with a value)
    are kept. A row is kept as given, and copied only when a duplicate adds to it: the rows given are never
    changed."""

    def __init__(self, key_tags: Sequence[str]) -> None:
        self._key_tags = tuple(key_tags)
        self._rows: dict[tuple[str | None, ...], DicomJson] = {}
        self._copied: set[tuple[str | None, ...]] = set()

    def add(self, rows: Iterable[DicomJson]) -> None:
        values, key_tags = dicomjson.values, self._key_tags
        for row in rows:
            key = tuple([raw(row, tag) for tag in key_tags])
            kept = self._rows.get(key)
            if kept is None:
                self._rows[key] = row
                continue
            for tag, element in row.items():
                if not values(kept, tag) and (tag not in kept or values(row, tag)):
                    if key not in self._copied:
                        kept = self._rows[key] = dict(kept)
                        self._copied.add(key)
                    kept[tag] = element

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[DicomJson]:
        return list(self._rows.values())


def merge_rows(rows: Iterable[DicomJson], key_tags: Sequence[str]) -> list[DicomJson]:
    """Rows merged by their key (see ``RowMerger``)."""
    merger = RowMerger(key_tags)
    merger.add(rows)
    return merger.rows


class RowTrimmer:
    """Rows cut to the attributes asked for, repeated attributes held once.

    PACSes add their own defaults to every row (Orthanc: about fourteen attributes per instance), and of what is
    asked for, most attributes of a lower level's rows are the same in every row: an instance row's
    StudyInstanceUID, SeriesInstanceUID, PatientID and SOPClassUID. Held once per row, those are half of a
    10,000-instance study's rows in memory; here a row whose attribute equals the one the row before it had gets
    that same object. A shared attribute is one string value and its VR, so sharing never turns one value into
    another that Python merely finds equal (``1 == 1.0 == True``); nothing in the bridge changes an attribute in
    place, which is what makes sharing safe. ``unique`` names attributes not worth comparing (the row's own UID).
    """

    def __init__(self, wanted: Sequence[str], unique: Collection[str] = ()) -> None:
        self._wanted = tuple(wanted)
        self._candidates = tuple(tag for tag in self._wanted if tag not in unique)
        #: Per attribute, the one shared: taken from the first row, replaced when a row brings another value.
        self._shared: dict[str, DicomJson] | None = None

    def trim(self, rows: Iterable[DicomJson]) -> list[DicomJson]:
        wanted = self._wanted
        trimmed = []
        for row in rows:
            kept = {tag: row[tag] for tag in wanted if tag in row}
            shared = self._shared
            if shared is None:
                shared = self._shared = {tag: kept[tag] for tag in self._candidates if _single_string(kept.get(tag))}
            for tag, known in shared.items():
                element = kept.get(tag)
                # ``known`` is flat, so comparing it with any element, however deeply nested, stays shallow.
                if element == known:
                    kept[tag] = known
                elif _single_string(element):
                    shared[tag] = element  # the value changed (a query spanning series): share the new one
            trimmed.append(kept)
        return trimmed


def _single_string(element: Any) -> TypeGuard[DicomJson]:
    """Whether a DICOM JSON attribute is ``{"vr": str, "Value": [str]}`` exactly."""
    if type(element) is not dict or len(element) != 2:
        return False
    value, vr = element.get("Value"), element.get("vr")
    return type(vr) is str and type(value) is list and len(value) == 1 and type(value[0]) is str
