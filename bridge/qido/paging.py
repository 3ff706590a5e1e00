"""Pure rules for reading a QIDO-RS answer to the end and merging what came back.

PACSes cap answers in different ways: some send ``Warning: 299 ... additional results``, some just stop at a
fixed number. We keep asking (``offset`` = rows so far) while any sign says there is more: the warning, a page
as long as the ``limit`` we asked for, or fewer rows than the PACS's own count for that level. An empty page
always ends the read, so a PACS that ignores ``offset`` cannot make us loop forever (see ``merge_rows``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bridge.mapping import dicomjson
from bridge.mapping.dicomjson import DicomJson

#: Never follow more pages than this for one query: a PACS that ignores ``offset`` repeats its first page.
MAX_PAGES = 10_000


def has_more(*, page_rows: int, limit: int | None, warning: str | None, total_rows: int, expected: int | None) -> bool:
    """Whether to ask for another page after one that returned ``page_rows`` rows (``total_rows`` so far)."""
    if page_rows == 0:
        return False
    if warning and "additional results" in warning.lower():
        return True
    if limit and page_rows >= limit:
        return True
    return expected is not None and total_rows < expected


def merge_rows(rows: Iterable[DicomJson], key_tags: Sequence[str]) -> list[DicomJson]:
    """Rows merged by their key (first seen wins; attributes only a later duplicate has are kept)."""
    merged: dict[tuple[str | None, ...], DicomJson] = {}
    for row in rows:
        key = tuple(dicomjson.text(row, tag) for tag in key_tags)
        if key in merged:
            kept = merged[key]
            for tag, element in row.items():
                if not dicomjson.values(kept, tag) and (tag not in kept or dicomjson.values(row, tag)):
                    kept[tag] = element
        else:
            merged[key] = dict(row)
    return list(merged.values())
