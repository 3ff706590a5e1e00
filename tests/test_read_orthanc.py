"""The read path against a real Orthanc: every generated study read back, validated and compared."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bridge.fhirversion import FhirVersion
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.http import HttpQidoSource
from bridge.render import imaging_study
from bridge.studies import read_study
from tests.conftest import orthanc_settings, start_client
from tests.support import catalog
from tests.support.dicomgen import StudySpec, encode, simple_study
from tests.support.fhircheck import validate, validate_r4
from tests.support.orthanc import OrthancServer
from tests.support.toxic_proxy import ToxicProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration  # every test reads a real Orthanc (one starts its own)

DCM = "http://dicom.nema.org/resources/ontology/DCM"

EXPECTED_STARTED = {
    "full": "2024-03-05T14:30:15.25+01:00",
    "odd_patient": "2024-03-05",
    "malformed_dates": "1997-04-24",
    "impossible_date": None,
    "no_date": None,
    "negative_zone": "2023-12-31T23:59:59.123456-05:00",
    "sr_and_seg": "2024-03-05",
    "no_modality": "2024-03-05",
    "mammography": "2024-03-05",
    "many_series": "2024-03-05",
    "big_series": "2024-03-05",
}


def assert_matches(resource: dict[str, Any], spec: StudySpec) -> None:
    """The resource lists exactly what was loaded: series, instances, counts, SOP classes, modalities."""
    validate(resource)
    assert resource["id"] == spec.uid
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{spec.uid}"}
    assert resource["numberOfSeries"] == len(spec.series)
    assert resource["numberOfInstances"] == spec.instance_count
    got = {s["uid"]: s for s in resource.get("series", [])}
    assert set(got) == {s.uid for s in spec.series}
    for series in spec.series:
        mapped = got[series.uid]
        assert mapped["modality"]["coding"][0]["code"] == (series.modality or "OT")
        assert mapped["modality"]["coding"][0]["system"] == DCM
        assert mapped["numberOfInstances"] == len(series.instances)
        assert mapped.get("number") == series.number
        instances = {i["uid"]: i for i in mapped.get("instance", [])}
        assert set(instances) == {i.uid for i in series.instances}
        for instance in series.instances:
            assert instances[instance.uid]["sopClass"]["code"] == f"urn:oid:{instance.sop_class}"
            assert instances[instance.uid].get("number") == instance.number
    modalities = {c["coding"][0]["code"] for c in resource["modality"]}
    assert modalities == {s.modality or "OT" for s in spec.series}
    if spec.accession:
        assert resource["basedOn"][0]["identifier"]["value"] == spec.accession
    else:
        assert "basedOn" not in resource
    if spec.patient_id:
        assert resource["subject"]["identifier"]["value"] == spec.patient_id


@pytest.mark.parametrize("name", sorted(catalog.studies()))
async def test_every_study_reads_back_as_loaded(name: str, bridge: TestClient, studies: dict[str, StudySpec]) -> None:
    spec = studies[name]
    response = await bridge.get(f"/fhir/ImagingStudy/{spec.uid}")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/fhir+json"
    resource = await response.json()
    assert_matches(resource, spec)
    assert resource.get("started") == EXPECTED_STARTED[name]


async def test_full_study_carries_every_element(bridge: TestClient, studies: dict[str, StudySpec]) -> None:
    resource = await (await bridge.get(f"/fhir/ImagingStudy/{studies['full'].uid}")).json()
    assert resource["description"] == "CT Thorax mit KM"
    assert resource["referrer"] == {"display": "Gregory House"}
    assert resource["subject"] == {
        "type": "Patient",
        "identifier": {"assigner": {"display": "HOSP"}, "value": "PAT-FULL"},
        "display": "Dr. Jürgen Müller",
    }
    ct, mr = resource["series"][1], resource["series"][0]  # ordered by SeriesNumber: MR is 1, CT is 2
    assert ct["bodySite"]["concept"]["coding"][0]["code"] == "816094009"
    assert ct["started"] == "2024-03-05T14:35:12+01:00"
    assert [i["number"] for i in ct["instance"]] == [1, 2, 3]
    # The equipment and the institution have no function in R5's series-performer-function: none is given.
    functions = [
        (p.get("function", {}).get("coding", [{}])[0].get("code"), p["actor"]["type"]) for p in ct["performer"]
    ]
    assert functions == [("PRF", "Practitioner"), ("SPRF", "Practitioner"), (None, "Device"), (None, "Organization")]
    assert mr["laterality"]["coding"][0]["code"] == "7771000"
    assert mr["bodySite"]["concept"]["coding"][0]["display"] == "Knee"


async def test_laterality_of_mammograms_comes_from_their_images(
    bridge: TestClient, studies: dict[str, StudySpec]
) -> None:
    # Image Laterality is an instance attribute: asked for with the instance rows, where Orthanc answers it.
    resource = await (await bridge.get(f"/fhir/ImagingStudy/{studies['mammography'].uid}")).json()
    lateralities = [s.get("laterality", {}).get("coding", [{}])[0].get("display") for s in resource["series"]]
    assert lateralities == ["Left", None, "Bilateral"]  # L L; L R; B


async def test_sr_and_document_titles(bridge: TestClient, studies: dict[str, StudySpec]) -> None:
    resource = await (await bridge.get(f"/fhir/ImagingStudy/{studies['sr_and_seg'].uid}")).json()
    titles = {s["modality"]["coding"][0]["code"]: s["instance"][0].get("title") for s in resource["series"]}
    assert titles["DOC"] == "Referral letter"
    # Orthanc's QIDO never returns sequences: the SR's concept name comes from WADO-RS metadata.
    assert titles["SR"] == "Radiology Report"
    assert all("bodySite" not in s for s in resource["series"] if s["modality"]["coding"][0]["code"] != "CT")


async def test_uid_under_two_patients_is_a_conflict_not_a_merge(bridge: TestClient, studies: object) -> None:
    response = await bridge.get(f"/fhir/ImagingStudy/{catalog.SHARED_UID}")
    assert response.status == 409
    outcome = await response.json()
    validate(outcome)
    assert outcome["issue"][0]["code"] == "multiple-matches"


async def test_unknown_study_is_404(bridge: TestClient) -> None:
    response = await bridge.get("/fhir/ImagingStudy/1.2.3.4.5.6.7.8.9")
    assert response.status == 404
    validate(await response.json())


@pytest.mark.parametrize("page_size", ["7", "1000"])
async def test_paging_loses_nothing(orthanc: OrthancServer, studies: dict[str, StudySpec], page_size: str) -> None:
    client = await start_client(orthanc_settings(orthanc, qido_page_size=page_size))
    try:
        for name in ("big_series", "many_series", "full"):
            response = await client.get(f"/fhir/ImagingStudy/{studies[name].uid}")
            assert_matches(await response.json(), studies[name])
    finally:
        await client.close()


async def test_endpoint_leads_to_the_studys_metadata(
    bridge: TestClient, orthanc: OrthancServer, studies: dict[str, StudySpec]
) -> None:
    spec = studies["full"]
    study = await (await bridge.get(f"/fhir/ImagingStudy/{spec.uid}")).json()
    reference = study["endpoint"][0]["reference"]
    endpoint_response = await bridge.get(f"/fhir/{reference}")
    assert endpoint_response.status == 200
    endpoint = await endpoint_response.json()
    validate(endpoint)
    assert endpoint["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"
    address = endpoint["address"]
    assert not address.endswith("/")
    token = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{address}/studies/{spec.uid}/metadata",
            headers={"Accept": "application/dicom+json", "Authorization": f"Basic {token}"},
        ) as response,
    ):
        assert response.status == 200
        metadata = await response.json(content_type=None)
    assert {item["00080018"]["Value"][0] for item in metadata} == {i.uid for s in spec.series for i in s.instances}


async def test_wrong_credentials_are_a_502_without_secrets(orthanc: OrthancServer, studies: object) -> None:
    client = await start_client(orthanc_settings(orthanc, pacs_password="not-the-password"))
    try:
        response = await client.get(f"/fhir/ImagingStudy/{catalog.SHARED_UID}")
        body = await response.text()
        assert response.status == 502
        assert "not-the-password" not in body
        ready = await client.get("/readyz")
        assert ready.status == 503
    finally:
        await client.close()


async def test_readiness_follows_the_pacs(orthanc: OrthancServer, proxy: ToxicProxy) -> None:
    settings = orthanc_settings(orthanc, qido_url=proxy.url("/dicom-web"), qido_timeout="1", qido_retries="0",
                                breaker_cooldown="0.2")  # fmt: skip
    client = await start_client(settings)

    async def ready() -> bool:
        status = (await client.get("/readyz")).status
        assert status in (200, 503)
        return status == 200

    try:
        assert await ready()
        proxy.mode = "down"
        asked = proxy.connections
        assert not await ready()
        assert proxy.connections > asked  # the PACS was asked, not a remembered answer
        assert (await client.get("/healthz")).status == 200  # alive all the same: liveness is not the PACS
        proxy.mode = "pass"
        await eventually(ready, what="ready once the PACS is back")  # after the breaker's cooldown, if it opened
    finally:
        await client.close()


async def test_a_pacs_that_caps_its_answers_loses_nothing(tmp_path: Path) -> None:
    """Orthanc's LimitFind* caps cannot be paged past (offset stops at the cap): WADO-RS metadata completes."""
    capped = {"LimitFindResults": 3, "LimitFindInstances": 3}
    spec = simple_study(series=5, instances=7, patient_id="PAT-CAPPED")
    with OrthancServer(tmp_path, extra_config=capped) as server:
        server.upload_many(encode(spec))
        for page_size in ("0", "2"):
            client = await start_client(orthanc_settings(server, qido_page_size=page_size))
            try:
                response = await client.get(f"/fhir/ImagingStudy/{spec.uid}")
                assert response.status == 200
                assert_matches(await response.json(), spec)
            finally:
                await client.close()


async def test_reason_and_readers_come_through_orthanc_in_both_versions(orthanc: OrthancServer) -> None:
    # Orthanc 1.10 answers a study query's includefield for LO and PN attributes it does not index, and never
    # for sequences: Procedure Code Sequence and the coded reasons reach the bridge only from PACSes that return
    # sequences (docs/orthanc-notes.md); the reason in words and the readers do here.
    spec = simple_study(
        patient_id="PAT-READERS",
        procedures=[("RPID16", "RADLEX", "CT HEAD WO")],
        reasons=[("25064002", "SCT", "Headache")],
        reason_text="headache since <Monday> & worse",
        reading="Reader^Rita\\Second^Sam^^Dr",
    )
    orthanc.upload_many(encode(spec))
    source = HttpQidoSource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
    try:
        read = await read_study(source, spec.uid, MappingOptions())
    finally:
        await source.close()
    validate(read.resource)
    assert read.resource["reason"] == [{"concept": {"text": "headache since <Monday> & worse"}}]
    r4 = imaging_study(read.facts, FhirVersion.R4)
    validate_r4(r4)
    assert r4["reasonCode"] == [{"text": "headache since <Monday> & worse"}]
    assert r4["interpreter"] == [{"type": "Practitioner", "display": "Rita Reader"},
                                 {"type": "Practitioner", "display": "Dr Sam Second"}]  # fmt: skip
