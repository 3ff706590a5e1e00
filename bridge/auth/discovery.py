"""What the bridge tells apps about its authorization: pure builders, no I/O.

- ``smart_configuration``: ``GET [base]/.well-known/smart-configuration`` (SMART App Launch 2 discovery): the
  authorization server's endpoints from its metadata, the scopes this server honours, and ``capabilities`` with
  ``smart-imaging-access`` and the SMART Imaging Access mode of each kind of token it serves (app launch for
  ``patient/`` and ``user/`` tokens; backend services only with a client policy, BRIDGE_AUTH_CLIENT_POLICY, as
  ``system/`` tokens grant nothing without one).
- ``rest_security``: the CapabilityStatement's ``rest.security``: the SMART-on-FHIR service coding and the
  oauth-uris extension.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.auth.issuer import http_url
from bridge.settings import Settings

SMART_IMAGING_ACCESS = "smart-imaging-access"
APP_LAUNCH = "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch"
BACKEND_SERVICES = "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"
#: The extension an Endpoint carries when the app must send its token to it (valueBoolean true).
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"

SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

#: What the resource server honours itself (bridge.auth.scopes): SMART v1 and v2 scopes, patient and user level.
CAPABILITIES = ("permission-v1", "permission-v2", "permission-patient", "permission-user")
#: Scopes that carry imaging access here, and those an app asks for beside them (served by the authorization
#: server: identity, launch context, refresh).
IMAGING_SCOPES = (
    "patient/ImagingStudy.rs",
    "patient/ImagingStudy.read",
    "user/ImagingStudy.rs",
    "user/ImagingStudy.read",
)
SYSTEM_SCOPES = ("system/ImagingStudy.rs", "system/ImagingStudy.read")
CONTEXT_SCOPES = ("launch", "launch/patient", "openid", "fhirUser", "offline_access", "online_access")

#: Endpoints taken from the issuer's metadata as they are (http(s) URLs only).
_ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
    "registration_endpoint",
    "management_endpoint",
)
#: Lists taken from the issuer's metadata as they are (strings only).
_LISTS = (
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "code_challenge_methods_supported",
)
#: oauth-uris sub-extension -> the smart-configuration field it repeats.
_OAUTH_URIS = {
    "authorize": "authorization_endpoint",
    "token": "token_endpoint",
    "introspect": "introspection_endpoint",
    "revoke": "revocation_endpoint",
    "register": "registration_endpoint",
    "manage": "management_endpoint",
}


def smart_configuration(settings: Settings, issuer_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The smart-configuration document, from the settings and the issuer's metadata (None when no
    BRIDGE_AUTH_ISSUER is set: then the document has no authorization or token endpoint, which only the
    authorization server can give)."""
    metadata = issuer_metadata or {}
    document: dict[str, Any] = {}
    issuer = _string(metadata.get("issuer")) or settings.auth_issuer
    if issuer:
        document["issuer"] = issuer
    jwks_uri = settings.auth_jwks_url or http_url(metadata.get("jwks_uri"))
    if jwks_uri:
        document["jwks_uri"] = jwks_uri
    for name in _ENDPOINTS:
        if url := http_url(metadata.get(name)):
            document[name] = url
    if settings.auth_introspection_url:
        document["introspection_endpoint"] = settings.auth_introspection_url
    backend = settings.auth_client_policy is not None
    grants = _strings(metadata.get("grant_types_supported"))
    if grants is None:
        grants = ["authorization_code", *(["client_credentials"] if backend else [])]
    document["grant_types_supported"] = grants
    document["response_types_supported"] = _strings(metadata.get("response_types_supported")) or ["code"]
    for name in _LISTS:
        if (values := _strings(metadata.get(name))) is not None:
            document[name] = values
    document["scopes_supported"] = [*IMAGING_SCOPES, *(SYSTEM_SCOPES if backend else ()), *CONTEXT_SCOPES]
    modes = []
    if "authorization_code" in grants:
        modes.append(APP_LAUNCH)
    if backend and "client_credentials" in grants:
        modes.append(BACKEND_SERVICES)
    given = _strings(metadata.get("capabilities")) or []
    document["capabilities"] = list(dict.fromkeys([*given, *CAPABILITIES, SMART_IMAGING_ACCESS, *modes]))
    return document


def rest_security(configuration: Mapping[str, Any], *, cors: bool | None = None) -> dict[str, Any]:
    """The CapabilityStatement's ``rest.security`` for a smart-configuration document (``smart_configuration``'s).

    ``cors``: whether the server answers CORS requests (said only when given)."""
    security: dict[str, Any] = {}
    uris = [{"url": name, "valueUri": configuration[key]} for name, key in _OAUTH_URIS.items() if key in configuration]
    if uris:
        security["extension"] = [{"url": OAUTH_URIS, "extension": uris}]
    if cors is not None:
        security["cors"] = cors
    security["service"] = [
        {
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see https://hl7.org/fhir/smart-app-launch/)",
        }
    ]
    security["description"] = (
        "Every request carries a SMART on FHIR bearer access token issued by the authorization server named in "
        "[base]/.well-known/smart-configuration, for this server (aud). Scopes: patient/, user/ or system/ "
        "ImagingStudy read (r) and search (s), SMART v1 or v2; a patient/ token sees its patient's studies only, "
        "a system/ token only those of its client's policy."
    )
    return security


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str] | None:
    """A list of strings from the metadata, or None if it gives none (or not as a list of strings)."""
    if not isinstance(value, list):
        return None
    strings = [item for item in value if isinstance(item, str)]
    return strings or None
