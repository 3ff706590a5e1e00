"""DICOM JSON study, series and instance rows -> the facts of an ImagingStudy (``bridge.mapping.facts``), which
``bridge.render`` writes in either FHIR version.

The rules come from ``docs/mapping.md``. Two principles decide the hard cases:

- the resource must satisfy ist-1..ist-7, so when the rows we list and the PACS's computed counts disagree the
  listed rows win, and the disagreement is kept as a note for the caller to log;
- a malformed DICOM value is repaired when the repair is unambiguous and dropped otherwise; it never becomes
  invalid FHIR and never raises.

``imaging_study``, ``series_element`` and ``instance_element`` give the R5 rendering straight from rows, for the
callers that work on R5 dicts (search matching, the tests of the mapping).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from bridge import terminology
from bridge.datatypes import OID, URI
from bridge.mapping import tags
from bridge.mapping.datetimes import fhir_datetime
from bridge.mapping.dicomjson import (
    DicomJson,
    fhir_id,
    items,
    person_name,
    person_names,
    text,
    texts,
    uid,
    unsigned,
)
from bridge.mapping.facts import (
    Coding,
    Concept,
    InstanceFacts,
    Issued,
    Patient,
    Performer,
    SeriesFacts,
    StudyFacts,
)
from bridge.mapping.identity import raw, writable
from bridge.render import r5
from bridge.render.common import SUBSETTED

__all__ = ["SUBSETTED", "MappingOptions", "SeriesRows", "StudyRows", "imaging_study", "study_facts"]

PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: The modality of a series whose PACS row has none (ImagingStudy.series.modality is 1..1).
FALLBACK_MODALITY = "OT"
#: Coding Scheme Designators (0008,0102) whose FHIR system is known (PS3.16 8.1). A code of another scheme is
#: kept as its meaning alone: a system made up for it would say nothing a client can look up.
CODING_SCHEMES = {"DCM": terminology.DCM, "SCT": terminology.SNOMED, "LN": "http://loinc.org"}


@dataclass(frozen=True)
class SeriesRows:
    """One series row and its instance rows, as the PACS answered them."""

    series: DicomJson
    instances: Sequence[DicomJson]


@dataclass(frozen=True)
class StudyRows:
    """One study row and, for a full resource, its series; ``series=None`` maps the study level only."""

    study: DicomJson
    series: Sequence[SeriesRows] | None = None


@dataclass(frozen=True)
class MappingOptions:
    """What the mapper needs from the configuration."""

    endpoint_id: str | None = None
    patient_id_system: str | None = None
    issuer_systems: Mapping[str, str] = field(default_factory=dict)
    zone: ZoneInfo | None = None


@dataclass
class Mapped:
    """The R5 resource plus notes on what was repaired or disagreed (for the caller to log)."""

    resource: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def imaging_study(rows: StudyRows, options: MappingOptions) -> Mapped:
    """Map one study to R5 (``study_facts`` then ``bridge.render.r5``)."""
    facts = study_facts(rows, options)
    return Mapped(r5.imaging_study(facts), list(facts.notes))


def study_facts(rows: StudyRows, options: MappingOptions) -> StudyFacts:
    """Read one study. The study row must carry a valid StudyInstanceUID (the caller checked it)."""
    study = rows.study
    study_uid = uid(study, tags.STUDY_INSTANCE_UID)
    if study_uid is None:
        raise ValueError("the study row has no valid StudyInstanceUID")
    notes: list[str] = []
    offset = text(study, tags.TIMEZONE_OFFSET_FROM_UTC)
    pacs_series = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_SERIES)
    pacs_instances = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_INSTANCES)
    series: tuple[SeriesFacts, ...] | None = None
    if rows.series is not None:
        ordered = sorted(rows.series, key=_series_order)
        series = tuple(_series(s, offset, options, notes) for s in ordered)
        modalities = _distinct(s.modality for s in series)
        number_of_series: int | None = len(series)
        number_of_instances: int | None = sum(len(s.instances) for s in series)
        if pacs_series is not None and pacs_series != number_of_series:
            notes.append(f"study {study_uid}: PACS counts {pacs_series} series, listed {number_of_series}")
        if pacs_instances is not None and pacs_instances != number_of_instances:
            notes.append(f"study {study_uid}: PACS counts {pacs_instances} instances, listed {number_of_instances}")
    else:
        # Study level only: the PACS's counts are all there is, and no list can contradict them.
        modalities = _distinct(_modality(m) for m in texts(study, tags.MODALITIES_IN_STUDY))
        number_of_series, number_of_instances = pacs_series, pacs_instances
    return StudyFacts(
        uid=study_uid,
        patient=_patient(study, options),
        modalities=modalities,
        series=series,
        accession=_accession(study),
        started=fhir_datetime(text(study, tags.STUDY_DATE), text(study, tags.STUDY_TIME), offset, options.zone),
        referrer=person_name(study, tags.REFERRING_PHYSICIAN_NAME),
        description=text(study, tags.STUDY_DESCRIPTION),
        number_of_series=number_of_series,
        number_of_instances=number_of_instances,
        procedures=_concepts(study, tags.PROCEDURE_CODE_SEQUENCE),
        reasons=_reasons(study),
        interpreters=tuple(person_names(study, tags.NAME_OF_PHYSICIANS_READING_STUDY)),
        endpoint_id=options.endpoint_id or None,
        notes=tuple(notes),
    )


def series_element(row: DicomJson, options: MappingOptions) -> dict[str, Any]:
    """One series row as the R5 ``series`` element it becomes (without instances): what search criteria match on."""
    return r5.series(series_facts(row, options))


def series_facts(row: DicomJson, options: MappingOptions) -> SeriesFacts:
    """One series row, without its instances."""
    return _series(SeriesRows(row, ()), text(row, tags.TIMEZONE_OFFSET_FROM_UTC), options, [])


def instance_element(row: DicomJson) -> dict[str, Any]:
    """One instance row as the R5 ``series.instance`` element it becomes."""
    return r5.instance(_instance(row))


def _accession(study: DicomJson) -> Issued | None:
    number = text(study, tags.ACCESSION_NUMBER)
    if number is None:
        return None
    issuer = items(study, tags.ISSUER_OF_ACCESSION_NUMBER_SEQUENCE)
    if issuer:
        system, assigner = _issuer(issuer[0])
        return Issued(number, system, None if system else assigner)
    return Issued(number)


def _issuer(designator: DicomJson) -> tuple[str | None, str | None]:
    """A Hierarchic Designator -> (identifier system URI, assigner display)."""
    universal = text(designator, tags.UNIVERSAL_ENTITY_ID)
    kind = (text(designator, tags.UNIVERSAL_ENTITY_ID_TYPE) or "").upper()
    if universal and kind == "ISO" and OID.match(universal):
        return f"urn:oid:{universal}", None
    if universal and kind in ("URI", "URL") and URI.match(universal):
        return universal, None
    return None, text(designator, tags.LOCAL_NAMESPACE_ENTITY_ID) or universal


def subject_of(row: DicomJson, options: MappingOptions) -> dict[str, Any]:
    """The ``subject`` an ImagingStudy made from ``row`` (any level's row naming its patient) would carry."""
    return r5.subject(_patient(row, options))


def _patient(study: DicomJson, options: MappingOptions) -> Patient:
    # The identifier carries the PACS's raw values: a PatientID the bridge cleaned would name another patient
    # (``P1\u00a0`` is not ``P1``). One that a FHIR string cannot hold as it is is written as absent.
    name = person_name(study, tags.PATIENT_NAME)
    patient_id = raw(study, tags.PATIENT_ID)
    if patient_id is None:
        return Patient(name=name)
    system = assigner = None
    issuer = raw(study, tags.ISSUER_OF_PATIENT_ID)
    if issuer is None:
        system = options.patient_id_system
    elif issuer in options.issuer_systems:
        system = options.issuer_systems[issuer]
    elif OID.match(issuer):
        system = f"urn:oid:{issuer}"
    else:
        # An issuer we cannot turn into a URI: say who assigned the ID rather than invent a system.
        assigner = text(study, tags.ISSUER_OF_PATIENT_ID)
    return Patient(patient_id, writable(patient_id), system or None, assigner, name)


def _series(rows: SeriesRows, offset: str | None, options: MappingOptions, notes: list[str]) -> SeriesFacts:
    row = rows.series
    series_uid = fhir_id(row, tags.SERIES_INSTANCE_UID)
    if series_uid is None:  # the caller drops such rows; guard the invariant anyway
        raise ValueError("a series row has no valid SeriesInstanceUID")
    instances = tuple(_instance(i) for i in sorted(rows.instances, key=_instance_order))
    modality = list(dict.fromkeys(texts(row, tags.MODALITY)))
    if not modality:
        notes.append(f"series {series_uid}: no Modality, given {FALLBACK_MODALITY}")
        modality = [FALLBACK_MODALITY]
    pacs_count = unsigned(row, tags.NUMBER_OF_SERIES_RELATED_INSTANCES)
    if pacs_count is not None and pacs_count != len(instances):
        notes.append(f"series {series_uid}: PACS counts {pacs_count} instances, listed {len(instances)}")
    return SeriesFacts(
        uid=series_uid,
        # Modality has one value (VM 1): of two, neither can be said to be the series', and both are kept as text.
        modality=_modality(modality[0]) if len(modality) == 1 else Concept(text="\\".join(modality)),
        instances=instances,
        number=unsigned(row, tags.SERIES_NUMBER),
        description=text(row, tags.SERIES_DESCRIPTION),
        body_site=_body_site(text(row, tags.BODY_PART_EXAMINED)),
        laterality=_laterality(text(row, tags.LATERALITY)) or _image_laterality(rows.instances),
        started=fhir_datetime(text(row, tags.SERIES_DATE), text(row, tags.SERIES_TIME), offset, options.zone),
        performers=_performers(row),
    )


def _modality(value: str) -> Concept:
    """A DICOM defined term (CID 33) as its DCM coding; any other value (retired, private, ``CT MR``) as text
    alone, since no DCM code says what it means. A ``modality=`` search, which matches DCM codings, then does
    not find it: that is right, it is not the modality searched for."""
    # CS values are upper case by definition (PS3.5 6.2) and DCM codes are case-sensitive: ``ct`` is CT.
    code = value.upper()
    if (display := terminology.modality_display(code)) is None:
        return Concept(text=value)
    return Concept((Coding(terminology.DCM, code, display),))


def _body_site(term: str | None) -> Concept | None:
    if term is None:
        return None
    if found := terminology.body_part(term):
        return Concept((Coding(terminology.SNOMED, found.code, found.display),), term)
    return Concept(text=term)


def _laterality(code: str | None) -> Concept | None:
    found = terminology.laterality(code) if code else None
    if found is None:
        return None
    return Concept((Coding(terminology.SNOMED, found.code, found.display),))


def _image_laterality(instances: Sequence[DicomJson]) -> Concept | None:
    """The laterality every instance of a series gives in Image Laterality (0020,0062), where mammography puts it;
    None if one gives none or another (a series of L and R images is of neither side alone, and not of B).

    Taken from the instance rows, never the series row: a PACS asked for it at series level answers one
    instance's value (Orthanc does), which would call such a series L."""
    if not instances or (value := text(instances[0], tags.IMAGE_LATERALITY)) is None:
        return None  # the first instance decides for most series, which have none: no pass over thousands of rows
    if any(text(instance, tags.IMAGE_LATERALITY) != value for instance in instances[1:]):
        return None
    return _laterality(value)


_PERFORMER_FUNCTIONS = (
    # (tag, function): the people, in series-performer-function (CON VRF PRF SPRF REF), the same in R4 and R5
    (tags.PERFORMING_PHYSICIAN_NAME, Coding(PARTICIPATION_TYPE, "PRF", "performer")),
    (tags.OPERATORS_NAME, Coding(PARTICIPATION_TYPE, "SPRF", "secondary performer")),
)


def _performers(row: DicomJson) -> tuple[Performer, ...]:
    performers = [
        Performer("Practitioner", name, function)
        for tag, function in _PERFORMER_FUNCTIONS
        for name in person_names(row, tag)
    ]
    # The equipment and the institution have no function in that value set (DEV and LOC are not in it), and
    # function is 0..1: the actor's type says what they are.
    device = " ".join(v for v in (text(row, tags.MANUFACTURER), text(row, tags.MANUFACTURER_MODEL_NAME)) if v)
    if device:
        performers.append(Performer("Device", device))
    if institution := text(row, tags.INSTITUTION_NAME):
        performers.append(Performer("Organization", institution))
    return tuple(performers)


def _instance(row: DicomJson) -> InstanceFacts:
    instance_uid = fhir_id(row, tags.SOP_INSTANCE_UID)
    sop_class = fhir_id(row, tags.SOP_CLASS_UID)
    if instance_uid is None or sop_class is None:  # the caller drops such rows; guard the invariant anyway
        raise ValueError("an instance row lacks a valid SOPInstanceUID or SOPClassUID")
    number = unsigned(row, tags.INSTANCE_NUMBER)
    return InstanceFacts(instance_uid, sop_class, sop_class_name(sop_class), number, _title(row))


def sop_class_name(sop_class: str) -> str | None:
    """The name DICOM gives a SOP Class UID, or None."""
    return terminology.uid_name(sop_class)


def _title(row: DicomJson) -> str | None:
    if title := text(row, tags.DOCUMENT_TITLE):
        return title
    for concept in items(row, tags.CONCEPT_NAME_CODE_SEQUENCE):
        if meaning := text(concept, tags.CODE_MEANING):
            return meaning
    return None


def _coded(item: DicomJson) -> Concept:
    """A Code Sequence item (Basic Code Attributes Macro) as a concept: its coding where the scheme has a known
    FHIR system, and its meaning as text."""
    meaning = text(item, tags.CODE_MEANING)
    code = text(item, tags.CODE_VALUE) or text(item, tags.LONG_CODE_VALUE) or text(item, tags.URN_CODE_VALUE)
    system = CODING_SCHEMES.get((text(item, tags.CODING_SCHEME_DESIGNATOR) or "").upper())
    if code is not None and system is not None:
        return Concept((Coding(system, code, meaning),), meaning)
    return Concept(text=meaning or code)


def _concepts(row: DicomJson, tag: str) -> tuple[Concept, ...]:
    """The items of a code sequence that say anything (an item with neither code nor meaning is dropped)."""
    return tuple(c for c in map(_coded, items(row, tag)) if c.codings or c.text)


def _reasons(study: DicomJson) -> tuple[Concept, ...]:
    """The coded reasons, else the reason in words: the words usually say the same as the codes' meanings."""
    coded = _concepts(study, tags.REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE)
    said = text(study, tags.REASON_FOR_THE_REQUESTED_PROCEDURE)
    return coded or ((Concept(text=said),) if said else ())


def _distinct(concepts: Iterable[Concept]) -> tuple[Concept, ...]:
    """Distinct modality concepts in first-seen order: by system|code, or by text for one without a coding
    (ist-7 compares both)."""
    seen: dict[tuple[str | None, ...], Concept] = {}
    for concept in concepts:
        key = (concept.codings[0].system, concept.codings[0].code) if concept.codings else (concept.text,)
        seen.setdefault(key, concept)
    return tuple(seen.values())


def _series_order(rows: SeriesRows) -> tuple[int, str]:
    number = unsigned(rows.series, tags.SERIES_NUMBER)
    return (number if number is not None else 2**31, fhir_id(rows.series, tags.SERIES_INSTANCE_UID) or "")


def _instance_order(row: DicomJson) -> tuple[int, str]:
    number = unsigned(row, tags.INSTANCE_NUMBER)
    return (number if number is not None else 2**31, fhir_id(row, tags.SOP_INSTANCE_UID) or "")
