"""Patients chosen to collide, loaded into the real Orthanc: by an invisible character, by issuer, by case. No
study crosses a patient boundary, read or searched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import orthanc_settings, start_client
from tests.support.dicomgen import StudySpec, encode, new_uid, simple_study
from tests.support.fhircheck import validate
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.integration

#: Pairs of patients under one StudyInstanceUID each: (name, first patient, second patient), a patient being
#: (PatientID, IssuerOfPatientID).
PAIRS = {
    "no-break space": (("ID-NBSP", None), ("ID-NBSP\u00a0", None)),
    "vertical tab": (("ID-VT1", None), ("ID-VT\x0b1", None)),
    "case": (("id-case", None), ("ID-CASE", None)),
    "issuer": (("ID-ISS", "1.2.3.4"), ("ID-ISS", "5.6.7.8")),
}


@pytest.fixture(scope="module")
def colliding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of their own: the other suites hold every study of the shared one against its index."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc-colliding")) as server:
        yield server


@pytest.fixture(scope="module")
def pairs(colliding: OrthancServer) -> dict[str, tuple[StudySpec, StudySpec]]:
    loaded = {}
    for name, ((first_id, first_issuer), (second_id, second_issuer)) in PAIRS.items():
        study_uid = new_uid()
        first = simple_study(uid=study_uid, patient_id=first_id, issuer=first_issuer, patient_name="First^One")
        second = simple_study(uid=study_uid, patient_id=second_id, issuer=second_issuer, patient_name="Second^Two")
        for spec in (first, second):
            colliding.upload_many(encode(spec))
        loaded[name] = (first, second)
    return loaded


@pytest.fixture
async def client(colliding: OrthancServer) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(colliding))
    yield client
    await client.close()


async def get(client: TestClient, path: str, status: int) -> dict[str, Any]:
    response = await client.get(path)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    validate(body)
    return body


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("name", PAIRS)
async def test_a_uid_under_two_colliding_patients_reads_as_a_conflict(
    client: TestClient, pairs: dict[str, tuple[StudySpec, StudySpec]], name: str
) -> None:
    first, _ = pairs[name]
    body = await get(client, f"/fhir/ImagingStudy/{first.uid}", 409)
    assert body["issue"][0]["code"] == "multiple-matches"


@pytest.mark.parametrize("name", ["no-break space", "vertical tab", "case"])
async def test_a_patient_search_gets_only_that_patients_part(
    client: TestClient, pairs: dict[str, tuple[StudySpec, StudySpec]], name: str
) -> None:
    first, _ = pairs[name]
    found = matches(await get(client, f"/fhir/ImagingStudy?patient={first.patient_id}", 200))
    assert [r["id"] for r in found] == [first.uid]
    assert {s["uid"] for s in found[0]["series"]} == {s.uid for s in first.series}
    assert found[0]["subject"]["identifier"]["value"] == first.patient_id
    assert found[0]["subject"]["display"] == "One First"


@pytest.mark.parametrize("system", ["urn:oid:1.2.3.4", "urn:oid:5.6.7.8"])
async def test_one_patient_id_from_two_issuers_in_one_orthanc_study_is_refused_to_either(
    client: TestClient, pairs: dict[str, tuple[StudySpec, StudySpec]], system: str
) -> None:
    first, _ = pairs["issuer"]
    bundle = await get(client, f"/fhir/ImagingStudy?patient:identifier={system}|ID-ISS", 200)
    assert matches(bundle) == []
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert first.uid in outcome["issue"][0]["diagnostics"]
