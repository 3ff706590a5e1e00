"""Every study the PACS holds, read through the bridge and held against the PACS's own index.

Orthanc is loaded with pydicom's real-world sample files (compressed, odd, old) on top of the generated catalog,
and its REST API, not QIDO-RS, is the reference: a different code path inside the PACS than the one we query.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.qido.folder import pydicom_samples
from tests.support.dicomgen import StudySpec
from tests.support.fhircheck import validate
from tests.support.orthanc import OrthancServer


@pytest.fixture(scope="session")
def samples_loaded(orthanc: OrthancServer, studies: dict[str, StudySpec]) -> int:
    """pydicom's sample files that Orthanc accepts (some are deliberately broken and refused)."""
    accepted = 0
    for path in sorted(pydicom_samples().iterdir()):
        if path.is_file():
            status, _, _ = orthanc.request("POST", "/instances", path.read_bytes())
            accepted += status == 200
    return accepted


def is_date(value: str) -> bool:
    try:
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def orthanc_index(orthanc: OrthancServer) -> dict[str, list[dict[str, Any]]]:
    """StudyInstanceUID -> Orthanc's studies with that UID (one per patient), with series and instances."""
    index: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for study in orthanc.get_json("/studies?expand"):
        series = orthanc.get_json(f"/studies/{study['ID']}/series")
        instances = orthanc.get_json(f"/studies/{study['ID']}/instances")
        for instance in instances:
            _, _, body = orthanc.request("GET", f"/instances/{instance['ID']}/metadata/SopClassUid")
            instance["SopClassUid"] = body.decode().strip()  # plain text, not JSON
        study["series"] = series
        study["instances"] = instances
        index[study["MainDicomTags"]["StudyInstanceUID"]].append(study)
    return index


def patients(references: list[dict[str, Any]]) -> set[str]:
    """Distinct PatientIDs by DICOM's rules: trailing padding is not significant (Orthanc treats it as such)."""
    return {r["PatientMainDicomTags"].get("PatientID", "").rstrip(" ") for r in references}


def merged(references: list[dict[str, Any]]) -> dict[str, Any]:
    """Orthanc's entries for one study of one patient, as one (Orthanc splits on padding differences)."""
    first = dict(references[0])
    first["series"] = list(
        {s["MainDicomTags"]["SeriesInstanceUID"]: s for r in references for s in r["series"]}.values()
    )
    series_ids = {s["ID"]: s["MainDicomTags"]["SeriesInstanceUID"] for r in references for s in r["series"]}
    first["instances"] = list(
        {i["MainDicomTags"]["SOPInstanceUID"]: i for r in references for i in r["instances"]}.values()
    )
    first["series_uid_of"] = series_ids
    return first


def differences(resource: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What the resource says that the PACS's index does not."""
    problems = []
    tags = reference["MainDicomTags"]
    expected_series = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in reference["series"]}
    got_series = {s["uid"]: s for s in resource.get("series", [])}
    if set(got_series) != set(expected_series):
        problems.append(f"series {sorted(got_series)} != {sorted(expected_series)}")
    by_series: dict[str, dict[str, str]] = defaultdict(dict)
    for instance in reference["instances"]:
        series_uid = reference["series_uid_of"][instance["ParentSeries"]]
        by_series[series_uid][instance["MainDicomTags"]["SOPInstanceUID"]] = instance["SopClassUid"]
    for uid, series in got_series.items():
        modality = expected_series.get(uid, {}).get("MainDicomTags", {}).get("Modality") or "OT"
        if series["modality"]["coding"][0]["code"] != modality.upper():
            problems.append(f"series {uid} modality {series['modality']} != {modality}")
        got = {i["uid"]: i["sopClass"]["code"].removeprefix("urn:oid:") for i in series.get("instance", [])}
        if got != by_series[uid]:
            problems.append(f"series {uid} instances/SOP classes {got} != {by_series[uid]}")
        if series["numberOfInstances"] != len(by_series[uid]):
            problems.append(f"series {uid} numberOfInstances {series['numberOfInstances']}")
    if resource["numberOfInstances"] != len(reference["instances"]):
        problems.append(f"numberOfInstances {resource['numberOfInstances']} != {len(reference['instances'])}")
    if resource["numberOfSeries"] != len(reference["series"]):
        problems.append(f"numberOfSeries {resource['numberOfSeries']} != {len(reference['series'])}")
    accession = tags.get("AccessionNumber", "").strip()
    got_accession = resource.get("basedOn", [{}])[0].get("identifier", {}).get("value")
    if (accession or None) != got_accession:
        problems.append(f"accession {got_accession!r} != {accession!r}")
    date = tags.get("StudyDate", "")
    if is_date(date) and not resource.get("started", "").startswith(f"{date[:4]}-{date[4:6]}-{date[6:]}"):
        problems.append(f"started {resource.get('started')!r} does not match StudyDate {date}")
    patient = reference["PatientMainDicomTags"].get("PatientID", "").strip(" ")
    if patient and resource["subject"].get("identifier", {}).get("value") != patient:
        problems.append(f"subject {resource['subject']} != PatientID {patient!r}")
    return problems


async def test_every_study_in_the_pacs_reads_back_as_its_index_says(
    bridge: TestClient, orthanc: OrthancServer, samples_loaded: int
) -> None:
    assert samples_loaded > 40  # the sample files are really there
    index = orthanc_index(orthanc)
    problems: dict[str, list[str]] = {}
    for study_uid, references in sorted(index.items()):
        response = await bridge.get(f"/fhir/ImagingStudy/{study_uid}")
        body = await response.json()
        validate(body)
        if len(patients(references)) > 1:
            # One UID under several patients: refused, never merged.
            if response.status != 409:
                problems[study_uid] = [f"HTTP {response.status} for a UID under {len(references)} patients"]
            continue
        if response.status != 200:
            problems[study_uid] = [f"HTTP {response.status}: {body}"]
        elif found := differences(body, merged(references)):
            problems[study_uid] = found
    assert not problems, problems
    assert len(index) > 30
