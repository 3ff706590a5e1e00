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
import importlib
import importlib.util
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

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
    table: dict[str, tuple[str, ...]] = _pydicom_table("_uid_dict", "UID_dictionary")
    return {uid: entry[0] for uid, entry in table.items()}


def keyword_tag(keyword: str) -> int | None:
    """The tag of a DICOM keyword (``PatientID`` -> 0x00100020), or None for one the dictionary has not."""
    return _keywords()[0].get(keyword)


def tag_keyword(tag: int) -> str | None:
    """The keyword of a tag in the DICOM dictionary, or None (a private tag, a tag it does not have)."""
    return _keywords()[1].get(tag)


@functools.cache
def _keywords() -> tuple[dict[str, int], dict[int, str]]:
    """pydicom's data dictionary, read from its data module alone (as ``_uid_names``): keyword -> tag, tag ->
    keyword."""
    table: dict[int, tuple[str, ...]] = _pydicom_table("_dicom_dict", "DicomDictionary")
    by_tag = {tag: entry[4] for tag, entry in table.items() if entry[4]}
    return {keyword: tag for tag, keyword in by_tag.items()}, by_tag


def _pydicom_table(module_name: str, attribute: str) -> Any:
    """A dictionary literal of one of pydicom's data modules, executed on its own (not importing pydicom)."""
    spec = importlib.util.find_spec("pydicom")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0], f"{module_name}.py") if locations else None
    loader = importlib.util.spec_from_file_location(f"bridge.terminology.{module_name}", path) if path else None
    if path is None or not path.is_file() or loader is None or loader.loader is None:
        # A pydicom laid out otherwise: the whole package, then.
        return getattr(importlib.import_module(f"pydicom.{module_name}"), attribute)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)  # a dictionary literal, nothing more
    return getattr(module, attribute)
