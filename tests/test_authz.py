"""Authorization through the HTTP layer (BRIDGE_AUTH=smart) with an in-memory PACS and a stand-in verifier:
scopes decide what a token may do, and a patient token sees its patient's studies alone, on every path.

Token verification itself (signatures, keys, expiry, introspection) is tested in tests/test_tokens.py; here a
token is a name for the claims it carries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.errors import ConfigError, Forbidden
from bridge.mapping.endpoint import REQUIRES_ACCESS_TOKEN
from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.authserver import AuthServer
from tests.support.fhircheck import validate
from tests.support.standin_tokens import Verifier, claims

CT = "1.2.840.10008.5.1.4.1.1.2"
#: Patients whose PatientIDs differ by case and by a wildcard character: a PACS's matching would confuse them.
PATIENTS = {"P1": "2.25.1", "p1": "2.25.2", "P2": "2.25.3", "P*": "2.25.4"}
SECOND_OF_P1 = "2.25.11"


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def pacs() -> MemoryQidoSource:
    source = MemoryQidoSource()
    for patient, study in [*PATIENTS.items(), ("P1", SECOND_OF_P1)]:
        series = f"{study}.1"
        source.studies.append({"0020000D": el("UI", study), "00100020": el("LO", patient),
                               "00080020": el("DA", "20240301"), "00080061": el("CS", "CT")})  # fmt: skip
        source.series[study] = [
            {"0020000E": el("UI", series), "00080060": el("CS", "CT"), "00100020": el("LO", patient)}
        ]
        source.instances[(study, series)] = [{"00080018": el("UI", f"{series}.1"), "00080016": el("UI", CT)}]
    return source


@pytest.fixture
def verifier() -> Verifier:
    return Verifier()


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


async def client_for(source: MemoryQidoSource, verifier: Verifier, **environ: str) -> TestClient:
    settings = load_settings({
        "BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
        "BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks", **environ,
    })  # fmt: skip
    return await start_client(settings, source, verifier)


@pytest.fixture
async def client(source: MemoryQidoSource, verifier: Verifier) -> AsyncIterator[TestClient]:
    client = await client_for(source, verifier)
    yield client
    await client.close()


async def get(client: TestClient, path: str, token: str | None, status: int = 200) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(path, headers=headers)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    validate(body)
    return body


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


# ---- tokens and scopes ----


async def test_no_token_is_a_401_that_asks_for_one(client: TestClient) -> None:
    response = await client.get("/fhir/ImagingStudy/2.25.1")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="imaging"'  # RFC 6750 3.1: no error code
    assert (await response.json())["issue"][0]["code"] == "login"


@pytest.mark.parametrize(
    ("authorization", "error"),
    [("Bearer forged", "invalid_token"), ("Basic dXNlcjpwYXNz", "invalid_request"), ("Bearer ", "invalid_request")],
)
async def test_a_bad_token_is_a_401_saying_so(client: TestClient, authorization: str, error: str) -> None:
    response = await client.get("/fhir/ImagingStudy?patient=P1", headers={"Authorization": authorization})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="imaging", error="{error}"'
    body = await response.json()
    validate(body)
    assert "forged" not in str(body)


@pytest.mark.parametrize(
    ("scope", "read", "search"),
    [
        ("patient/ImagingStudy.read", 200, 200),  # v1
        ("patient/*.read", 200, 200),
        ("patient/ImagingStudy.rs", 200, 200),  # v2
        ("patient/ImagingStudy.r", 200, 403),
        ("patient/ImagingStudy.s", 403, 200),
        ("patient/*.cruds", 200, 200),
        ("patient/Observation.rs", 403, 403),
        ("patient/ImagingStudy.write", 403, 403),
        ("patient/ImagingStudy.rs?category=x", 403, 403),  # a granular scope the bridge cannot honour exactly
        ("patient/ImagingStudy.sr", 403, 403),  # v2 letters out of order are no scope
        ("openid fhirUser launch/patient", 403, 403),
    ],
)
async def test_scopes_decide_read_and_search(
    client: TestClient, verifier: Verifier, scope: str, read: int, search: int
) -> None:
    verifier.extra["t"] = claims(scope, patient="P1")
    refused = await get(client, "/fhir/ImagingStudy/2.25.1", "t", read)
    if read == 403:
        assert refused["issue"][0]["code"] == "forbidden"
    await get(client, "/fhir/ImagingStudy?_count=5", "t", search)
    response = await client.get("/fhir/ImagingStudy/2.25.1", headers={"Authorization": "Bearer t"})
    if response.status == 403:
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_a_patient_scope_without_a_patient_context_is_refused(client: TestClient, verifier: Verifier) -> None:
    verifier.extra["t"] = claims("patient/ImagingStudy.rs")
    await get(client, "/fhir/ImagingStudy?_count=5", "t", 403)


# ---- the patient compartment ----


async def test_a_patient_token_reads_its_studies_only(client: TestClient) -> None:
    assert (await get(client, "/fhir/ImagingStudy/2.25.1", "patient:P1"))["subject"]["identifier"]["value"] == "P1"
    for other in ("2.25.2", "2.25.3", "2.25.4"):  # p1, P2, P*
        refused = await get(client, f"/fhir/ImagingStudy/{other}", "patient:P1", 404)
        missing = await get(client, "/fhir/ImagingStudy/2.25.99", "patient:P1", 404)
        # The same answer as for a study that does not exist: nothing says the study is there.
        assert refused["issue"][0]["diagnostics"].replace(other, "X") == missing["issue"][0]["diagnostics"].replace(
            "2.25.99", "X"
        )


async def test_a_study_cached_for_one_token_is_never_served_to_another_patients(
    client: TestClient, verifier: Verifier
) -> None:
    verifier.extra["clinician"] = claims("user/ImagingStudy.rs")
    first = await client.get("/fhir/ImagingStudy/2.25.3", headers={"Authorization": "Bearer clinician"})
    assert first.status == 200
    again = await client.get("/fhir/ImagingStudy/2.25.3", headers={"Authorization": "Bearer patient:P1"})
    assert again.status == 404
    conditional = await client.get(  # nor its version confirmed by a conditional read
        "/fhir/ImagingStudy/2.25.3",
        headers={"Authorization": "Bearer patient:P1", "If-None-Match": first.headers["ETag"]},
    )
    assert conditional.status == 404
    assert (await client.get("/fhir/ImagingStudy/2.25.3", headers={"Authorization": "Bearer patient:P2"})).status == 200


async def test_a_search_without_a_patient_is_confined_to_the_tokens(client: TestClient) -> None:
    bundle = await get(client, "/fhir/ImagingStudy?_count=50", "patient:P1")
    assert ids(bundle) == {"2.25.1", SECOND_OF_P1}
    assert "patient" not in bundle["link"][0]["url"]  # the confinement is the token's, not a parameter
    assert ids(await get(client, "/fhir/ImagingStudy?modality=CT&_count=50", "patient:P*")) == {"2.25.4"}
    assert ids(await get(client, f"/fhir/ImagingStudy?_id=2.25.3,{SECOND_OF_P1}", "patient:P1")) == {SECOND_OF_P1}


@pytest.mark.parametrize(
    "query",
    ["patient=p1", "patient=Patient/P2", "subject=P2", "patient:identifier=p1", "patient.identifier=P2",
     "patient=P1,P2", "patient=P1&patient=P2"],
)  # fmt: skip
async def test_a_search_naming_another_patient_is_a_403(client: TestClient, query: str) -> None:
    refused = await get(client, f"/fhir/ImagingStudy?{query}", "patient:P1", 403)
    assert refused["issue"][0]["code"] == "forbidden"


async def test_a_search_naming_its_own_patient_is_answered(client: TestClient) -> None:
    for query in (
        "patient=P1",
        "patient=Patient/P1",
        "patient:identifier=P1",
        "subject=P1&_include=ImagingStudy:endpoint",
    ):
        assert ids(await get(client, f"/fhir/ImagingStudy?{query}", "patient:P1")) == {"2.25.1", SECOND_OF_P1}


async def test_the_patient_compartment_search(client: TestClient, verifier: Verifier) -> None:
    assert ids(await get(client, "/fhir/Patient/P1/ImagingStudy", "patient:P1")) == {"2.25.1", SECOND_OF_P1}
    assert ids(await get(client, "/fhir/Patient/P1/ImagingStudy?_id=2.25.1", "patient:P1")) == {"2.25.1"}
    await get(client, "/fhir/Patient/P2/ImagingStudy", "patient:P1", 403)
    verifier.extra["clinician"] = claims("user/ImagingStudy.rs")
    assert ids(await get(client, "/fhir/Patient/p1/ImagingStudy", "clinician")) == {"2.25.2"}


async def test_a_post_search_is_confined_too(client: TestClient) -> None:
    response = await client.post(
        "/fhir/ImagingStudy/_search", data={"modality": "CT"}, headers={"Authorization": "Bearer patient:p1"}
    )
    assert ids(await response.json()) == {"2.25.2"}
    refused = await client.post(
        "/fhir/ImagingStudy/_search", data={"patient": "P1"}, headers={"Authorization": "Bearer patient:p1"}
    )
    assert refused.status == 403


async def test_patient_contexts_map_through_the_patient_reference_template(
    source: MemoryQidoSource, verifier: Verifier
) -> None:
    client = await client_for(source, verifier, BRIDGE_PATIENT_REFERENCE="mrn-{PatientID}")
    try:
        assert ids(await get(client, "/fhir/ImagingStudy", "patient:mrn-P2")) == {"2.25.3"}
        assert ids(await get(client, "/fhir/ImagingStudy?patient=mrn-P2", "patient:mrn-P2")) == {"2.25.3"}
        await get(client, "/fhir/ImagingStudy?patient=P2", "patient:mrn-P2", 403)  # the id P2 stands for no one
        source.calls.clear()
        # An id outside the template stands for no PatientID: nothing to see, and nothing asked of the PACS.
        assert ids(await get(client, "/fhir/ImagingStudy", "patient:P2")) == set()
        assert not [call for call in source.calls if call.startswith("studies")]
        await get(client, "/fhir/ImagingStudy/2.25.3", "patient:P2", 404)
    finally:
        await client.close()


# ---- user and system tokens ----


async def test_a_user_token_sees_every_patient(client: TestClient, verifier: Verifier) -> None:
    verifier.extra["clinician"] = claims("openid fhirUser user/*.read")
    assert ids(await get(client, "/fhir/ImagingStudy?_count=50", "clinician")) == {*PATIENTS.values(), SECOND_OF_P1}


async def test_system_tokens_see_what_their_policy_grants_and_nothing_without_one(
    source: MemoryQidoSource, verifier: Verifier, tmp_path: Any
) -> None:
    policy = tmp_path / "clients.json"
    policy.write_text('{"archive": "*", "registry": ["P2", "p1"]}')
    client = await client_for(source, verifier, BRIDGE_AUTH_CLIENT_POLICY=str(policy))
    try:
        verifier.extra |= {
            name: claims("system/ImagingStudy.rs", client=name) for name in ("archive", "registry", "other")
        }
        assert ids(await get(client, "/fhir/ImagingStudy?_count=50", "archive")) == {*PATIENTS.values(), SECOND_OF_P1}
        assert ids(await get(client, "/fhir/ImagingStudy?_count=50", "registry")) == {"2.25.2", "2.25.3"}
        await get(client, "/fhir/ImagingStudy/2.25.1", "registry", 404)
        await get(client, "/fhir/ImagingStudy?_count=50", "other", 403)
    finally:
        await client.close()


def test_a_malformed_client_policy_stops_the_start(tmp_path: Any) -> None:
    from bridge.auth.compartment import read_policy

    policy = tmp_path / "clients.json"
    policy.write_text('{"archive": ["P1", 2]}')
    with pytest.raises(ConfigError, match="client 'archive' needs a list of Patient ids"):
        read_policy(policy)


# ---- what is not patient data ----


async def test_the_endpoint_needs_a_token_that_may_read_studies_and_says_it_takes_one(
    client: TestClient, verifier: Verifier
) -> None:
    study = await get(client, "/fhir/ImagingStudy/2.25.1", "patient:P1")
    endpoint_path = "/fhir/" + study["endpoint"][0]["reference"]
    endpoint = await get(client, endpoint_path, "patient:P1")
    assert endpoint["extension"] == [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}]
    await get(client, endpoint_path, None, 401)
    verifier.extra["search-only"] = claims("patient/ImagingStudy.s", patient="P1")
    await get(client, endpoint_path, "search-only", 403)


async def test_metadata_and_probes_need_no_token(client: TestClient) -> None:
    assert (await client.get("/fhir/metadata")).status == 200
    assert (await client.get("/healthz")).status == 200


def test_authorization_must_be_chosen_off_loopback() -> None:
    with pytest.raises(ConfigError, match=r"BRIDGE_AUTH must be set when the bridge listens on 0\.0\.0\.0"):
        load_settings({"BRIDGE_HOST": "0.0.0.0"})
    assert load_settings({"BRIDGE_HOST": "127.0.0.2"}).auth_mode == "none"
    assert load_settings({"BRIDGE_HOST": "0.0.0.0", "BRIDGE_AUTH": "none"}).auth_mode == "none"
    with pytest.raises(ConfigError, match="needs BRIDGE_AUTH_ISSUER"):
        load_settings({"BRIDGE_AUTH": "smart", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir"})


#: A PACS over HTTP under BRIDGE_AUTH=smart: the Endpoint is the gateway, whose public origin must be known.
GATEWAYED = {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir"}


# ---- end to end: real tokens from a real (test) authorization server ----


async def test_real_tokens_from_the_authorization_server(source: MemoryQidoSource, auth_server: AuthServer) -> None:
    environ = auth_server.environ(auth_introspection_url=auth_server.introspection_url)
    settings = load_settings({**GATEWAYED, **environ})
    client = await start_client(settings, source)
    try:
        token = auth_server.mint(scope="launch/patient patient/ImagingStudy.rs", patient="P2")
        study = await get(client, "/fhir/ImagingStudy/2.25.3", token)
        assert study["subject"]["identifier"]["value"] == "P2"
        await get(client, "/fhir/ImagingStudy/2.25.1", token, 404)
        assert ids(await get(client, "/fhir/ImagingStudy", token)) == {"2.25.3"}
        expired = auth_server.mint(scope="patient/ImagingStudy.rs", patient="P2", lifetime=-60)
        await get(client, "/fhir/ImagingStudy/2.25.3", expired, 401)
        elsewhere = auth_server.mint(scope="patient/ImagingStudy.rs", patient="P2", aud="https://other.example/fhir")
        await get(client, "/fhir/ImagingStudy/2.25.3", elsewhere, 401)
        opaque = auth_server.issue_opaque(scope="user/ImagingStudy.rs")
        assert len(ids(await get(client, "/fhir/ImagingStudy?_count=50", opaque))) == 5
    finally:
        await client.close()


async def test_discovery_names_the_authorization_server(source: MemoryQidoSource, auth_server: AuthServer) -> None:
    settings = load_settings({**GATEWAYED, **auth_server.environ()})
    client = await start_client(settings, source)
    try:
        response = await client.get("/fhir/.well-known/smart-configuration")  # no token needed
        assert response.status == 200
        configuration = await response.json()
        assert configuration["token_endpoint"] == auth_server.token_url
        assert "smart-imaging-access" in configuration["capabilities"]
        statement = await (await client.get("/fhir/metadata")).json()
        validate(statement)
        security = statement["rest"][0]["security"]
        assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
        uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
        assert uris["token"] == auth_server.token_url
    finally:
        await client.close()


async def test_without_authorization_there_is_no_smart_configuration(source: MemoryQidoSource) -> None:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web"}), source)
    try:
        assert (await client.get("/fhir/.well-known/smart-configuration")).status == 404
        assert "security" not in (await (await client.get("/fhir/metadata")).json())["rest"][0]
    finally:
        await client.close()


async def test_a_patient_context_maps_through_the_clinical_fhir_server(
    source: MemoryQidoSource, auth_server: AuthServer
) -> None:
    mrn = "https://hospital.example.org/mrn"
    auth_server.add_patient("ehr-77", [("http://ssn.example", "P1"), (mrn, "P2")])  # only the PACS's system counts
    environ = auth_server.environ(clinical_fhir_url=auth_server.clinical_url, patient_id_system=mrn)
    client = await start_client(load_settings({**GATEWAYED, **environ}), source)
    try:
        token = auth_server.mint(scope="patient/ImagingStudy.rs", patient="ehr-77")
        assert ids(await get(client, "/fhir/ImagingStudy", token)) == {"2.25.3"}
        await get(client, "/fhir/ImagingStudy/2.25.3", token)
        await get(client, "/fhir/ImagingStudy/2.25.1", token, 404)
        await get(client, f"/fhir/ImagingStudy?patient:identifier={mrn}|P1", token, 403)
    finally:
        await client.close()


async def test_a_grant_is_reused_briefly_and_never_past_its_tokens_expiry() -> None:
    from bridge.auth.compartment import Compartments
    from bridge.auth.grant import Claims
    from bridge.auth.scopes import Interaction
    from bridge.search.values import PatientRule
    from bridge.web.authz import GRANT_TTL, Authorizer

    now = [1000.0]
    verifier = Verifier()
    verifier.extra["short"] = Claims("app", "u", "patient/ImagingStudy.rs", "P1", 1010.0)
    authorizer = Authorizer(verifier, Compartments(PatientRule()), {}, clock=lambda: now[0])

    async def grant(token: str) -> object:
        return await authorizer.grant(f"Bearer {token}", "ImagingStudy", Interaction.READ)

    first = await grant("patient:P1")
    assert await grant("patient:P1") is first
    assert verifier.verified == ["patient:P1"]
    now[0] += GRANT_TTL
    assert await grant("patient:P1") is not first  # decided again
    await grant("short")
    now[0] = 1010.0  # the token's exp: its grant is not reused past it
    await grant("short")
    assert verifier.verified.count("short") == 2
    verifier.extra["no-scope"] = Claims("app", "u", "openid", "P1", None)
    for _ in range(2):
        with pytest.raises(Forbidden):
            await grant("no-scope")
    assert verifier.verified.count("no-scope") == 2  # a refusal is decided every time


async def test_repeated_requests_with_one_token_verify_it_once(client: TestClient, verifier: Verifier) -> None:
    for _ in range(3):
        await get(client, "/fhir/ImagingStudy/2.25.1", "patient:P1")
    await get(client, "/fhir/ImagingStudy/2.25.3", "patient:P1", 404)  # and the grant still confines
    assert verifier.verified == ["patient:P1"]


async def test_nothing_of_a_study_another_patients_rows_brought_in_reaches_a_confined_answer(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # "A B" is asked of the PACS as A*B, which matches AxB too: AxB's study, held for two issuers as one (its study
    # row says I1, its series I2), would be left out with a warning naming it, in A B's Bundle.
    for patient, study, issuer in (("A B", "2.25.40", "I1"), ("AxB", "2.25.50", "I1")):
        source.studies.append({"0020000D": el("UI", study), "00100020": el("LO", patient), "00100021": el("LO", issuer),
                               "00080061": el("CS", "CT")})  # fmt: skip
        series_issuer = "I2" if study == "2.25.50" else issuer
        source.series[study] = [{"0020000E": el("UI", f"{study}.1"), "00080060": el("CS", "CT"),
                                 "00100020": el("LO", patient), "00100021": el("LO", series_issuer)}]  # fmt: skip
        source.instances[(study, f"{study}.1")] = [{"00080018": el("UI", f"{study}.1.1"), "00080016": el("UI", CT)}]
    for query in ("", "?_summary=count", "?modality=CT"):
        bundle = await get(client, f"/fhir/ImagingStudy{query}", "patient:A B")
        assert "2.25.50" not in str(bundle)
    assert ids(await get(client, "/fhir/ImagingStudy", "patient:A B")) == {"2.25.40"}


async def test_a_header_that_is_not_ascii_is_a_401_not_an_error(client: TestClient) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /fhir/ImagingStudy/2.25.1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \xff\xfe\r\n"
                 b"Connection: close\r\n\r\n")  # fmt: skip
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]


async def test_the_compartment_is_one_patients(client: TestClient, verifier: Verifier) -> None:
    verifier.extra["clinician"] = claims("user/ImagingStudy.rs")
    refused = await get(client, "/fhir/Patient/P1,P2/ImagingStudy", "clinician", 400)
    assert "is not a Patient id" in refused["issue"][0]["diagnostics"]
