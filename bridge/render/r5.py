"""Study facts as an R5 (5.0.0) ImagingStudy: concepts are CodeableConcepts, body sites CodeableReferences."""

from __future__ import annotations

from typing import Any

from bridge.mapping.facts import Concept, InstanceFacts, Patient, SeriesFacts, StudyFacts
from bridge.render import common
from bridge.render.common import Instances
from bridge.render.narrative import narrative


def imaging_study(facts: StudyFacts, instances: Instances | None = None) -> dict[str, Any]:
    """The ImagingStudy; ``instances``: each series' instance elements, by series UID, if already rendered
    (they are the same in R4 and R5, see ``bridge.render.both``)."""
    resource: dict[str, Any] = {"resourceType": "ImagingStudy", "id": facts.uid}
    if facts.subsetted:
        # Without its series the resource is a subset, and says so: ist-7 cannot hold for ModalitiesInStudy.
        resource["meta"] = {"tag": [dict(common.SUBSETTED)]}
    resource["text"] = narrative(facts)
    resource["identifier"] = common.identifiers(facts)
    resource["status"] = "available"
    if facts.modalities:
        resource["modality"] = [concept(m) for m in facts.modalities]
    resource["subject"] = common.subject(facts.patient)
    if facts.started:
        resource["started"] = facts.started
    if facts.accession is not None:
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": common.accession(facts.accession)}]
    if facts.referrer:
        resource["referrer"] = {"display": facts.referrer}
    if facts.endpoint_id:
        resource["endpoint"] = [{"reference": f"Endpoint/{facts.endpoint_id}", "type": "Endpoint"}]
    if facts.procedures:
        resource["procedure"] = [{"concept": concept(c)} for c in facts.procedures]
    if facts.reasons:
        resource["reason"] = [{"concept": concept(c)} for c in facts.reasons]
    if facts.description:
        resource["description"] = facts.description
    if facts.number_of_series is not None:
        resource["numberOfSeries"] = facts.number_of_series
    if facts.number_of_instances is not None:
        resource["numberOfInstances"] = facts.number_of_instances
    if facts.series:
        resource["series"] = [series(s, None if instances is None else instances[s.uid]) for s in facts.series]
    return resource


def concept(found: Concept) -> dict[str, Any]:
    """A CodeableConcept: the codings, then the text."""
    written: dict[str, Any] = {}
    if found.codings:
        written["coding"] = [common.coding(c) for c in found.codings]
    if found.text:
        written["text"] = found.text
    return written


def _term_first(found: Concept) -> dict[str, Any]:
    """A body site as the bridge has always written it: DICOM's term, then its coding (the bytes stay as served)."""
    written: dict[str, Any] = {"text": found.text} if found.text else {}
    if found.codings:
        written["coding"] = [common.coding(c) for c in found.codings]
    return written


def series(facts: SeriesFacts, instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    written: dict[str, Any] = {"uid": facts.uid}
    if facts.number is not None:
        written["number"] = facts.number
    written["modality"] = concept(facts.modality)
    if facts.description:
        written["description"] = facts.description
    written["numberOfInstances"] = len(facts.instances)
    if facts.body_site is not None:
        written["bodySite"] = {"concept": _term_first(facts.body_site)}
    if facts.laterality is not None:
        written["laterality"] = concept(facts.laterality)
    if facts.started:
        written["started"] = facts.started
    if facts.performers:
        written["performer"] = [common.performer(p) for p in facts.performers]
    if facts.instances:
        written["instance"] = [common.instance(i) for i in facts.instances] if instances is None else instances
    return written


def instance(facts: InstanceFacts) -> dict[str, Any]:
    return common.instance(facts)


def subject(patient: Patient) -> dict[str, Any]:
    return common.subject(patient)
