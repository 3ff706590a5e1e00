"""DICOM JSON study, series and instance rows -> a FHIR R5 ImagingStudy (a plain dict, ready for orjson).

The rules come from ``docs/mapping.md``. Two principles decide the hard cases:

- the resource must satisfy ist-1..ist-7, so when the rows we list and the PACS's computed counts disagree the
  listed rows win, and the disagreement is returned as a note for the caller to log;
- a malformed DICOM value is repaired when the repair is unambiguous and dropped otherwise; it never becomes
  invalid FHIR and never raises.
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
from bridge.mapping.identity import raw, writable
from bridge.terminology import DICOM_UID_SYSTEM, RFC3986, V2_0203

PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: Marks a resource that leaves elements out (here: the series of a study-level result).
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
#: The modality of a series whose PACS row has none (ImagingStudy.series.modality is 1..1).
FALLBACK_MODALITY = "OT"


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
    """The resource plus notes on what was repaired or disagreed (for the caller to log)."""

    resource: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def imaging_study(rows: StudyRows, options: MappingOptions) -> Mapped:
    """Map one study. The study row must carry a valid StudyInstanceUID (the caller checked it)."""
    study = rows.study
    study_uid = uid(study, tags.STUDY_INSTANCE_UID)
    if study_uid is None:
        raise ValueError("the study row has no valid StudyInstanceUID")
    notes: list[str] = []
    offset = text(study, tags.TIMEZONE_OFFSET_FROM_UTC)
    resource: dict[str, Any] = {"resourceType": "ImagingStudy", "id": study_uid}
    if rows.series is None:
        # Without its series the resource is a subset, and says so: ist-7 cannot hold for ModalitiesInStudy.
        resource["meta"] = {"tag": [dict(SUBSETTED)]}
    resource["identifier"] = _identifiers(study, study_uid)
    resource["status"] = "available"

    series_list: list[dict[str, Any]] | None = None
    if rows.series is not None:
        ordered = sorted(rows.series, key=_series_order)
        series_list = [_series(s, offset, options, notes) for s in ordered]
        modalities = _distinct(s["modality"] for s in series_list)
    else:
        modalities = _distinct(_modality(m) for m in texts(study, tags.MODALITIES_IN_STUDY))
    if modalities:
        resource["modality"] = modalities

    resource["subject"] = _subject(study, options)
    if started := fhir_datetime(text(study, tags.STUDY_DATE), text(study, tags.STUDY_TIME), offset, options.zone):
        resource["started"] = started
    if accession := _accession(study):
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": accession}]
    if referrer := person_name(study, tags.REFERRING_PHYSICIAN_NAME):
        resource["referrer"] = {"display": referrer}
    if options.endpoint_id:
        resource["endpoint"] = [{"reference": f"Endpoint/{options.endpoint_id}", "type": "Endpoint"}]
    if description := text(study, tags.STUDY_DESCRIPTION):
        resource["description"] = description

    pacs_series = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_SERIES)
    pacs_instances = unsigned(study, tags.NUMBER_OF_STUDY_RELATED_INSTANCES)
    if series_list is None:
        # Study level only: the PACS's counts are all there is, and no list can contradict them.
        _set_if(resource, "numberOfSeries", pacs_series)
        _set_if(resource, "numberOfInstances", pacs_instances)
    else:
        listed_instances = sum(s["numberOfInstances"] for s in series_list)
        resource["numberOfSeries"] = len(series_list)
        resource["numberOfInstances"] = listed_instances
        if pacs_series is not None and pacs_series != len(series_list):
            notes.append(f"study {study_uid}: PACS counts {pacs_series} series, listed {len(series_list)}")
        if pacs_instances is not None and pacs_instances != listed_instances:
            notes.append(f"study {study_uid}: PACS counts {pacs_instances} instances, listed {listed_instances}")
        if series_list:
            resource["series"] = series_list
    return Mapped(resource, notes)


def series_element(row: DicomJson, options: MappingOptions) -> dict[str, Any]:
    """One series row as the ``series`` element it becomes (without instances): what search criteria match on."""
    return _series(SeriesRows(row, ()), text(row, tags.TIMEZONE_OFFSET_FROM_UTC), options, [])


def instance_element(row: DicomJson) -> dict[str, Any]:
    """One instance row as the ``series.instance`` element it becomes."""
    return _instance(row)


def _identifiers(study: DicomJson, study_uid: str) -> list[dict[str, Any]]:
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}]
    # R4-era clients look for the accession number among the identifiers, R5 ones in basedOn: give both.
    if accession := _accession(study):
        identifiers.append(accession)
    return identifiers


def _accession(study: DicomJson) -> dict[str, Any] | None:
    number = text(study, tags.ACCESSION_NUMBER)
    if number is None:
        return None
    identifier: dict[str, Any] = {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]},
    }
    issuer = items(study, tags.ISSUER_OF_ACCESSION_NUMBER_SEQUENCE)
    if issuer:
        system, assigner = _issuer(issuer[0])
        if system:
            identifier["system"] = system
        elif assigner:
            identifier["assigner"] = {"display": assigner}
    identifier["value"] = number
    return identifier


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
    return _subject(row, options)


def _subject(study: DicomJson, options: MappingOptions) -> dict[str, Any]:
    subject: dict[str, Any] = {"type": "Patient"}
    # The identifier carries the PACS's raw values: a PatientID the bridge cleaned would name another patient
    # (``P1\u00a0`` is not ``P1``). One that a FHIR string cannot hold as it is is written as absent.
    patient_id = raw(study, tags.PATIENT_ID)
    if patient_id is not None:
        identifier: dict[str, Any] = {}
        issuer = raw(study, tags.ISSUER_OF_PATIENT_ID)
        if issuer is None:
            if options.patient_id_system:
                identifier["system"] = options.patient_id_system
        elif issuer in options.issuer_systems:
            identifier["system"] = options.issuer_systems[issuer]
        elif OID.match(issuer):
            identifier["system"] = f"urn:oid:{issuer}"
        elif assigner := text(study, tags.ISSUER_OF_PATIENT_ID):
            # An issuer we cannot turn into a URI: say who assigned the ID rather than invent a system.
            identifier["assigner"] = {"display": assigner}
        if writable(patient_id):
            identifier["value"] = patient_id
        else:
            identifier["_value"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unsupported"}]}
        subject["identifier"] = identifier
    if name := person_name(study, tags.PATIENT_NAME):
        subject["display"] = name
    if len(subject) == 1:
        # subject is 1..1: say that the PACS did not know rather than make something up.
        subject["extension"] = [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]
    return subject


def _series(rows: SeriesRows, offset: str | None, options: MappingOptions, notes: list[str]) -> dict[str, Any]:
    row = rows.series
    series_uid = fhir_id(row, tags.SERIES_INSTANCE_UID)
    if series_uid is None:  # the caller drops such rows; guard the invariant anyway
        raise ValueError("a series row has no valid SeriesInstanceUID")
    instances = [_instance(i) for i in sorted(rows.instances, key=_instance_order)]
    series: dict[str, Any] = {"uid": series_uid}
    _set_if(series, "number", unsigned(row, tags.SERIES_NUMBER))
    modality = list(dict.fromkeys(texts(row, tags.MODALITY)))
    if not modality:
        notes.append(f"series {series_uid}: no Modality, given {FALLBACK_MODALITY}")
        modality = [FALLBACK_MODALITY]
    # Modality has one value (VM 1): of two, neither can be said to be the series', and both are kept as text.
    series["modality"] = _modality(modality[0]) if len(modality) == 1 else {"text": "\\".join(modality)}
    if description := text(row, tags.SERIES_DESCRIPTION):
        series["description"] = description
    series["numberOfInstances"] = len(instances)
    pacs_count = unsigned(row, tags.NUMBER_OF_SERIES_RELATED_INSTANCES)
    if pacs_count is not None and pacs_count != len(instances):
        notes.append(f"series {series_uid}: PACS counts {pacs_count} instances, listed {len(instances)}")
    if body_site := _body_site(text(row, tags.BODY_PART_EXAMINED)):
        series["bodySite"] = body_site
    if laterality := _laterality(text(row, tags.LATERALITY)) or _image_laterality(rows.instances):
        series["laterality"] = laterality
    started = fhir_datetime(text(row, tags.SERIES_DATE), text(row, tags.SERIES_TIME), offset, options.zone)
    if started:
        series["started"] = started
    if performers := _performers(row):
        series["performer"] = performers
    if instances:
        series["instance"] = instances
    return series


def _modality(value: str) -> dict[str, Any]:
    """A DICOM defined term (CID 33) as its DCM coding; any other value (retired, private, ``CT MR``) as text
    alone, since no DCM code says what it means. A ``modality=`` search, which matches DCM codings, then does
    not find it: that is right, it is not the modality searched for."""
    # CS values are upper case by definition (PS3.5 6.2) and DCM codes are case-sensitive: ``ct`` is CT.
    code = value.upper()
    if (display := terminology.modality_display(code)) is None:
        return {"text": value}
    return {"coding": [{"system": terminology.DCM, "code": code, "display": display}]}


def _body_site(term: str | None) -> dict[str, Any] | None:
    if term is None:
        return None
    concept: dict[str, Any] = {"text": term}
    if found := terminology.body_part(term):
        concept["coding"] = [{"system": terminology.SNOMED, "code": found.code, "display": found.display}]
    return {"concept": concept}


def _laterality(code: str | None) -> dict[str, Any] | None:
    found = terminology.laterality(code) if code else None
    if found is None:
        return None
    return {"coding": [{"system": terminology.SNOMED, "code": found.code, "display": found.display}]}


def _image_laterality(instances: Sequence[DicomJson]) -> dict[str, Any] | None:
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
    # (tag, function code, display): the people, in R5's series-performer-function (CON VRF PRF SPRF REF)
    (tags.PERFORMING_PHYSICIAN_NAME, "PRF", "performer"),
    (tags.OPERATORS_NAME, "SPRF", "secondary performer"),
)


def _performers(row: DicomJson) -> list[dict[str, Any]]:
    performers = []
    for tag, code, display in _PERFORMER_FUNCTIONS:
        for name in person_names(row, tag):
            function = {"coding": [{"system": PARTICIPATION_TYPE, "code": code, "display": display}]}
            performers.append({"function": function, "actor": {"type": "Practitioner", "display": name}})
    # The equipment and the institution have no function in that value set (DEV and LOC are not in it), and
    # function is 0..1: the actor's type says what they are.
    device = " ".join(v for v in (text(row, tags.MANUFACTURER), text(row, tags.MANUFACTURER_MODEL_NAME)) if v)
    if device:
        performers.append({"actor": {"type": "Device", "display": device}})
    if institution := text(row, tags.INSTITUTION_NAME):
        performers.append({"actor": {"type": "Organization", "display": institution}})
    return performers


def _instance(row: DicomJson) -> dict[str, Any]:
    instance_uid = fhir_id(row, tags.SOP_INSTANCE_UID)
    sop_class = fhir_id(row, tags.SOP_CLASS_UID)
    if instance_uid is None or sop_class is None:  # the caller drops such rows; guard the invariant anyway
        raise ValueError("an instance row lacks a valid SOPInstanceUID or SOPClassUID")
    coding: dict[str, str] = {"system": RFC3986, "code": f"urn:oid:{sop_class}"}
    if name := sop_class_name(sop_class):
        coding["display"] = name
    instance: dict[str, Any] = {"uid": instance_uid, "sopClass": coding}
    _set_if(instance, "number", unsigned(row, tags.INSTANCE_NUMBER))
    if title := _title(row):
        instance["title"] = title
    return instance


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


def _distinct(concepts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct modality concepts in first-seen order: by system|code, or by text for one without a coding
    (ist-7 compares both)."""
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for concept in concepts:
        codings = concept.get("coding")
        key = (codings[0]["system"], codings[0]["code"]) if codings else (concept["text"],)
        seen.setdefault(key, concept)
    return list(seen.values())


def _series_order(rows: SeriesRows) -> tuple[int, str]:
    number = unsigned(rows.series, tags.SERIES_NUMBER)
    return (number if number is not None else 2**31, fhir_id(rows.series, tags.SERIES_INSTANCE_UID) or "")


def _instance_order(row: DicomJson) -> tuple[int, str]:
    number = unsigned(row, tags.INSTANCE_NUMBER)
    return (number if number is not None else 2**31, fhir_id(row, tags.SOP_INSTANCE_UID) or "")


def _set_if(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value
