"""The parts of an ImagingStudy that R4 and R5 write alike: identifiers, the subject, performers, instances."""

from __future__ import annotations

from typing import Any

from bridge.mapping.facts import Coding, InstanceFacts, Issued, Patient, Performer, SeriesFacts, StudyFacts
from bridge.terminology import DICOM_UID_SYSTEM, RFC3986, V2_0203

DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: Marks a resource that leaves elements out (here: the series of a study-level result).
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
#: Each series' rendered instance elements, by series UID.
Instances = dict[str, list[dict[str, Any]]]

ACCESSION_TYPE = {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]}


def coding(found: Coding) -> dict[str, str]:
    if found.display is None:
        return {"system": found.system, "code": found.code}
    return {"system": found.system, "code": found.code, "display": found.display}


def identifiers(facts: StudyFacts) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{facts.uid}"}]
    # R4-era clients look for the accession number among the identifiers, R5 ones in basedOn: give both.
    if facts.accession is not None:
        found.append(accession(facts.accession))
    return found


def accession(issued: Issued) -> dict[str, Any]:
    identifier: dict[str, Any] = {"type": ACCESSION_TYPE}
    if issued.system:
        identifier["system"] = issued.system
    elif issued.assigner:
        identifier["assigner"] = {"display": issued.assigner}
    identifier["value"] = issued.value
    return identifier


def subject(patient: Patient) -> dict[str, Any]:
    found: dict[str, Any] = {"type": "Patient"}
    if patient.id is not None:
        identifier: dict[str, Any] = {}
        if patient.system:
            identifier["system"] = patient.system
        elif patient.assigner:
            identifier["assigner"] = {"display": patient.assigner}
        if patient.id_writable:
            identifier["value"] = patient.id
        else:
            identifier["_value"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unsupported"}]}
        found["identifier"] = identifier
    if patient.name:
        found["display"] = patient.name
    if len(found) == 1:
        # subject is 1..1: say that the PACS did not know rather than make something up.
        found["extension"] = [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]
    return found


def performer(found: Performer) -> dict[str, Any]:
    actor = {"actor": {"type": found.kind, "display": found.name}}
    return actor if found.function is None else {"function": {"coding": [coding(found.function)]}, **actor}


def instance(facts: InstanceFacts) -> dict[str, Any]:
    sop_class: dict[str, str] = {"system": RFC3986, "code": f"urn:oid:{facts.sop_class}"}
    if facts.sop_class_name:
        sop_class["display"] = facts.sop_class_name
    found: dict[str, Any] = {"uid": facts.uid, "sopClass": sop_class}
    if facts.number is not None:
        found["number"] = facts.number
    if facts.title:
        found["title"] = facts.title
    return found


def instances_of(series: tuple[SeriesFacts, ...]) -> Instances:
    return {s.uid: [instance(i) for i in s.instances] for s in series}
