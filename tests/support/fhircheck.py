"""Independent checks of what the bridge emits.

R5 (``validate``): fhir.resources' R5 models, ist-1..ist-7 via fhirpathpy, the codes of the value sets the models
do not check, and the narrative. R4 (``validate_r4``): fhir.resources' R4B models (ImagingStudy and Endpoint are
the same in R4B as in 4.0.1), the R4 invariants that apply to them (R4 ImagingStudy has no ist-* rules: only the
inherited dom-2..dom-6, ele-1, ref-1), no R5-only element, and the narrative. The narrative (txt-1, txt-2) is
checked in Python: fhirpathpy has no ``htmlChecks()``, and neither model looks inside the div.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from fhir.resources import get_fhir_model_class
from fhir.resources.R4B import get_fhir_model_class as get_r4_model_class
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


#: The R4 (4.0.1) invariants on a DomainResource and its elements, as FHIRPath where fhirpathpy can evaluate it.
#: dom-3 keeps its reference test alone: fhirpathpy cannot take ``as(canonical)`` of a collection, and the bridge
#: writes no canonical. ele-1 needs ``hasValue()``, which fhirpathpy lacks: it is ``empty_elements`` below.
R4_INVARIANTS = {
    "dom-2": "contained.contained.empty()",
    "dom-3": "contained.where(('#' + id in %resource.descendants().reference).not()).empty()",
    "dom-4": "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
    "dom-5": "contained.meta.security.empty()",
    "ref-1": "descendants().where(reference.exists()).all(reference.startsWith('#').not() or "
    "(reference.substring(1) in %resource.contained.id))",
}
#: dom-6 is a warning ("should have narrative"): the bridge holds itself to it for every whole ImagingStudy, in
#: both versions. A subset may leave the narrative out (``_elements``).
DOM_6 = "text.`div`.exists()"
#: Elements R5 has and R4 does not, at the paths the bridge could write them.
R5_ONLY = {
    "ImagingStudy": ("procedure", "reason", "partOf"),
    "Endpoint": ("payload", "environmentType", "description"),
}

XHTML = "http://www.w3.org/1999/xhtml"
#: txt-1: the basic formatting elements of HTML 4.0 chapters 7-11 (less 9.4) and 15, ``a`` and ``img``.
NARRATIVE_ELEMENTS = frozenset({
    "a", "abbr", "acronym", "b", "big", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "dfn",
    "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "q", "samp",
    "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var",
})  # fmt: skip


def narrative_errors(div: str) -> list[str]:
    """What makes ``div`` an invalid Narrative.div (txt-1, txt-2, the XHTML namespace); empty if nothing."""
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        return [f"not well-formed XML: {exc}"]
    errors = []
    if root.tag != f"{{{XHTML}}}div":
        errors.append(f"the root is {root.tag}, not a div in {XHTML}")
    for element in root.iter():
        namespace, _, name = element.tag.rpartition("}")
        if namespace.lstrip("{") != XHTML:
            errors.append(f"{element.tag} is outside the XHTML namespace")
        if name not in NARRATIVE_ELEMENTS:
            errors.append(f"txt-1: <{name}> is not allowed")
        errors.extend(f"txt-1: event attribute {a}" for a in element.attrib if a.lower().startswith("on"))
    if not "".join(root.itertext()).strip():
        errors.append("txt-2: no non-whitespace content")
    return errors


def empty_elements(value: Any, path: str = "") -> list[str]:
    """ele-1 on JSON: the paths of elements with neither a value nor children (``{}``, ``[]``, ``""``, null)."""
    if value is None or value == "" or value == [] or value == {}:
        return [path or "(root)"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in empty_elements(item, f"{path}.{key}" if path else key)]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in empty_elements(item, f"{path}[{i}]")]
    return []


def _check_narrative(resource: dict[str, Any]) -> None:
    if resource["resourceType"] == "ImagingStudy" and not _subsetted(resource):
        assert evaluate(resource, DOM_6) == [True], f"ImagingStudy {resource.get('id')} has no narrative (dom-6)"
    text = resource.get("text")
    if text is not None:
        assert text.get("status") in ("generated", "extensions", "additional", "empty"), text
        errors = narrative_errors(text.get("div", ""))
        assert not errors, f"{resource['resourceType']} {resource.get('id')}: {errors}"


def validate_r4(resource: dict[str, Any]) -> None:
    """Raise AssertionError (or pydantic.ValidationError) unless ``resource`` is valid R4 (4.0.1): the R4B models,
    the invariants of R4 that apply, no element R5 alone has, and a valid narrative. A Bundle's entries too."""
    get_r4_model_class(resource["resourceType"]).model_validate(resource)
    leaked = [key for key in R5_ONLY.get(resource["resourceType"], ()) if key in resource]
    assert not leaked, f"R5-only elements in an R4 {resource['resourceType']}: {leaked}"
    if resource["resourceType"] == "Endpoint":
        assert isinstance(resource.get("connectionType"), dict), "R4 Endpoint.connectionType is one Coding"
    context = {"resource": resource}
    failed = [name for name, expr in R4_INVARIANTS.items() if evaluate(resource, expr, context) != [True]]
    assert not failed, f"{resource['resourceType']} {resource.get('id')} violates {failed}"
    assert not (empty := empty_elements(resource)), f"ele-1: empty elements at {empty}"
    _check_narrative(resource)
    if resource["resourceType"] == "ImagingStudy":
        failed = [name for name, expr in OWN_R4_CHECKS.items() if evaluate(resource, expr) != [True]]
        assert not failed, f"ImagingStudy {resource.get('id')} fails the bridge's own checks {failed}"
    if resource["resourceType"] == "Bundle":
        for entry in resource.get("entry", []):
            validate_r4(entry["resource"])


#: What the bridge holds itself to in R4 too, though R4 states no invariant for it: ist-1..ist-6's counts and UID
#: rules (R4 says only that the counts "may be larger" than what the resource lists; the bridge's are exact).
OWN_R4_CHECKS = {name: INVARIANTS[name] for name in ("ist-1", "ist-2", "ist-3", "ist-4", "ist-5", "ist-6")}


def validate(resource: dict[str, Any]) -> None:
    """Raise AssertionError unless ``resource`` is valid R5 (and, for ImagingStudy, meets ist-1..ist-7 and uses
    performer functions of their value set), with a valid narrative."""
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)  # raises pydantic.ValidationError on invalid FHIR
    _check_narrative(resource)
    if resource["resourceType"] == "ImagingStudy":
        checked = dict(INVARIANTS, performer_function=PERFORMER_FUNCTION)
        if _subsetted(resource):
            # A subset leaves series out on purpose; ist-7 would then forbid modality, the one thing a
            # study-level result has to say what kind of study it is. ist-1..ist-6 still hold.
            del checked["ist-7"]
        failed = [name for name, expr in checked.items() if evaluate(resource, expr, {"resource": resource}) != [True]]
        assert not failed, f"ImagingStudy {resource.get('id')} violates {failed}"
    if resource["resourceType"] == "Bundle":
        for entry in resource.get("entry", []):
            validate(entry["resource"])


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(tag.get("code") == "SUBSETTED" for tag in resource.get("meta", {}).get("tag", []))
