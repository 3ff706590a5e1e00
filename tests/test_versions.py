"""FHIR R4 and R5 from one service: the bases /fhir/r4, /fhir/r5 and /fhir (negotiated), their routes, version
negotiation, $versions, the R4 CapabilityStatement, R4's search parameter names, and authorization, audit and
links on every base. The resources' R4 shape is the core's (tests of bridge.render)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as R4BCapabilityStatement
from fhir.resources.R4B.parameters import Parameters as R4BParameters
from fhirclient.models.capabilitystatement import CapabilityStatement as FhirclientCapabilityStatement
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from fhirpy import AsyncFHIRClient

from bridge.bases import BASES, NEGOTIATED, R4, R5, Base, base_of
from bridge.fhirversion import FhirVersion
from bridge.qido.memory import MemoryQidoSource
from bridge.search.parameters import SEARCH_PARAMETERS
from bridge.settings import load_settings
from bridge.web.app import BASE_ROUTES, FHIR_ROUTES, FhirRoute
from bridge.web.audit import AUDIT_LOG
from tests.conftest import orthanc_settings, start_client
from tests.support.authserver import AuthServer
from tests.support.dicomgen import StudySpec
from tests.support.fhircheck import validate, validate_r4
from tests.support.orthanc import OrthancServer
from tests.support.standin_tokens import Verifier

STUDY, OTHER = "2.25.1", "2.25.2"
PUBLIC = "https://fhir.example.org/fhir"
CT = "1.2.840.10008.5.1.4.1.1.2"
FHIR_JSON = "application/fhir+json"


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def pacs() -> MemoryQidoSource:
    source = MemoryQidoSource()
    for patient, study in (("P1", STUDY), ("P2", OTHER)):
        series = f"{study}.1"
        source.studies.append({"0020000D": el("UI", study), "00100020": el("LO", patient),
                               "00080020": el("DA", "20240301"), "00080061": el("CS", "CT"),
                               "00080050": el("SH", f"ACC{patient}")})  # fmt: skip
        if patient == "P1":  # a coded reason (Reason for Requested Procedure Code Sequence)
            source.studies[-1]["0040100A"] = {"vr": "SQ", "Value": [{
                "00080100": el("SH", "29857009"), "00080102": el("SH", "SCT"), "00080104": el("LO", "Chest pain"),
            }]}  # fmt: skip
        source.series[study] = [{"0020000E": el("UI", series), "00080060": el("CS", "CT"),
                                 "00180015": el("CS", "CHEST"), "00100020": el("LO", patient)}]  # fmt: skip
        source.instances[(study, series)] = [{"00080018": el("UI", f"{series}.1"), "00080016": el("UI", CT)}]
    return source


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": PUBLIC})
    client = await start_client(settings, source)
    yield client
    await client.close()


def content_type(version: FhirVersion, media: str = "application/fhir+json") -> str:
    return f"{media}; fhirVersion={version.value}; charset=utf-8"


def served_version(base: Base) -> FhirVersion:
    return base.version or FhirVersion.R5


def concrete(route: FhirRoute) -> str:
    return route.path.replace("{id}", "P1" if route.path.startswith("/Patient") else STUDY)


async def endpoint_path(client: TestClient, base: Base) -> str:
    study = await (await client.get(f"{base.path}/ImagingStudy/{STUDY}")).json()
    reference: str = study["endpoint"][0]["reference"]
    return f"{base.path}/{reference}"


# ---- every route on every base ----


@pytest.mark.parametrize("base", BASES, ids=lambda base: base.path)
@pytest.mark.parametrize("route", FHIR_ROUTES, ids=lambda route: f"{route.method} {route.path}")
async def test_every_fhir_route_is_served_on_every_base_in_its_version(
    client: TestClient, base: Base, route: FhirRoute
) -> None:
    if route.resource_type == "Endpoint":
        path = await endpoint_path(client, base)
    else:
        path = base.path + concrete(route)
    if route.method == "POST":
        response = await client.post(path, data={"_id": STUDY})
    else:
        response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == content_type(served_version(base))
    assert response.headers["Vary"] == "Accept"
    body = await response.json()
    assert body["resourceType"] in ("ImagingStudy", "Bundle", "Endpoint")
    if base is R4:  # R4 as R4's models read it, included Endpoint and all
        validate_r4(body)
        FHIRElementFactory.instantiate(body["resourceType"], body)  # fhirclient: strict, unknown elements raise
    else:
        validate(body)
    if body["resourceType"] == "Endpoint" and base is R4:
        assert body["connectionType"]["code"] == "dicom-wado-rs"  # one Coding, not R5's list


@pytest.mark.parametrize("base", BASES, ids=lambda base: base.path)
@pytest.mark.parametrize("path", [path for path, _ in BASE_ROUTES if "smart" not in path])
async def test_metadata_and_versions_are_served_on_every_base(client: TestClient, base: Base, path: str) -> None:
    response = await client.get(base.path + path)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == content_type(served_version(base))


async def test_links_name_the_base_the_client_used(client: TestClient) -> None:
    for base in BASES:
        url = PUBLIC + base.path.removeprefix("/fhir")
        bundle = await (await client.get(f"{base.path}/ImagingStudy?_count=1&_include=ImagingStudy:endpoint")).json()
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(f"{url}/ImagingStudy?")
        assert links["next"].startswith(f"{url}/ImagingStudy?")
        assert {e["fullUrl"].rpartition("/")[0] for e in bundle["entry"]} == {f"{url}/ImagingStudy", f"{url}/Endpoint"}
        statement = await (await client.get(f"{base.path}/metadata")).json()
        assert statement["implementation"]["url"] == url


async def test_the_pages_of_a_search_keep_the_format_that_chose_their_version(client: TestClient) -> None:
    # On /fhir the version may come from _format: a next link without it would turn page 2 into R5, where R4's
    # bodysite is an unknown parameter.
    first = await client.get(
        "/fhir/ImagingStudy?_format=application/fhir%2Bjson;fhirVersion%3D4.0&bodysite=816094009&_count=1"
    )
    links = {link["relation"]: link["url"] for link in (await first.json())["link"]}
    following = await client.get(links["next"].removeprefix(PUBLIC.removesuffix("/fhir")))
    assert following.status == 200, await following.text()
    assert following.headers["Content-Type"] == R4_TYPE
    validate_r4(await following.json())


def test_base_of_a_path() -> None:
    assert [base_of(p) for p in ("/fhir/r4", "/fhir/r4/metadata", "/fhir/r5/ImagingStudy", "/fhir/ImagingStudy",
                                 "/fhir/r4x/metadata", "/fhir", "/fhir/r44")] == [
        R4, R4, R5, NEGOTIATED, NEGOTIATED, NEGOTIATED, NEGOTIATED
    ]  # fmt: skip


# ---- negotiation ----

R4_TYPE, R5_TYPE = content_type(FhirVersion.R4), content_type(FhirVersion.R5)


@pytest.mark.parametrize(
    ("base", "query", "accept", "expected"),
    [
        # /fhir: the fhirVersion parameter picks; none named is R5.
        (NEGOTIATED, "", None, R5_TYPE),
        (NEGOTIATED, "", "application/fhir+json", R5_TYPE),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=4.0", R4_TYPE),
        (NEGOTIATED, "", "application/fhir+json;fhirVersion=4.0.1", R4_TYPE),
        (NEGOTIATED, "", 'application/fhir+json; fhirversion="4.0"', R4_TYPE),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=5.0", R5_TYPE),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=5.0.0", R5_TYPE),
        (NEGOTIATED, "", "application/json", content_type(FhirVersion.R5, "application/json")),
        (NEGOTIATED, "", "application/json; fhirVersion=4.0", content_type(FhirVersion.R4, "application/json")),
        (NEGOTIATED, "", "*/*", R5_TYPE),
        (NEGOTIATED, "", "*/*; fhirVersion=4.0", R4_TYPE),
        # A version not served in one range, another served: the served one.
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0", R4_TYPE),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=4.0; q=0.5, application/fhir+json; fhirVersion=5.0",
         R5_TYPE),  # the version preferred by q
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=5.0; q=0.2, application/fhir+json; fhirVersion=4.0; q=0.9",
         R4_TYPE),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=3.0", 406),
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=4.3", 406),  # R4B is not R4
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=4.0;q=0", 406),
        # A malformed q is ignored, not taken for q=0 ("nan" parses as a float that no comparison admits).
        (NEGOTIATED, "", "application/fhir+json; fhirVersion=4.0; q=nan", R4_TYPE),
        (NEGOTIATED, "", "application/fhir+json; q=high", R5_TYPE),
        (NEGOTIATED, "", "application/fhir+xml", 406),
        (NEGOTIATED, "?_format=json", None, R5_TYPE),
        (NEGOTIATED, "?_format=application/fhir%2Bjson;fhirVersion%3D4.0", None, R4_TYPE),
        (NEGOTIATED, "?_format=application/fhir+json;fhirVersion=4.0", "application/fhir+json; fhirVersion=5.0",
         R4_TYPE),  # _format wins over Accept
        (NEGOTIATED, "?_format=application/fhir%2Bjson;fhirVersion%3D2.0", None, 406),
        # _format naming no version picks the format; the version Accept names still holds (clients such as
        # HAPI's add _format=json to every request).
        (NEGOTIATED, "?_format=json", "application/fhir+json; fhirVersion=4.0", R4_TYPE),
        (NEGOTIATED, "?_format=json", "application/fhir+json; fhirVersion=3.0", R5_TYPE),
        (NEGOTIATED, "?_format=json", "application/fhir+xml", R5_TYPE),
        (NEGOTIATED, "?_format=application/fhir+json; fhirVersion=4.0", None, R4_TYPE),  # "+" and " " both spaces
        (NEGOTIATED, "?_format=json;%20fhirVersion%3D4.0", None, R4_TYPE),
        # The versioned bases: their version, whatever else; another named is a 406.
        (R4, "", None, R4_TYPE),
        (R4, "", "application/fhir+json", R4_TYPE),
        (R4, "", "application/json", content_type(FhirVersion.R4, "application/json")),
        (R4, "", "*/*", R4_TYPE),
        (R4, "", "application/fhir+json; fhirVersion=4.0", R4_TYPE),
        (R4, "", "application/fhir+json; fhirVersion=4.0.1", R4_TYPE),
        (R4, "", "application/fhir+json; fhirVersion=5.0", 406),
        (R4, "?_format=application/fhir%2Bjson;fhirVersion%3D5.0", None, 406),
        (R5, "", "application/fhir+json; fhirVersion=4.0", 406),
        (R5, "", "application/fhir+json; fhirVersion=5.0", R5_TYPE),
        (R5, "", None, R5_TYPE),
    ],
)  # fmt: skip
async def test_negotiation(
    client: TestClient, source: MemoryQidoSource, base: Base, query: str, accept: str | None, expected: str | int
) -> None:
    headers = {"Accept": accept} if accept is not None else {"Accept": ""}
    for path in (f"/ImagingStudy/{STUDY}", "/metadata"):
        response = await client.get(f"{base.path}{path}{query}", headers=headers)
        if isinstance(expected, int):
            assert response.status == expected, await response.text()
            body = await response.json()
            assert body["resourceType"] == "OperationOutcome"
            assert body["issue"][0]["code"] == "not-supported"
            # Said in the base's version (the default on /fhir), as FHIR JSON: the one format there is.
            assert response.headers["Content-Type"] == content_type(served_version(base))
        else:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == expected
            assert response.headers["Vary"] == "Accept"


async def test_a_406_says_which_versions_are_served(client: TestClient, source: MemoryQidoSource) -> None:
    calls = len(source.calls)
    refused = await client.get(
        f"/fhir/ImagingStudy/{STUDY}", headers={"Accept": "application/fhir+json; fhirVersion=3.0"}
    )
    assert "fhirVersion=3.0 is not served (served: 4.0, 5.0" in (await refused.json())["issue"][0]["diagnostics"]
    elsewhere = await client.get(
        f"/fhir/r4/ImagingStudy/{STUDY}", headers={"Accept": "application/fhir+json; fhirVersion=5.0"}
    )
    assert "serves FHIR 4.0 alone" in (await elsewhere.json())["issue"][0]["diagnostics"]
    assert len(source.calls) == calls  # refused before the PACS was asked


async def test_errors_are_said_in_the_bases_version(client: TestClient) -> None:
    for base, version in ((R4, FhirVersion.R4), (R5, FhirVersion.R5), (NEGOTIATED, FhirVersion.R5)):
        for response in (
            await client.get(f"{base.path}/ImagingStudy/2.25.404"),
            await client.get(f"{base.path}/Observation/1"),  # no such route
            await client.get(f"{base.path}/ImagingStudy?foo=bar"),
        ):
            assert response.status in (400, 404)
            assert response.headers["Content-Type"] == content_type(version)
            body = await response.json()
            if version is FhirVersion.R4:
                validate_r4(body)
            else:
                validate(body)
    asked = await client.get(
        "/fhir/ImagingStudy/2.25.404", headers={"Accept": "application/fhir+json; fhirVersion=4.0"}
    )
    assert asked.headers["Content-Type"] == R4_TYPE


async def test_one_cache_serves_every_base_with_an_etag_per_version(client: TestClient) -> None:
    first = await client.get(f"/fhir/r5/ImagingStudy/{STUDY}")
    etags = {}
    for base in BASES:
        again = await client.get(f"{base.path}/ImagingStudy/{STUDY}")
        assert again.headers["X-Cache"] == "HIT"  # one cache for every base: the PACS was asked once
        etags[base] = etag = again.headers["ETag"]
        unchanged = await client.get(f"{base.path}/ImagingStudy/{STUDY}", headers={"If-None-Match": etag})
        assert unchanged.status == 304
        assert unchanged.headers["ETag"] == etag
    assert etags[R5] == etags[NEGOTIATED] == first.headers["ETag"] != etags[R4]
    # The R5 bytes' validator does not confirm the R4 bytes: /fhir serves both at one URL.
    other = await client.get(f"/fhir/r4/ImagingStudy/{STUDY}", headers={"If-None-Match": etags[R5]})
    assert other.status == 200
    asked = await client.get(
        f"/fhir/ImagingStudy/{STUDY}", headers={"If-None-Match": etags[R4], "Accept": f"{FHIR_JSON}; fhirVersion=4.0"}
    )
    assert asked.status == 304


# ---- $versions ----


@pytest.mark.parametrize(
    ("base", "served", "default"),
    [(NEGOTIATED, ["4.0", "5.0"], "5.0"), (R5, ["5.0"], "5.0"), (R4, ["4.0"], "4.0")],
    ids=lambda v: getattr(v, "path", None),
)
async def test_versions_names_the_versions_the_base_serves_and_its_default(
    client: TestClient, base: Base, served: list[str], default: str
) -> None:
    # A version $versions names must be one the base answers in: /fhir/r4 refuses fhirVersion=5.0 with a 406.
    for accept in ("application/fhir+json", "application/json"):
        response = await client.get(f"{base.path}/$versions", headers={"Accept": accept})
        assert response.status == 200
        assert response.content_type == accept
        body = await response.json()
        assert body == {"resourceType": "Parameters", "parameter": [
            *({"name": "version", "valueCode": version} for version in served),
            {"name": "default", "valueCode": default},
        ]}  # fmt: skip
        validate(body)
        R4BParameters.model_validate(body)


# ---- the CapabilityStatements ----


async def test_the_r4_capability_statement_is_valid_r4_with_r4s_search_parameters(client: TestClient) -> None:
    response = await client.get("/fhir/r4/metadata")
    statement = await response.json()
    assert statement["fhirVersion"] == "4.0.1"  # exactly: the SMART JS client's table knows no other R4
    R4BCapabilityStatement.model_validate(statement)
    FhirclientCapabilityStatement(statement, strict=True)  # unknown (R5-only) elements raise
    (resource,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy"]
    params = {p["name"]: p.get("definition") for p in resource["searchParam"]}
    assert params["basedon"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-basedon"
    assert params["bodysite"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-bodysite"
    assert params["dicom-class"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-dicom-class"
    assert params["reason"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-reason"
    assert not {"based-on", "body-site", "interpreter"} & set(params)  # R5's names; what is not served
    said = " ".join(p["documentation"] for p in resource["searchParam"])
    assert "basedon:identifier=" in said
    # How to search, in R4's names too.
    assert "based-on" not in said
    assert "body-site" not in said
    assert len(params) == len(SEARCH_PARAMETERS)


async def test_the_r5_capability_statement_keeps_r5s_names(client: TestClient) -> None:
    for path in ("/fhir/metadata", "/fhir/r5/metadata"):
        statement = await (await client.get(path)).json()
        validate(statement)
        assert statement["fhirVersion"] == "5.0.0"
        (resource,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy"]
        names = {p["name"] for p in resource["searchParam"]}
        assert {"based-on", "body-site"} <= names
        assert not {"basedon", "bodysite"} & names
    negotiated = await client.get("/fhir/metadata", headers={"Accept": "application/fhir+json; fhirVersion=4.0"})
    assert (await negotiated.json())["fhirVersion"] == "4.0.1"


# ---- R4's search parameters ----


async def search(client: TestClient, path: str, status: int = 200, **headers: str) -> dict[str, Any]:
    response = await client.get(path, headers=headers)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    return body


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


async def test_r4_names_search_on_r4_and_r5_names_on_r5(client: TestClient) -> None:
    chest = "http://snomed.info/sct|816094009"
    assert ids(await search(client, f"/fhir/r4/ImagingStudy?bodysite={chest}")) == {STUDY, OTHER}
    assert ids(await search(client, f"/fhir/r5/ImagingStudy?body-site={chest}")) == {STUDY, OTHER}
    assert ids(await search(client, "/fhir/r4/ImagingStudy?basedon:identifier=ACCP1")) == {STUDY}
    assert ids(await search(client, "/fhir/ImagingStudy?based-on:identifier=ACCP1")) == {STUDY}
    asked_r4 = await search(client, "/fhir/ImagingStudy?basedon:identifier=ACCP1",
                            Accept="application/fhir+json; fhirVersion=4.0")  # fmt: skip
    assert ids(asked_r4) == {STUDY}
    assert "basedon%3Aidentifier=ACCP1" in asked_r4["link"][0]["url"]  # the self link in the client's names


@pytest.mark.parametrize(
    ("path", "named"),
    [("/fhir/r4/ImagingStudy?body-site=x", "body-site (did you mean bodysite?)"),
     ("/fhir/r4/ImagingStudy?based-on:missing=true", "based-on:missing (did you mean basedon:missing?)"),
     ("/fhir/r5/ImagingStudy?bodysite=x", "bodysite (did you mean body-site?)"),
     ("/fhir/ImagingStudy?basedon:missing=true", "basedon:missing (did you mean based-on:missing?)"),
     ("/fhir/r5/ImagingStudy?interpreter=Practitioner/1", "interpreter")],
)  # fmt: skip
async def test_another_versions_name_is_an_unknown_parameter(client: TestClient, path: str, named: str) -> None:
    refused = await search(client, path, 400)
    assert f"unknown search parameter: {named}" in refused["issue"][0]["diagnostics"]
    lenient = await search(client, path, Prefer="handling=lenient")
    assert ids(lenient) == {STUDY, OTHER}


@pytest.mark.parametrize("asked", ["interpreter=Practitioner/1", "interpreter:missing=true", "interpreter.name=Li"])
async def test_r4s_interpreter_is_refused_saying_why(client: TestClient, asked: str) -> None:
    for headers in ({}, {"Prefer": "handling=lenient"}):  # not unknown: ignoring it would widen the search
        refused = await search(client, f"/fhir/r4/ImagingStudy?{asked}", 400, **headers)
        diagnostics = refused["issue"][0]["diagnostics"]
        assert diagnostics.startswith("search parameter interpreter of FHIR 4.0 is not supported: ")
        assert "PACS" in diagnostics


@pytest.mark.parametrize(
    ("value", "found"),
    [("29857009", {STUDY}), ("http://snomed.info/sct|29857009", {STUDY}), ("http://loinc.org|29857009", set()),
     ("|29857009", set()), ("1234", set()), ("1234,29857009", {STUDY})],
)  # fmt: skip
async def test_r4s_reason_matches_the_coded_reason(client: TestClient, value: str, found: set[str]) -> None:
    bundle = await search(client, f"/fhir/r4/ImagingStudy?reason={value}")
    assert ids(bundle) == found
    for entry in bundle.get("entry", []):
        codes = [c["code"] for concept in entry["resource"]["reasonCode"] for c in concept["coding"]]
        assert "29857009" in codes


async def test_reason_is_r4s_alone(client: TestClient) -> None:
    refused = await search(client, "/fhir/r5/ImagingStudy?reason=29857009", 400)
    assert "unknown search parameter: reason" in refused["issue"][0]["diagnostics"]
    r5 = await (await client.get("/fhir/r5/metadata")).json()
    assert "reason" not in {p["name"] for r in r5["rest"][0]["resource"] for p in r.get("searchParam", [])}


async def test_elements_are_the_versions(client: TestClient) -> None:
    await search(client, "/fhir/r4/ImagingStudy?_elements=procedure", 400)
    await search(client, "/fhir/r5/ImagingStudy?_elements=procedureCode", 400)
    await search(client, "/fhir/r4/ImagingStudy?_elements=procedureCode")
    await search(client, "/fhir/r5/ImagingStudy?_elements=procedure")


# ---- authorization, audit and the audience on every base ----


@pytest.fixture
async def smart(source: MemoryQidoSource, tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = load_settings({
        "BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": PUBLIC,
        "BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks",
        "BRIDGE_AUDIT_LOG": str(tmp_path / "audit.log"),
    })  # fmt: skip
    client = await start_client(settings, source, Verifier())
    yield client
    await client.close()


@pytest.mark.parametrize("base", BASES, ids=lambda base: base.path)
async def test_a_patient_token_reaches_its_patients_studies_alone_on_every_base(smart: TestClient, base: Base) -> None:
    token = {"Authorization": "Bearer patient:P1"}
    assert (await smart.get(f"{base.path}/ImagingStudy/{STUDY}", headers=token)).status == 200
    assert (await smart.get(f"{base.path}/ImagingStudy/{OTHER}", headers=token)).status == 404
    assert ids(await search(smart, f"{base.path}/ImagingStudy?_count=50", **token)) == {STUDY}
    await search(smart, f"{base.path}/ImagingStudy?patient=P2", 403, **token)
    await search(smart, f"{base.path}/Patient/P2/ImagingStudy", 403, **token)
    assert ids(await search(smart, f"{base.path}/Patient/P1/ImagingStudy", **token)) == {STUDY}
    posted = await smart.post(f"{base.path}/ImagingStudy/_search", data={"_id": f"{STUDY},{OTHER}"}, headers=token)
    assert ids(await posted.json()) == {STUDY}
    assert (await smart.get(f"{base.path}/ImagingStudy/{STUDY}")).status == 401
    metadata = await smart.get(f"{base.path}/metadata")  # no token needed
    assert metadata.status == 200
    statement = await metadata.json()
    assert statement["rest"][0]["security"]["service"]  # SMART's security section, in the base's version
    if base is R4:
        validate_r4(statement)
        FhirclientCapabilityStatement(statement, strict=True)
    else:
        validate(statement)
    configuration = await smart.get(f"{base.path}/.well-known/smart-configuration")
    assert configuration.status == 200


async def test_audit_events_name_the_base(smart: TestClient, tmp_path: Path) -> None:
    token = {"Authorization": "Bearer patient:P1"}
    for base in BASES:
        await smart.get(f"{base.path}/ImagingStudy/{STUDY}", headers=token)
        await smart.get(f"{base.path}/Patient/P1/ImagingStudy", headers=token)
    await smart.app[AUDIT_LOG].flush()
    events = [orjson.loads(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()]
    servers = [next(a for a in e["agent"] if a["type"]["coding"][0]["code"] == "110152")["networkUri"] for e in events]
    urls = [PUBLIC + base.path.removeprefix("/fhir") for base in BASES]
    assert servers == [url for url in urls for _ in range(2)]
    queries = [base64.b64decode(q["query"]).decode() for e in events for q in e["entity"] if "query" in q]
    assert queries == [f"{base.path}/Patient/P1/ImagingStudy" for base in BASES]
    for event in events:
        validate(event)


async def test_a_token_may_name_any_base_as_its_audience(source: MemoryQidoSource, auth_server: AuthServer) -> None:
    environ = auth_server.environ(auth_introspection_url=auth_server.introspection_url)
    del environ["BRIDGE_AUTH_AUDIENCE"]  # derived from the public URL: each base's
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": PUBLIC,
                              **environ})  # fmt: skip
    assert settings.audiences == (PUBLIC, f"{PUBLIC}/r4", f"{PUBLIC}/r5")
    client = await start_client(settings, source)
    try:
        for audience, status in ((f"{PUBLIC}/r4", 200), (f"{PUBLIC}/r5/", 200), (PUBLIC, 200),
                                 (f"{PUBLIC}/r3", 401), ("https://other.example/fhir/r4", 401)):  # fmt: skip
            # A JWT, checked here, and an opaque token, whose audience the introspection answer names.
            for token in (auth_server.mint(scope="patient/ImagingStudy.rs", patient="P1", aud=audience),
                          auth_server.issue_opaque(patient="P1", aud=audience)):  # fmt: skip
                response = await client.get(
                    f"/fhir/r4/ImagingStudy/{STUDY}", headers={"Authorization": f"Bearer {token}"}
                )
                assert response.status == status, (audience, token.count("."), await response.text())
    finally:
        await client.close()


def test_an_audience_set_alone_is_the_only_one() -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_PUBLIC_URL": PUBLIC,
                              "BRIDGE_AUTH_AUDIENCE": "urn:bridge"})  # fmt: skip
    assert settings.audiences == ("urn:bridge",)


async def test_the_access_log_redacts_the_compartments_patient_on_every_base() -> None:
    from bridge.web.observe import redacted

    for base in BASES:
        assert redacted(f"{base.path}/Patient/PAT-9/ImagingStudy?modality=CT") == (
            f"{base.path}/Patient/***/ImagingStudy?modality=CT"
        )
    assert redacted("/fhir/r4/ImagingStudy?bodysite=x&basedon:identifier=A1") == (
        "/fhir/r4/ImagingStudy?bodysite=***&basedon:identifier=***"
    )


# ---- against Orthanc ----


@pytest.mark.integration
async def test_orthanc_studies_through_every_base(orthanc: OrthancServer, studies: dict[str, StudySpec]) -> None:
    client = await start_client(orthanc_settings(orthanc))
    try:
        spec = studies["full"]
        for base in BASES:
            read = await client.get(f"{base.path}/ImagingStudy/{spec.uid}")
            assert read.status == 200, await read.text()
            assert read.headers["Content-Type"] == content_type(served_version(base))
            assert (await read.json())["id"] == spec.uid
            bundle = await search(client, f"{base.path}/ImagingStudy?_id={spec.uid}&_include=ImagingStudy:endpoint")
            assert ids(bundle) == {spec.uid}
            for answer in (await read.json(), bundle):
                (validate_r4 if base is R4 else validate)(answer)
            assert bundle["link"][0]["url"].split("/ImagingStudy?")[0].endswith(base.path)
    finally:
        await client.close()


# ---- a real R4 client ----


def fhirclient_session(base_url: str) -> dict[str, Any]:
    """What SMART's Python client (R4 models, strict) makes of /fhir/r4: run in a thread (it is synchronous)."""
    from fhirclient import client as fhirclient
    from fhirclient.models.endpoint import Endpoint
    from fhirclient.models.imagingstudy import ImagingStudy

    smart = fhirclient.FHIRClient(settings={"app_id": "bridge-test", "api_base": base_url})
    smart.prepare()  # reads metadata and parses it as an R4 CapabilityStatement, strictly
    study = ImagingStudy.read(STUDY, smart.server)
    search = ImagingStudy.where(struct={"patient": "P1", "_include": "ImagingStudy:endpoint"})
    (bundle,) = search.perform_iter(smart.server)  # one page
    endpoint = Endpoint.read(study.endpoint[0].reference.partition("/")[2], smart.server)
    return {
        "fhirVersion": smart.server.capabilityStatement.fhirVersion,
        "modality": study.series[0].modality.code,
        "types": [entry.resource.resource_type for entry in bundle.entry],
        "connection": endpoint.connectionType.code,
    }


async def test_smarts_python_client_reads_and_searches_r4(source: MemoryQidoSource) -> None:
    settings = load_settings(
        {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_WADO_URL": "https://pacs/wado"}
    )
    client = await start_client(settings, source)
    try:
        base_url = str(client.make_url("/fhir/r4"))
        seen = await asyncio.to_thread(fhirclient_session, base_url)
    finally:
        await client.close()
    assert seen == {"fhirVersion": "4.0.1", "modality": "CT", "types": ["ImagingStudy", "Endpoint"],
                    "connection": "dicom-wado-rs"}  # fmt: skip


async def test_the_host_check_guards_every_base(source: MemoryQidoSource) -> None:
    """Without BRIDGE_PUBLIC_URL links come from the Host: a name not allowed is a 421 under every base."""
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web"}), source)
    try:
        for base in BASES:
            for path in (f"/ImagingStudy/{STUDY}", "/metadata", "/$versions"):
                response = await client.get(base.path + path, headers={"Host": "rebound.example"})
                assert response.status == 421, (base.path, path)
    finally:
        await client.close()


@pytest.mark.parametrize("base", BASES, ids=lambda base: base.path)
async def test_fhirpy_reads_searches_and_follows_the_endpoint_on_every_base(
    source: MemoryQidoSource, base: Base
) -> None:
    # Links come from each request's own origin here (no BRIDGE_PUBLIC_URL), so fetch_all follows them back.
    settings = load_settings(
        {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_WADO_URL": "https://pacs/wado"}
    )
    client = await start_client(settings, source)
    try:
        fhir = AsyncFHIRClient(str(client.make_url(base.path)), extra_headers={"Accept": "application/fhir+json"})
        study = await fhir.reference("ImagingStudy", STUDY).to_resource()
        endpoint = await study["endpoint"][0].to_resource()
        everything = await fhir.resources("ImagingStudy").limit(1).fetch_all()  # follows next links
        raw = await fhir.resources("ImagingStudy").search(patient="P1").include("ImagingStudy", "endpoint").fetch_raw()
        count = await fhir.resources("ImagingStudy").count()
    finally:
        await client.close()
    connection = endpoint["connectionType"]
    code = connection["code"] if base is R4 else connection[0]["coding"][0]["code"]
    assert code == "dicom-wado-rs"
    assert sorted(r["id"] for r in everything) == [STUDY, OTHER]
    assert [e["resource"]["resourceType"] for e in raw["entry"]] == ["ImagingStudy", "Endpoint"]
    assert count == 2
    if base is R4:
        validate_r4(orjson.loads(orjson.dumps(raw)))
