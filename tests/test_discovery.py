"""Discovery (bridge.auth.discovery): the smart-configuration document and the CapabilityStatement's
rest.security, built from the settings and the issuer's metadata; rest.security valid R5."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.auth.discovery import (
    APP_LAUNCH,
    BACKEND_SERVICES,
    OAUTH_URIS,
    SECURITY_SERVICE,
    SMART_IMAGING_ACCESS,
    rest_security,
    smart_configuration,
)
from bridge.auth.issuer import IssuerMetadata
from bridge.auth.remote import JsonClient
from bridge.settings import Settings, load_settings
from tests.support.authserver import AuthServer
from tests.support.fhircheck import validate

ISSUER = "https://auth.example.org/realm"
METADATA = {
    "issuer": ISSUER,
    "jwks_uri": f"{ISSUER}/jwks",
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "revocation_endpoint": f"{ISSUER}/revoke",
    "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
    "response_types_supported": ["code"],
    "code_challenge_methods_supported": ["S256"],
    "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
    "capabilities": ["launch-standalone", "client-public", "permission-v2"],
}


def settings(**values: str) -> Settings:
    environ = {"BRIDGE_AUTH": "smart", "BRIDGE_AUTH_ISSUER": ISSUER, "BRIDGE_PUBLIC_URL": "https://img.example/fhir"}
    environ.update({f"BRIDGE_{name.upper()}": value for name, value in values.items()})
    return load_settings(environ)


def test_the_document_names_the_issuer_and_its_endpoints():
    document = smart_configuration(settings(), METADATA)
    assert document["issuer"] == ISSUER
    assert document["jwks_uri"] == f"{ISSUER}/jwks"
    assert document["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert document["token_endpoint"] == f"{ISSUER}/token"
    assert document["revocation_endpoint"] == f"{ISSUER}/revoke"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["grant_types_supported"] == ["authorization_code", "client_credentials", "refresh_token"]
    assert document["response_types_supported"] == ["code"]
    assert "introspection_endpoint" not in document


def test_capabilities_add_imaging_access_and_the_modes_served():
    capabilities = smart_configuration(settings(), METADATA)["capabilities"]
    assert capabilities[:3] == ["launch-standalone", "client-public", "permission-v2"]  # the server's, first
    assert capabilities.count("permission-v2") == 1
    assert SMART_IMAGING_ACCESS in capabilities
    assert APP_LAUNCH in capabilities
    assert BACKEND_SERVICES not in capabilities  # no client policy: system/ tokens see nothing


def test_backend_services_is_advertised_with_a_client_policy(tmp_path: Any):
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    document = smart_configuration(settings(auth_client_policy=str(policy)), METADATA)
    assert BACKEND_SERVICES in document["capabilities"]
    assert "system/ImagingStudy.rs" in document["scopes_supported"]
    without_grant = dict(METADATA, grant_types_supported=["authorization_code"])
    assert (
        BACKEND_SERVICES
        not in smart_configuration(settings(auth_client_policy=str(policy)), without_grant)["capabilities"]
    )


def test_scopes_supported_are_those_honoured():
    scopes = smart_configuration(settings(), METADATA)["scopes_supported"]
    for scope in ("patient/ImagingStudy.rs", "patient/ImagingStudy.read", "user/ImagingStudy.rs", "launch/patient"):
        assert scope in scopes
    assert not any(scope.startswith("system/") for scope in scopes)


def test_configured_urls_win_over_the_metadata():
    configured = settings(
        auth_jwks_url="https://keys.example/jwks",
        auth_introspection_url="https://auth.example/introspect",
        auth_client_id="bridge",
        auth_client_secret="s",
    )
    document = smart_configuration(configured, dict(METADATA, introspection_endpoint="https://elsewhere.example/x"))
    assert document["jwks_uri"] == "https://keys.example/jwks"
    assert document["introspection_endpoint"] == "https://auth.example/introspect"


def test_without_metadata_the_document_says_what_the_settings_know():
    document = smart_configuration(settings(), None)
    assert document["issuer"] == ISSUER
    assert "token_endpoint" not in document
    assert document["grant_types_supported"] == ["authorization_code"]
    assert APP_LAUNCH in document["capabilities"]


@pytest.mark.parametrize("bad", ["javascript:alert(1)", "/relative", 42, None, ["x"]])
def test_metadata_values_that_are_not_urls_are_left_out(bad: Any):
    document = smart_configuration(settings(), dict(METADATA, token_endpoint=bad, capabilities=[1, "x"]))
    assert "token_endpoint" not in document
    assert document["capabilities"][0] == "x"


def capability_statement(security: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "implementation": {"description": "bridge"},
        "fhirVersion": "5.0.0",
        "format": ["json"],
        "rest": [{"mode": "server", "security": security}],
    }


def test_rest_security_has_the_smart_service_and_the_oauth_uris():
    security = rest_security(smart_configuration(settings(), METADATA), cors=True)
    validate(capability_statement(security))
    assert security["service"][0]["coding"][0] == {
        "system": SECURITY_SERVICE,
        "code": "SMART-on-FHIR",
        "display": "SMART-on-FHIR",
    }
    assert security["cors"] is True
    (oauth,) = security["extension"]
    assert oauth["url"] == OAUTH_URIS
    assert {uri["url"]: uri["valueUri"] for uri in oauth["extension"]} == {
        "authorize": f"{ISSUER}/authorize",
        "token": f"{ISSUER}/token",
        "revoke": f"{ISSUER}/revoke",
    }


def test_rest_security_without_endpoints_has_no_empty_extension():
    security = rest_security(smart_configuration(settings(), None))
    validate(capability_statement(security))
    assert "extension" not in security
    assert "cors" not in security


async def test_from_a_live_issuer(auth_server: AuthServer):
    http = JsonClient()
    metadata = IssuerMetadata(auth_server.issuer, http)
    try:
        document = smart_configuration(load_settings(auth_server.environ()), await metadata.get())
    finally:
        await metadata.close()
        await http.close()
    assert document["token_endpoint"] == auth_server.token_url
    assert document["introspection_endpoint"] == auth_server.introspection_url
    assert document["capabilities"][0] == "launch-standalone"  # from the issuer's smart-configuration
    validate(capability_statement(rest_security(document)))
