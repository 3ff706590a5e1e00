"""A reference PACS for QIDO-RS matching, small enough to read: what a PACS returns for a query, so that tests
can check the QIDO queries the planner makes against the studies a search matches (tests/test_plan_properties.py).

It matches as PS3.4 C.2.2.2 says, and as Orthanc does where PACSes differ: case-sensitively, a key a level does
not hold matching nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bridge.mapping import tags


def el(vr: str, *values: str) -> dict[str, Any]:
    """A DICOM JSON element."""
    return {"vr": vr, "Value": list(values)}


@dataclass(frozen=True)
class Study:
    """One study as a PACS holds it: its study row, and its series rows each with its instance rows."""

    row: dict[str, Any]
    series: tuple[tuple[dict[str, Any], tuple[dict[str, Any], ...]], ...]

    def attributes(self, level: str, row: dict[str, Any] | None = None) -> dict[str, list[str]]:
        """What a QIDO query at ``level`` is matched against: the row's values with its study's (relational)."""
        held = {tag: element.get("Value", []) for tag, element in {**self.row, **(row or {})}.items()}
        return {KEYWORDS[tag]: [str(v) for v in values] for tag, values in held.items() if tag in KEYWORDS}


KEYWORDS = {
    tags.STUDY_INSTANCE_UID: "StudyInstanceUID", tags.PATIENT_ID: "PatientID",
    tags.ACCESSION_NUMBER: "AccessionNumber", tags.STUDY_DATE: "StudyDate",
    tags.MODALITIES_IN_STUDY: "ModalitiesInStudy", tags.SERIES_INSTANCE_UID: "SeriesInstanceUID",
    tags.MODALITY: "Modality", tags.BODY_PART_EXAMINED: "BodyPartExamined",
    tags.SOP_INSTANCE_UID: "SOPInstanceUID", tags.SOP_CLASS_UID: "SOPClassUID",
}  # fmt: skip
#: The keys a PACS matches at each level; Orthanc answers a key it does not hold at a level with nothing.
LEVEL_KEYS = {
    "study": {"StudyInstanceUID", "PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy"},
    "series": {"StudyInstanceUID", "PatientID", "SeriesInstanceUID", "Modality", "BodyPartExamined"},
    "instance": {"StudyInstanceUID", "PatientID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"},
}
UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})


def qido_matches(filters: dict[str, str], attributes: dict[str, list[str]], level: str) -> bool:
    """Whether a PACS returns a row for a QIDO query (PS3.4 C.2.2.2): a UID list holds the value, a range the
    date, a value with ``*`` or ``?`` matches as a wildcard (case-sensitively), any other value exactly; an
    attribute the row lacks matches nothing."""
    for key, wanted in filters.items():
        if key not in LEVEL_KEYS[level]:
            if key in KEYWORDS.values():
                return False
            raise AssertionError(f"the reference PACS does not know {key}: teach qido_matches")
        held = attributes.get(key, [])
        if key in UID_KEYS:
            found = any(value in wanted.split(",") for value in held)
        elif key == "StudyDate":
            low, dash, high = wanted.partition("-")
            found = any((low or "0") <= value <= (high or "9") for value in held) if dash else wanted in held
        else:
            pattern = "".join({"*": ".*", "?": "."}.get(c, re.escape(c)) for c in wanted)
            found = any(re.fullmatch(pattern, value) for value in held)
        if not found:
            return False
    return True
