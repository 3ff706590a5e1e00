"""Independent checks of what the bridge emits: fhir.resources' R5 models, ist-1..ist-7 via fhirpathpy, and the
codes of the value sets the models do not check."""

from __future__ import annotations

from typing import Any

from fhir.resources import get_fhir_model_class
from fhirpathpy import evaluate

# The invariants as published, except ist-7: fhirpathpy evaluates a function's argument against the
# function's input, so its arguments are rooted at %resource (and the debugging trace() calls dropped).
INVARIANTS = {
    "ist-1": "series.exists() implies identifier.where(system = 'urn:dicom:uid').exists()",
    "ist-2": "identifier.where(system = 'urn:dicom:uid').count() < 2",
    "ist-3": "numberOfSeries.exists() and series.exists() implies numberOfSeries = series.count()",
    "ist-4": "numberOfInstances.exists() and series.exists() implies numberOfInstances = series.instance.count()",
    "ist-5": "numberOfInstances.exists() and series.numberOfInstances.exists() implies "
    "numberOfInstances = series.numberOfInstances.aggregate($total + $this.toInteger(), 0)",
    "ist-6": "series.where(numberOfInstances.empty() or instance.empty() or numberOfInstances = instance.count())"
    ".count() = series.count()",
    "ist-7": "modality.exists() implies "
    "modality.coding.select(system&'|'&code).exclude(%resource.series.modality.coding.select(system&'|'&code))"
    ".empty() and modality.text.exclude(%resource.series.modality.text).empty() and "
    "series.modality.coding.select(system&'|'&code).exclude(%resource.modality.coding.select(system&'|'&code))"
    ".empty() and series.modality.text.exclude(%resource.modality.text).empty()",
}

#: R5's series-performer-function (http://hl7.org/fhir/ValueSet/series-performer-function), codes of
#: http://terminology.hl7.org/CodeSystem/v3-ParticipationType. The binding is extensible, but every kind of
#: performer DICOM names has a code here or none: nothing else is emitted.
PERFORMER_FUNCTION = (
    "series.performer.function.coding.where(system != "
    "'http://terminology.hl7.org/CodeSystem/v3-ParticipationType' or (code in ('CON' | 'VRF' | 'PRF' | 'SPRF' | "
    "'REF')).not()).empty()"
)


def validate(resource: dict[str, Any]) -> None:
    """Raise AssertionError unless ``resource`` is valid R5 (and, for ImagingStudy, meets ist-1..ist-7 and uses
    performer functions of their value set)."""
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)  # raises pydantic.ValidationError on invalid FHIR
    if resource["resourceType"] == "ImagingStudy":
        checked = dict(INVARIANTS, performer_function=PERFORMER_FUNCTION)
        if any(tag.get("code") == "SUBSETTED" for tag in resource.get("meta", {}).get("tag", [])):
            # A subset leaves series out on purpose; ist-7 would then forbid modality, the one thing a
            # study-level result has to say what kind of study it is. ist-1..ist-6 still hold.
            del checked["ist-7"]
        failed = [name for name, expr in checked.items() if evaluate(resource, expr, {"resource": resource}) != [True]]
        assert not failed, f"ImagingStudy {resource.get('id')} violates {failed}"
    if resource["resourceType"] == "Bundle":
        for entry in resource.get("entry", []):
            validate(entry["resource"])
