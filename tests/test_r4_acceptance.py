"""What a new R4 user tries first, against a folder of DICOM files (the embedded default's kind of source): searches
by a parameter matched below the study level, alone, as R4 names it."""

from __future__ import annotations

from pathlib import Path

from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.dicomgen import MR_IMAGE, InstanceSpec, SeriesSpec, StudySpec, encode, simple_study


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
    finally:
        await client.close()
    assert r4.status == 200, r4_body
    assert r4.headers["Content-Type"] == "application/fhir+json; fhirVersion=4.0; charset=utf-8"
    assert "system" in r4_body["entry"][0]["resource"]["modality"][0]  # R4's Coding, not R5's CodeableConcept
    assert (xml.status, r3.status, r5_on_r4.status) == (406, 406, 406)
