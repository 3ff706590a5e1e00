"""DICOM terminology the mapper needs, from the CSV tables beside this file (see SOURCES.md there).

- ``body-part-snomed.csv``: Body Part Examined (0018,0015) defined terms -> SNOMED CT (PS3.16 Annex L);
- ``modality-codes.csv``: CID 33 modality codes -> DICOM code meanings;
- ``laterality.csv``: Laterality code strings -> SNOMED CT (CID 244).

The tables are read once, on first use.
"""

from __future__ import annotations

import csv
import functools
from importlib import resources
from typing import NamedTuple

SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


class Concept(NamedTuple):
    code: str
    display: str


def _read(name: str) -> list[list[str]]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    return rows[1:]  # the header


@functools.cache
def _body_parts() -> dict[str, Concept]:
    return {term: Concept(code, display) for term, code, display in _read("body-part-snomed.csv")}


@functools.cache
def _modalities() -> dict[str, str]:
    return dict(_read("modality-codes.csv"))


@functools.cache
def _lateralities() -> dict[str, Concept]:
    return {term: Concept(code, display) for term, code, display in _read("laterality.csv")}


def body_part(term: str) -> Concept | None:
    """The SNOMED concept for a Body Part Examined term, tolerant of case, spaces and underscores."""
    key = term.strip().upper().replace(" ", "").replace("_", "")
    return _body_parts().get(key)


def body_part_terms(snomed_code: str) -> list[str]:
    """The Body Part Examined terms that map to a SNOMED code (the mapping is many-to-one), sorted."""
    return sorted(term for term, concept in _body_parts().items() if concept.code == snomed_code)


def modality_display(code: str) -> str | None:
    """The DICOM code meaning of a modality code, or None for a code outside CID 33 (retired, private)."""
    return _modalities().get(code)


def laterality(code: str) -> Concept | None:
    """The SNOMED concept for a laterality code string (R, L, B)."""
    return _lateralities().get(code.strip().upper())
