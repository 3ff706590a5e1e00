"""The R5 Endpoint resource that tells a viewer where to fetch a study's pixels (WADO-RS)."""

from __future__ import annotations

import hashlib
from typing import Any

CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD_MIME_TYPES = ("application/dicom", "application/dicom+json", "multipart/related")


def endpoint_id(address: str) -> str:
    """A stable id derived from the address: the same on every replica and restart, new if the address moves."""
    return "wado-rs-" + hashlib.sha256(address.encode()).hexdigest()[:16]


#: SMART Imaging Access: a client sends its access token to this Endpoint (and to no other).
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"


def wado_endpoint(address: str, *, requires_token: bool = False) -> dict[str, Any]:
    """The Endpoint for a WADO-RS base URL (scheme, host, path; a viewer appends ``/studies/{uid}``);
    ``requires_token`` marks it as taking the client's access token (authorization is on).

    ``address`` may be a path alone (``/dicom-web``): the Endpoint is then this server's, at whatever origin
    it is reached by, and each answer completes the address with its request's origin (``with_origin``); its
    id, derived from the path, is the same at every origin."""
    address = address.rstrip("/")
    extension = [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}] if requires_token else []
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id(address),
        **({"extension": extension} if extension else {}),
        "status": "active",
        "connectionType": [
            {"coding": [{"system": CONNECTION_TYPE, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"}]}
        ],
        "name": "DICOMweb WADO-RS",
        "payload": [{"mimeType": list(PAYLOAD_MIME_TYPES)}],
        "address": address,
    }


def with_origin(endpoint: dict[str, Any], origin: str) -> dict[str, Any]:
    """The Endpoint with a path-only address completed with ``origin`` (scheme://host[:port]); others as they are."""
    address = endpoint.get("address", "")
    if not address.startswith("/"):
        return endpoint
    return {**endpoint, "address": origin + address}
