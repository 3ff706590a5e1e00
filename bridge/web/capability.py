"""The CapabilityStatement, generated from the routes actually served and the one search parameter table, in
R4 or R5 (the same elements: the bridge states nothing R5 added), and ``$versions``'s answer."""

from __future__ import annotations

from typing import Any

from bridge import RELEASE_DATE, __version__
from bridge.fhirversion import FhirVersion
from bridge.search.parameters import INCLUDE_ENDPOINT, SEARCH_PARAMETERS, SearchParameter


def capability_statement(
    interactions: dict[str, list[str]],
    base_url: str | None,
    security: dict[str, Any] | None = None,
    version: FhirVersion = FhirVersion.R5,
) -> dict[str, Any]:
    """A CapabilityStatement in ``version`` listing, per resource type, the interactions served (and the search
    parameters by that version's names, for a type that can be searched); ``security`` is ``rest.security`` when
    authorization is on."""
    implementation: dict[str, Any] = {"description": "DICOMweb-to-FHIR bridge: ImagingStudy from QIDO-RS"}
    if base_url:
        implementation["url"] = base_url
    resources = []
    for resource_type, codes in sorted(interactions.items()):
        resource: dict[str, Any] = {"type": resource_type, "interaction": [{"code": code} for code in codes]}
        if resource_type == "ImagingStudy" and "search-type" in codes:
            resource["searchInclude"] = [INCLUDE_ENDPOINT]
            resource["searchParam"] = [_search_param(p, version) for p in SEARCH_PARAMETERS if p.served_in(version)]
        resources.append(resource)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "kind": "instance",
        "software": {"name": "dicomweb-fhir-bridge", "version": __version__},
        "implementation": implementation,
        "fhirVersion": version.release,
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


def versions_parameters(served: list[FhirVersion], default: FhirVersion) -> dict[str, Any]:
    """The answer of ``$versions``: a Parameters resource naming each version served and the default."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            *({"name": "version", "valueCode": version.value} for version in served),
            {"name": "default", "valueCode": default.value},
        ],
    }


def _search_param(parameter: SearchParameter, version: FhirVersion) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": parameter.name_in(version), "type": parameter.type}
    if definition := parameter.definition_in(version):
        entry["definition"] = definition
    modifiers = "".join(f", :{m}" for m in sorted(parameter.modifiers))
    entry["documentation"] = parameter.documentation_in(version) + (f" Modifiers{modifiers[1:]}." if modifiers else "")
    return entry
