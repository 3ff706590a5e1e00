"""Study facts as an R4 (4.0.1) ImagingStudy.

Where R4 differs from R5: ``modality``, ``series.modality``, ``series.bodySite`` and ``series.laterality`` are a
single Coding (a concept DICOM only named becomes a Coding with a display alone: a Coding has no text, and
claiming a DCM code for an unknown modality would say what the PACS did not); the procedure and the reason are
``procedureCode`` and ``reasonCode`` (CodeableConcepts); the physicians reading the study are ``interpreter``s,
which R5 dropped. Nothing R5 alone has (``procedure``, ``reason``, ``partOf``) is written.
"""

from __future__ import annotations

from typing import Any

from bridge.mapping.facts import Concept, SeriesFacts, StudyFacts
from bridge.render import common
from bridge.render.common import Instances
from bridge.render.narrative import narrative
from bridge.render.r5 import concept


def imaging_study(facts: StudyFacts, instances: Instances | None = None) -> dict[str, Any]:
    """The ImagingStudy; ``instances``: each series' instance elements, by series UID, if already rendered
    (they are the same in R4 and R5, see ``bridge.render.both``)."""
    resource: dict[str, Any] = {"resourceType": "ImagingStudy", "id": facts.uid}
    if facts.subsetted:
        resource["meta"] = {"tag": [dict(common.SUBSETTED)]}
    resource["text"] = narrative(facts)
    resource["identifier"] = common.identifiers(facts)
    resource["status"] = "available"
    if facts.modalities:
        resource["modality"] = [coding(m) for m in facts.modalities]
    resource["subject"] = common.subject(facts.patient)
    if facts.started:
        resource["started"] = facts.started
    if facts.accession is not None:
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": common.accession(facts.accession)}]
    if facts.referrer:
        resource["referrer"] = {"display": facts.referrer}
    if facts.interpreters:
        resource["interpreter"] = [{"type": "Practitioner", "display": name} for name in facts.interpreters]
    if facts.endpoint_id:
        resource["endpoint"] = [{"reference": f"Endpoint/{facts.endpoint_id}", "type": "Endpoint"}]
    if facts.number_of_series is not None:
        resource["numberOfSeries"] = facts.number_of_series
    if facts.number_of_instances is not None:
        resource["numberOfInstances"] = facts.number_of_instances
    if facts.procedures:
        resource["procedureCode"] = [concept(c) for c in facts.procedures]
    if facts.reasons:
        resource["reasonCode"] = [concept(c) for c in facts.reasons]
    if facts.description:
        resource["description"] = facts.description
    if facts.series:
        resource["series"] = [series(s, None if instances is None else instances[s.uid]) for s in facts.series]
    return resource


def coding(found: Concept) -> dict[str, str]:
    """A concept as one Coding: its first coding, or a display alone for a concept DICOM only named."""
    if found.codings:
        return common.coding(found.codings[0])
    return {"display": found.text or ""}  # a Concept has a coding or a text: never an empty display


def series(facts: SeriesFacts, instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    written: dict[str, Any] = {"uid": facts.uid}
    if facts.number is not None:
        written["number"] = facts.number
    written["modality"] = coding(facts.modality)
    if facts.description:
        written["description"] = facts.description
    written["numberOfInstances"] = len(facts.instances)
    if facts.body_site is not None:
        written["bodySite"] = coding(facts.body_site)
    if facts.laterality is not None:
        written["laterality"] = coding(facts.laterality)
    if facts.started:
        written["started"] = facts.started
    if facts.performers:
        written["performer"] = [common.performer(p) for p in facts.performers]
    if facts.instances:
        written["instance"] = [common.instance(i) for i in facts.instances] if instances is None else instances
    return written
