"""The CapabilityStatement, generated from the routes actually served and the one search parameter table."""

from __future__ import annotations

from typing import Any

from bridge import RELEASE_DATE, __version__
from bridge.search.parameters import INCLUDE_ENDPOINT, SEARCH_PARAMETERS


def capability_statement(
    interactions: dict[str, list[str]], base_url: str | None, security: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An R5 CapabilityStatement listing, per resource type, the interactions served (and the search
    parameters, for a type that can be searched); ``security`` is ``rest.security`` when authorization is on."""
    implementation: dict[str, Any] = {"description": "DICOMweb-to-FHIR bridge: ImagingStudy from QIDO-RS"}
    if base_url:
        implementation["url"] = base_url
    resources = []
    for resource_type, codes in sorted(interactions.items()):
        resource: dict[str, Any] = {"type": resource_type, "interaction": [{"code": code} for code in codes]}
        if resource_type == "ImagingStudy" and "search-type" in codes:
            resource["searchInclude"] = [INCLUDE_ENDPOINT]
            resource["searchParam"] = [_search_param(p) for p in SEARCH_PARAMETERS]
        resources.append(resource)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "kind": "instance",
        "software": {"name": "dicomweb-fhir-bridge", "version": __version__},
        "implementation": implementation,
        "fhirVersion": "5.0.0",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                **({"security": security} if security else {}),
                "resource": resources,
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            }
        ],
    }


def _search_param(parameter: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": parameter.name, "type": parameter.type}
    if parameter.definition:
        entry["definition"] = parameter.definition
    modifiers = "".join(f", :{m}" for m in sorted(parameter.modifiers))
    entry["documentation"] = parameter.documentation + (f" Modifiers{modifiers[1:]}." if modifiers else "")
    return entry
