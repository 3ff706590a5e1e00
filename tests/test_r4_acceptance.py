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
