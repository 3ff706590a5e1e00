"""What a new R4 user tried, and what went wrong or had no test: a search by a parameter matched below the study
level, alone, against a folder of DICOM files (the embedded default's kind of source); a ``_format`` in a ``POST
_search`` body; SMART discovery and a token for the R4 base."""

from __future__ import annotations

from pathlib import Path

from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.authserver import AuthServer
from tests.support.dicomgen import MR_IMAGE, InstanceSpec, SeriesSpec, StudySpec, encode, simple_study
from tests.test_authz import GATEWAYED, pacs

PUBLIC_BASE = GATEWAYED["BRIDGE_PUBLIC_URL"]


def write(folder: Path, *studies: StudySpec) -> None:
    for study in studies:
        for number, data in enumerate(encode(study)):
            (folder / f"{study.uid}-{number}.dcm").write_bytes(data)


async def test_dicom_class_alone_finds_every_study_with_an_instance_of_the_class_in_a_folder(tmp_path: Path) -> None:
    # Two matching studies: the bridge then asks the folder for both by a UID list, which the folder's index
    # compared as one string, so a lone dicom-class found nothing there.
    first, second = simple_study(), simple_study()
    mr = StudySpec(series=[SeriesSpec(modality="MR", instances=[InstanceSpec(sop_class=MR_IMAGE)])])
    write(tmp_path, first, second, mr)
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{tmp_path}"}))
    try:
        response = await client.get("/fhir/r4/ImagingStudy", params={"dicom-class": f"urn:oid:{MR_IMAGE}"})
        assert response.status == 200, await response.text()
        only_mr = await response.json()
        ct = "1.2.840.10008.5.1.4.1.1.2"
        response = await client.get("/fhir/r4/ImagingStudy", params={"dicom-class": ct})
        assert response.status == 200, await response.text()
        both_ct = await response.json()
    finally:
        await client.close()
    assert [e["resource"]["id"] for e in only_mr["entry"]] == [mr.uid]
    assert sorted(e["resource"]["id"] for e in both_ct["entry"]) == sorted([first.uid, second.uid])


async def test_a_format_in_a_post_search_body_is_honoured_as_in_the_url(tmp_path: Path) -> None:
    # FHIR reads a POST _search body's parameters as the URL's: a body asking for R4 got R5, and one asking for
    # XML (or an unserved version) got JSON, silently.
    write(tmp_path, simple_study())
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{tmp_path}"}))
    try:
        r4 = await client.post("/fhir/ImagingStudy/_search", data={"_format": "application/fhir+json;fhirVersion=4.0"})
        r4_body = await r4.json()
        xml = await client.post("/fhir/ImagingStudy/_search", data={"_format": "xml"})
        r3 = await client.post("/fhir/r4/ImagingStudy/_search", data={"_format": "json;fhirVersion=3.0"})
        r5_on_r4 = await client.post("/fhir/r4/ImagingStudy/_search", data={"_format": "json;fhirVersion=5.0"})
        refused = await client.post(
            "/fhir/ImagingStudy/_search", data={"_format": "application/fhir+json;fhirVersion=4.0", "nonsense": "1"}
        )
    finally:
        await client.close()
    assert r4.status == 200, r4_body
    assert r4.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0; charset=utf-8"
    assert "system" in r4_body["entry"][0]["resource"]["modality"][0]  # R4's Coding, not R5's CodeableConcept
    assert (xml.status, r3.status, r5_on_r4.status) == (406, 406, 406)
    assert refused.status == 400  # and said in the version the body asked for, as every answer is
    assert refused.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0; charset=utf-8"


async def test_an_r4_app_discovers_smart_on_the_r4_base_and_reads_with_a_token_for_it(
    auth_server: AuthServer,
) -> None:
    environ = {**GATEWAYED, **auth_server.environ()}
    del environ["BRIDGE_AUTH_AUDIENCE"]  # the audience then comes from BRIDGE_PUBLIC_URL: any of its FHIR bases
    client = await start_client(load_settings(environ), pacs())
    try:
        discovered = await client.get("/fhir/r4/.well-known/smart-configuration")  # no token needed
        configuration = await discovered.json()
        statement = await (await client.get("/fhir/r4/metadata")).json()
        token = auth_server.mint(scope="patient/ImagingStudy.rs", patient="P2", aud=f"{PUBLIC_BASE}/r4")
        read = await client.get("/fhir/r4/ImagingStudy/2.25.3", headers={"Authorization": f"Bearer {token}"})
        study = await read.json()
    finally:
        await client.close()
    assert discovered.status == 200, configuration
    assert configuration["token_endpoint"] == auth_server.token_url
    assert "smart-imaging-access" in configuration["capabilities"]
    assert statement["fhirVersion"] == "4.0.1"
    security = statement["rest"][0]["security"]
    assert {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}["token"] == auth_server.token_url
    assert read.status == 200, study
    assert read.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0; charset=utf-8"


async def test_the_gateway_answers_a_uid_list_from_a_folder_one_uid_at_a_time_and_no_wider(tmp_path: Path) -> None:
    studies = [simple_study(), simple_study(), simple_study()]
    write(tmp_path, *studies)
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{tmp_path}"}))
    try:
        both = f"{studies[0].uid},{studies[1].uid}"
        listed = await client.get("/dicom-web/studies", params={"StudyInstanceUID": both})
        rows = await listed.json()
        # An empty item names no study: dropped, never asked of the index as "any".
        empty = await client.get("/dicom-web/studies", params={"StudyInstanceUID": f",{studies[2].uid}"})
        empty_rows = await empty.json()
    finally:
        await client.close()
    assert listed.status == 200, rows
    assert sorted(row["0020000D"]["Value"][0] for row in rows) == sorted([studies[0].uid, studies[1].uid])
    assert [row["0020000D"]["Value"][0] for row in empty_rows] == [studies[2].uid]


async def test_the_pages_of_a_search_that_chose_r4_by_format_are_r4_too(tmp_path: Path) -> None:
    # A client follows next as given (fhirpy, fhir-kit-client, Medplum's client): the links dropped _format, so a
    # search that asked for R4 with it got R5 from its second page on.
    write(tmp_path, simple_study(), simple_study(), simple_study())
    wanted = "application/fhir+json;fhirVersion=4.0"
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": f"file://{tmp_path}"}))
    try:
        by_url = await (await client.get("/fhir/ImagingStudy", params={"_format": wanted, "_count": "1"})).json()
        by_body = await (
            await client.post("/fhir/ImagingStudy/_search", data={"_format": wanted, "_count": "1"})
        ).json()
        pages = []
        for first in (by_url, by_body):
            link = next(link["url"] for link in first["link"] if link["relation"] == "next")
            pages.append(await client.get(link.removeprefix(str(client.make_url("")))))
    finally:
        await client.close()
    for page in pages:
        assert page.status == 200
        assert page.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0; charset=utf-8"
