"""DICOM terminology the mapper needs, from the CSV tables beside this file (see SOURCES.md there).

- ``body-part-snomed.csv``: Body Part Examined (0018,0015) defined terms -> SNOMED CT (PS3.16 Annex L);
- ``modality-codes.csv``: CID 33 modality codes -> DICOM code meanings;
- ``laterality.csv``: Laterality code strings -> SNOMED CT (CID 244);

and the names of UIDs (SOP Classes for ``sopClass.display``), from pydicom's UID dictionary (PS3.6 Annex A).
The tables are read once, on first use.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from importlib import resources
from pathlib import Path
from typing import NamedTuple

SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: The identifier system of DICOM UIDs (values ``urn:oid:<uid>``), and of SOP Classes as ``uri`` codes.
DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
#: HL7 v2 table 0203, identifier types (ACSN: accession number).
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACCESSION_TYPE = (V2_0203, "ACSN")
IMAGINGSTUDY_STATUS = "http://hl7.org/fhir/imagingstudy-status"


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


def uid_name(uid: str) -> str | None:
    """The name DICOM gives a UID (a SOP Class, a transfer syntax…), or None for a UID it does not name."""
    return _uid_names().get(uid)


@functools.cache
def _uid_names() -> dict[str, str]:
    """pydicom's UID dictionary, read from its data module alone. ``import pydicom`` imports numpy and requests
    as well: 18 MiB of a 75 MiB process that, reading an HTTP PACS, uses nothing else of pydicom."""
    spec = importlib.util.find_spec("pydicom")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    table = Path(locations[0], "_uid_dict.py") if locations else None
    loader = importlib.util.spec_from_file_location("bridge.terminology._uid_dict", table) if table else None
    if table is None or not table.is_file() or loader is None or loader.loader is None:
        from pydicom._uid_dict import UID_dictionary  # a pydicom laid out otherwise: the whole package, then

        return {uid: entry[0] for uid, entry in UID_dictionary.items()}
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)  # a dictionary literal, nothing more
    return {uid: entry[0] for uid, entry in module.UID_dictionary.items()}
