"""The Endpoint resource that tells a viewer where to fetch a study's pixels (WADO-RS), in R5 or R4.

R4's Endpoint has one ``connectionType`` Coding and ``payloadType`` (1..*) and ``payloadMimeType`` where R5 has
a list of CodeableConcepts and ``payload``. No HL7 code system has a code for DICOM payloads, so the R4
payloadType is text alone, as in the specification's own WADO-RS example (``Endpoint/example-wadors``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from bridge.fhirversion import FhirVersion

CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD_MIME_TYPES = ("application/dicom", "application/dicom+json", "multipart/related")


def endpoint_id(address: str) -> str:
    """A stable id derived from the address: the same on every replica and restart, new if the address moves."""
    return "wado-rs-" + hashlib.sha256(address.encode()).hexdigest()[:16]


#: SMART Imaging Access: a client sends its access token to this Endpoint (and to no other).
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


CONNECTION = {"system": CONNECTION_TYPE, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"}


def wado_endpoint(
    address: str, *, requires_token: bool = False, version: FhirVersion = FhirVersion.R5
) -> dict[str, Any]:
    """The Endpoint for a WADO-RS base URL (scheme, host, path; a viewer appends ``/studies/{uid}``);
    ``requires_token`` marks it as taking the client's access token (authorization is on).

    ``version`` picks the shape (R5 unless asked).

    ``address`` may be a path alone (``/dicom-web``): the Endpoint is then this server's, at whatever origin
    it is reached by, and each answer completes the address with its request's origin (``with_origin``); its
    id, derived from the path, is the same at every origin."""
    address = address.rstrip("/")
    extension = [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}] if requires_token else []
    endpoint: dict[str, Any] = {
        "resourceType": "Endpoint",
        "id": endpoint_id(address),
        **({"extension": extension} if extension else {}),
        "status": "active",
    }
    if version is FhirVersion.R4:
        endpoint["connectionType"] = dict(CONNECTION)
        endpoint["name"] = "DICOMweb WADO-RS"
        endpoint["payloadType"] = [{"text": "DICOM"}]
        endpoint["payloadMimeType"] = list(PAYLOAD_MIME_TYPES)
    else:
        endpoint["connectionType"] = [{"coding": [dict(CONNECTION)]}]
        endpoint["name"] = "DICOMweb WADO-RS"
        endpoint["payload"] = [{"mimeType": list(PAYLOAD_MIME_TYPES)}]
    endpoint["address"] = address
    return endpoint


def with_origin(endpoint: dict[str, Any], origin: str) -> dict[str, Any]:
    """The Endpoint with a path-only address completed with ``origin`` (scheme://host[:port]); others as they are."""
    address = endpoint.get("address", "")
    if not address.startswith("/"):
        return endpoint
    return {**endpoint, "address": origin + address}
