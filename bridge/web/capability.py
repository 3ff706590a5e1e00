"""The CapabilityStatement, generated from the interactions the router actually serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge import RELEASE_DATE, __version__


def capability_statement(interactions: Mapping[str, Sequence[str]], base_url: str | None) -> dict[str, Any]:
    """An R5 CapabilityStatement listing, per resource type, the interactions served."""
    implementation: dict[str, Any] = {"description": "DICOMweb-to-FHIR bridge: ImagingStudy from QIDO-RS"}
    if base_url:
        implementation["url"] = base_url
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
                "resource": [
                    {"type": resource_type, "interaction": [{"code": code} for code in codes]}
                    for resource_type, codes in sorted(interactions.items())
                ],
            }
        ],
    }
