"""The one list of supported ImagingStudy search parameters.

The parser accepts exactly these (with exactly these modifiers), the planner knows how to ask the PACS for each,
and the CapabilityStatement is generated from this table, so it cannot claim what does not work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """The QIDO-RS level whose rows decide a criterion."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str  # the FHIR search parameter type
    level: Level
    documentation: str
    modifiers: frozenset[str] = frozenset()
    #: The canonical SearchParameter of the FHIR R5 specification, when this is one of its parameters.
    definition: str | None = None


def _r5(name: str) -> str:
    return f"http://hl7.org/fhir/SearchParameter/ImagingStudy-{name}"


SEARCH_PARAMETERS: tuple[SearchParameter, ...] = (
    SearchParameter(
        "_id", "token", Level.STUDY, "The StudyInstanceUID (the resource id).",
        definition="http://hl7.org/fhir/SearchParameter/Resource-id",
    ),
    SearchParameter(
        "identifier", "token", Level.STUDY,
        "urn:dicom:uid|urn:oid:<StudyInstanceUID>, a bare urn:oid:<uid> (SMART Imaging), or the accession number "
        "(any system, or its issuer's system; :of-type with v2-0203|ACSN).",
        frozenset({"of-type"}), _r5("identifier"),
    ),
    SearchParameter(
        "patient", "reference", Level.STUDY,
        "Patient/<id>, where the id stands for a DICOM PatientID by the BRIDGE_PATIENT_REFERENCE template "
        "(default: the id is the PatientID); :identifier=system|value matches the subject's identifier; the chain "
        "patient.identifier does the same.",
        frozenset({"identifier"}), _r5("patient"),
    ),
    SearchParameter(
        "subject", "reference", Level.STUDY, "As patient (only Patient subjects exist here).",
        frozenset({"identifier"}), _r5("subject"),
    ),
    SearchParameter(
        "started", "date", Level.STUDY,
        "StudyDate/StudyTime; every prefix but ap, every precision; the time part is checked by the bridge.",
        frozenset({"missing"}), _r5("started"),
    ),
    SearchParameter(
        "modality", "token", Level.STUDY,
        "A DICOM modality code (system http://dicom.nema.org/resources/ontology/DCM), matched against the "
        "study's series modalities (ModalitiesInStudy).",
        definition=_r5("modality"),
    ),
    SearchParameter("series", "token", Level.SERIES, "A SeriesInstanceUID of the study.", definition=_r5("series")),
    SearchParameter("instance", "token", Level.INSTANCE, "A SOPInstanceUID of the study.", definition=_r5("instance")),
    SearchParameter(
        "dicom-class", "token", Level.INSTANCE,
        "A SOP Class UID (urn:oid:<uid> or the bare UID) of one of the study's instances.",
        definition=_r5("dicom-class"),
    ),
    SearchParameter(
        "body-site", "token", Level.SERIES,
        "A SNOMED CT code (http://snomed.info/sct), matched through PS3.16 Annex L against BodyPartExamined.",
        definition=_r5("body-site"),
    ),
    SearchParameter(
        "based-on", "reference", Level.STUDY,
        "Only as based-on:identifier=[system|]<accession number>, or based-on:missing.",
        frozenset({"identifier", "missing"}), _r5("based-on"),
    ),
    SearchParameter(
        "status", "token", Level.STUDY, "Every study the PACS returns is available.", definition=_r5("status")
    ),
    SearchParameter(
        "endpoint", "reference", Level.STUDY, "The WADO-RS Endpoint every study references.",
        definition=_r5("endpoint"),
    ),
)  # fmt: skip

BY_NAME = {parameter.name: parameter for parameter in SEARCH_PARAMETERS}

#: Chains accepted: ``patient.identifier`` and ``subject.identifier`` mean ``:identifier``.
CHAINS = {"patient.identifier": "patient", "subject.identifier": "subject"}

#: Result parameters understood.
RESULT_PARAMETERS = ("_count", "_offset", "_summary", "_elements", "_include", "_total")

#: Parameters that concern the response format, handled by the web layer.
FORMAT_PARAMETERS = ("_format", "_pretty")

DEFAULT_COUNT = 20
MAX_COUNT = 100
INCLUDE_ENDPOINT = "ImagingStudy:endpoint"
