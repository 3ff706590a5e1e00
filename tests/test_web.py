"""The HTTP layer with an in-memory PACS: formats, errors as OperationOutcomes, metadata, endpoint, probes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.errors import ConfigError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from bridge.qido.memory import MemoryQidoSource
from bridge.search.parameters import SEARCH_PARAMETERS
from bridge.settings import load_settings
from bridge.web.app import endpoint_of
from tests.conftest import start_client
from tests.support.fhircheck import validate

STUDY = "1.2.3.4"
SERIES = "1.2.3.4.1"
WADO = "https://pacs.example.org/dicom-web"


def row(**attributes: Any) -> dict[str, Any]:
    tag_of = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "sop_class": "00080016",
              "patient": "00100020", "modality": "00080060"}  # fmt: skip
    return {tag_of[name]: {"vr": "UI", "Value": [value]} for name, value in attributes.items()}


def pacs() -> MemoryQidoSource:
    return MemoryQidoSource(
        studies=[row(study=STUDY, patient="P1")],
        series={STUDY: [row(series=SERIES, modality="CT")]},
        instances={(STUDY, SERIES): [row(sop="1.2.3.4.1.1", sop_class="1.2.840.10008.5.1.4.1.1.2")]},
    )


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_WADO_URL": WADO})
    client = await start_client(settings, source)
    yield client
    await client.close()


async def outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type in ("application/fhir+json", "application/json")
    body: dict[str, Any] = await response.json()
    validate(body)
    assert body["resourceType"] == "OperationOutcome"
    return body


async def test_read(client: TestClient) -> None:
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/fhir+json; fhirVersion=5.0; charset=utf-8"
    resource = await response.json()
    validate(resource)
    assert resource["series"][0]["instance"][0]["uid"] == "1.2.3.4.1.1"


@pytest.mark.parametrize(
    ("query", "headers", "content_type"),
    [
        ("", {}, "application/fhir+json"),
        ("?_format=json", {}, "application/fhir+json"),
        ("?_format=application/fhir%2Bjson", {}, "application/fhir+json"),
        ("?_format=application/json", {}, "application/json"),
        ("", {"Accept": "application/fhir+json"}, "application/fhir+json"),
        ("", {"Accept": "application/json"}, "application/json"),
        ("", {"Accept": "*/*"}, "application/fhir+json"),
        ("", {"Accept": "text/html, application/fhir+json;q=0.9"}, "application/fhir+json"),
        ("?_format=application/fhir+json", {}, "application/fhir+json"),  # "+" unencoded: decoded as a space
        ("", {"Accept": "application/json+fhir"}, "application/fhir+json"),
        ("", {"Accept": "application/json, application/fhir+json;q=0"}, "application/json"),
    ],
)
async def test_json_formats_are_served(
    client: TestClient, query: str, headers: dict[str, str], content_type: str
) -> None:
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}{query}", headers=headers)
    assert response.status == 200
    assert response.content_type == content_type


@pytest.mark.parametrize(
    ("query", "headers"),
    [("?_format=xml", {}), ("?_format=application/fhir%2Bxml", {}), ("", {"Accept": "application/fhir+xml"}),
     ("", {"Accept": "text/html"}), ("", {"Accept": "application/fhir+json;q=0, application/xml"}),
     ("", {"Accept": "*/*;q=0"})],
)  # fmt: skip
async def test_other_formats_are_406_before_the_pacs_is_asked(
    client: TestClient, source: MemoryQidoSource, query: str, headers: dict[str, str]
) -> None:
    response = await client.get(f"/fhir/ImagingStudy/{STUDY}{query}", headers=headers)
    body = await outcome(response, 406)
    assert body["issue"][0]["code"] == "not-supported"
    assert source.calls == []


@pytest.mark.parametrize("bad_id", ["abc", "1..2", "1.2.", ".1.2", "1.2.3" + ".4" * 40, "urn:oid:1.2.3", "1.2-3"])
async def test_malformed_id_is_400(client: TestClient, source: MemoryQidoSource, bad_id: str) -> None:
    body = await outcome(await client.get(f"/fhir/ImagingStudy/{bad_id}"), 400)
    assert "StudyInstanceUID" in body["issue"][0]["diagnostics"]
    assert source.calls == []


async def test_legacy_uid_with_leading_zeros_is_readable(source: MemoryQidoSource, client: TestClient) -> None:
    legacy = "1.2.840.0113.01"  # old modalities wrote such UIDs; archives still hold them
    source.studies.append(row(study=legacy, patient="P3"))
    response = await client.get(f"/fhir/ImagingStudy/{legacy}")
    assert response.status == 200
    validate(await response.json())


async def test_unknown_study_is_404(client: TestClient) -> None:
    await outcome(await client.get("/fhir/ImagingStudy/1.2.3.5"), 404)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamBadResponse("PACS sent malformed JSON"), 502, "exception"),
        (UpstreamUnavailable("cannot connect to the PACS"), 503, "transient"),
        (UpstreamTimeout("PACS did not answer"), 504, "timeout"),
    ],
)
async def test_pacs_failures_map_to_gateway_statuses(
    client: TestClient, source: MemoryQidoSource, error: Exception, status: int, code: str
) -> None:
    source.fail_with = error  # type: ignore[assignment]
    body = await outcome(await client.get(f"/fhir/ImagingStudy/{STUDY}"), status)
    assert body["issue"][0]["code"] == code
    assert body["issue"][0]["diagnostics"] == str(error)


async def test_one_uid_two_patients_is_409(client: TestClient, source: MemoryQidoSource) -> None:
    source.studies.append(row(study=STUDY, patient="P2"))
    body = await outcome(await client.get(f"/fhir/ImagingStudy/{STUDY}"), 409)
    assert body["issue"][0]["code"] == "multiple-matches"


async def test_rows_the_pacs_should_not_have_sent_are_ignored(client: TestClient, source: MemoryQidoSource) -> None:
    source.studies.append(row(study="1.2.3.44", patient="P9"))  # a PACS that ignored the filter
    source.series[STUDY].append(row(series="9.9", study="1.2.3.44", modality="MR"))
    source.instances[(STUDY, SERIES)].append(row(sop="9.9.9", sop_class="1.2.3", series="9.9"))
    source.instances[(STUDY, SERIES)].append(row(sop="1.2.3.4.1.2"))  # no SOP Class: cannot be listed
    resource = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    validate(resource)
    assert [s["uid"] for s in resource["series"]] == [SERIES]
    assert [i["uid"] for i in resource["series"][0]["instance"]] == ["1.2.3.4.1.1"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/fhir/Patient/1", 404),
        ("GET", "/fhir/nothing/here/at/all", 404),
        ("DELETE", f"/fhir/ImagingStudy/{STUDY}", 405),
        ("POST", "/fhir/metadata", 405),
    ],
)
async def test_every_error_under_fhir_is_an_operation_outcome(
    client: TestClient, method: str, path: str, status: int
) -> None:
    await outcome(await client.request(method, path), status)


async def test_endpoint_is_served_and_referenced(client: TestClient) -> None:
    study = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    reference = study["endpoint"][0]["reference"]
    response = await client.get(f"/fhir/{reference}")
    assert response.status == 200
    endpoint = await response.json()
    validate(endpoint)
    assert endpoint["address"] == WADO
    assert endpoint["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"
    await outcome(await client.get("/fhir/Endpoint/other"), 404)


async def test_capability_statement_lists_what_is_served(client: TestClient) -> None:
    response = await client.get("/fhir/metadata")
    statement = await response.json()
    validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    served = {name: sorted(i["code"] for i in r["interaction"]) for name, r in resources.items()}
    assert served == {"Endpoint": ["read"], "ImagingStudy": ["read", "search-type"]}
    # The search parameters are the table's that R5 serves, no more, no less.
    assert [p["name"] for p in resources["ImagingStudy"]["searchParam"]] == [
        p.name for p in SEARCH_PARAMETERS if p.in_r5
    ]
    assert resources["ImagingStudy"]["searchInclude"] == ["ImagingStudy:endpoint"]
    assert statement["fhirVersion"] == "5.0.0"
    # R5's own definitions: identifier and patient are the clinical-* parameters shared by many resources.
    definitions = {p["name"]: p.get("definition") for p in resources["ImagingStudy"]["searchParam"]}
    assert definitions == {name: f"http://hl7.org/fhir/SearchParameter/{canonical}" for name, canonical in {
        "_id": "Resource-id", "identifier": "clinical-identifier", "patient": "clinical-patient",
        "subject": "ImagingStudy-subject", "started": "ImagingStudy-started", "modality": "ImagingStudy-modality",
        "series": "ImagingStudy-series", "instance": "ImagingStudy-instance", "dicom-class": "ImagingStudy-dicom-class",
        "body-site": "ImagingStudy-body-site", "based-on": "ImagingStudy-based-on", "status": "ImagingStudy-status",
        "endpoint": "ImagingStudy-endpoint", "_lastUpdated": "Resource-lastUpdated",
    }.items()}  # fmt: skip


async def test_probes(client: TestClient, source: MemoryQidoSource) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    source.fail_with = UpstreamUnavailable("cannot connect to the PACS")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["status"] == "unavailable"
    assert (await client.get("/healthz")).status == 200


async def test_no_endpoint_for_a_folder_with_the_gateway_off() -> None:
    # A folder has no WADO-RS of its own: without the gateway nothing serves its pixels.
    environ = {"BRIDGE_QIDO_URL": f"file://{Path(__file__).parent}", "BRIDGE_DICOMWEB_GATEWAY": "false"}
    client = await start_client(load_settings(environ), pacs())
    try:
        study = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
        validate(study)
        assert "endpoint" not in study
    finally:
        await client.close()


def counted(**attributes: Any) -> dict[str, Any]:
    """A row with NumberOfSeriesRelatedInstances, as PACSes send at series level."""
    count = attributes.pop("count")
    return {**row(**attributes), "00201209": {"vr": "IS", "Value": [count]}}


async def test_series_of_another_patient_is_409_not_merged(client: TestClient, source: MemoryQidoSource) -> None:
    source.series[STUDY].append(row(series="1.2.3.4.2", modality="MR", patient="P2"))
    body = await outcome(await client.get(f"/fhir/ImagingStudy/{STUDY}"), 409)
    # The first series names no patient, the second another one: either refuses the merge.
    assert "patient" in body["issue"][0]["diagnostics"]


async def test_instances_qido_cannot_list_come_from_wado_rs_metadata(
    client: TestClient, source: MemoryQidoSource
) -> None:
    source.series[STUDY] = [counted(series=SERIES, modality="CT", count=3)]
    listed = source.instances[(STUDY, SERIES)]
    source.metadata[(STUDY, SERIES)] = listed + [
        row(sop=f"1.2.3.4.1.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2") for n in (2, 3)
    ]
    resource = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    validate(resource)
    assert [i["uid"] for i in resource["series"][0]["instance"]] == ["1.2.3.4.1.1", "1.2.3.4.1.2", "1.2.3.4.1.3"]


async def test_without_metadata_the_listed_instances_stand(client: TestClient, source: MemoryQidoSource) -> None:
    source.series[STUDY] = [counted(series=SERIES, modality="CT", count=3)]
    source.fail_with, source.fail_only = UpstreamBadResponse("no WADO-RS here"), "metadata"
    resource = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    validate(resource)
    assert resource["series"][0]["numberOfInstances"] == 1


async def test_series_qido_cannot_list_come_from_study_metadata(client: TestClient, source: MemoryQidoSource) -> None:
    source.studies[0]["00201206"] = {"vr": "IS", "Value": [2]}
    hidden = {**row(sop="1.2.3.4.2.1", sop_class="1.2.840.10008.5.1.4.1.1.4", series="1.2.3.4.2", modality="MR")}
    source.metadata[(STUDY, "1.2.3.4.2")] = [hidden]
    resource = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    validate(resource)
    assert [(s["uid"], s["modality"]["coding"][0]["code"]) for s in resource["series"]] == [
        (SERIES, "CT"),
        ("1.2.3.4.2", "MR"),
    ]
    assert resource["numberOfInstances"] == 2


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/fhir/ImagingStudy?patient=" + "P" * 20_000, {}, 414),
        ("/fhir/" + "x" * 20_000, {}, 414),
        ("/fhir/metadata", {"X-Junk": "j" * 20_000}, 431),
        ("/fhir/metadata", {f"X-Junk-{n}": "j" * 4_000 for n in range(10)}, 431),
    ],
)
async def test_oversized_requests_are_operation_outcomes(
    client: TestClient, path: str, headers: dict[str, str], status: int
) -> None:
    body = await outcome(await client.get(path, headers=headers), status)
    assert body["issue"][0]["code"] == "too-long"


ENDPOINT_PACS = {"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_WADO_URL": WADO}
SMART_ENV = {"BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks"}


async def endpoint_served(environ: dict[str, str]) -> dict[str, Any]:
    """The Endpoint a study references, as read through the bridge built from ``environ``."""
    client = await start_client(load_settings(environ), pacs())
    try:
        study = await (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
        endpoint: dict[str, Any] = await (await client.get(f"/fhir/{study['endpoint'][0]['reference']}")).json()
        validate(endpoint)
        return endpoint
    finally:
        await client.close()


async def test_the_endpoint_is_the_gateway_at_the_public_origin() -> None:
    """Gateway on (the default): the address is the origin of BRIDGE_PUBLIC_URL + /dicom-web, never the PACS."""
    endpoint = await endpoint_served({**ENDPOINT_PACS, "BRIDGE_PUBLIC_URL": "https://fhir.example.org:8443/r5/fhir"})
    assert endpoint["address"] == "https://fhir.example.org:8443/dicom-web"
    assert "extension" not in endpoint  # no authorization: no token to send
    smart = endpoint_of(
        load_settings({**ENDPOINT_PACS, **SMART_ENV, "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir"})
    )
    validate(smart)
    assert smart["address"] == "https://fhir.example.org/dicom-web"
    assert smart["extension"] == [
        {
            "url": "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token",
            "valueBoolean": True,
        }
    ]
    assert smart["id"] != (await endpoint_served(ENDPOINT_PACS))["id"]  # the id follows the address


async def test_with_the_gateway_off_the_endpoint_is_the_pacs() -> None:
    off = {**ENDPOINT_PACS, "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir", "BRIDGE_DICOMWEB_GATEWAY": "false"}
    assert (await endpoint_served(off))["address"] == WADO
    client = await start_client(load_settings(off), pacs())
    try:
        assert (await client.get(f"/dicom-web/studies/{STUDY}/metadata")).status == 404  # no gateway served
    finally:
        await client.close()


async def test_without_a_public_url_the_endpoint_falls_back_to_the_pacs_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Endpoint is one per app; without BRIDGE_PUBLIC_URL the gateway's public origin is not known, so (without
    authorization only) viewers are given the PACS, and the log says how to fix it."""
    with caplog.at_level("WARNING", logger="bridge.web.app"):
        endpoint = await endpoint_served(ENDPOINT_PACS)
    assert endpoint["address"] == WADO
    assert any("BRIDGE_PUBLIC_URL" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("environ", "fix"),
    [
        ({**ENDPOINT_PACS, **SMART_ENV, "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
          "BRIDGE_DICOMWEB_GATEWAY": "false"}, "BRIDGE_DICOMWEB_GATEWAY=false"),
        ({**ENDPOINT_PACS, **SMART_ENV, "BRIDGE_AUTH_AUDIENCE": "https://fhir.example.org/fhir"}, "BRIDGE_PUBLIC_URL"),
    ],
)  # fmt: skip
def test_smart_never_sends_viewers_to_the_pacs(environ: dict[str, str], fix: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    assert fix in str(refused.value)


def test_the_gateway_off_is_fine_without_a_pacs_over_http() -> None:
    """With the embedded samples or a folder there is no PACS to open to browsers: nothing to refuse."""
    load_settings({**SMART_ENV, "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir", "BRIDGE_DICOMWEB_GATEWAY": "0"})
