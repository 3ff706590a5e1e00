"""Patients collide in real archives: by invisible characters, by issuer. Identity is compared on raw values and
per row, so no study crosses a patient boundary, whether read, searched or cached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.mapping.dicomjson import DicomJson
from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.fhircheck import validate

CT = "1.2.840.10008.5.1.4.1.1.2"
UID = "2.25.900"
PATIENT_ID, ISSUER, PATIENT_NAME = "00100020", "00100021", "00100010"


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def owner(patient_id: str, issuer: str | None) -> DicomJson:
    row = {PATIENT_ID: el("LO", patient_id)}
    if issuer is not None:
        row[ISSUER] = el("LO", issuer)
    return row


def add_part(
    source: MemoryQidoSource,
    patient_id: str,
    series_uid: str,
    *,
    issuer: str | None = None,
    name: str = "Doe^Jane",
    study_row: bool = True,
    lower_issuer: bool = True,
) -> None:
    """One patient's part of study ``UID``: a study row (unless the PACS merged it into another's), one series
    with one instance. ``lower_issuer`` False: the series and instance rows leave IssuerOfPatientID out."""
    if study_row:
        source.studies.append({
            "0020000D": el("UI", UID), "00080061": el("CS", "CT"), PATIENT_NAME: el("PN", {"Alphabetic": name}),
            **owner(patient_id, issuer),
        })  # fmt: skip
    lower = owner(patient_id, issuer if lower_issuer else None)
    source.series.setdefault(UID, []).append({"0020000E": el("UI", series_uid), "00080060": el("CS", "CT"), **lower})
    source.instances[(UID, series_uid)] = [{"00080018": el("UI", f"{series_uid}.1"), "00080016": el("UI", CT), **lower}]


@pytest.fixture
def source() -> MemoryQidoSource:
    return MemoryQidoSource()


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    settings = load_settings({
        "BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
        "BRIDGE_ISSUER_SYSTEMS": '{"HOSP-A": "urn:oid:1.2.3.4", "HOSP-B": "urn:oid:5.6.7.8"}',
    })  # fmt: skip
    client = await start_client(settings, source)
    yield client
    await client.close()


async def get(client: TestClient, path: str, status: int = 200) -> dict[str, Any]:
    response = await client.get(path)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    validate(body)
    return body


def series_uids(resource: dict[str, Any]) -> list[str]:
    return [series["uid"] for series in resource.get("series", [])]


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


TWINS = ["P1\u00a0", "\tP1", "P\x0b1"]


@pytest.mark.parametrize("twin", TWINS)
async def test_read_of_a_uid_held_by_a_patient_and_an_invisible_twin_is_a_conflict(
    client: TestClient, source: MemoryQidoSource, twin: str
) -> None:
    add_part(source, "P1", "2.25.900.1")
    add_part(source, twin, "2.25.900.2", name="Other^Person")
    body = await get(client, f"/fhir/ImagingStudy/{UID}", 409)
    assert body["resourceType"] == "OperationOutcome"
    # And it stays refused: a 409 is never turned into a cached 200.
    await get(client, f"/fhir/ImagingStudy/{UID}", 409)


@pytest.mark.parametrize("twin", TWINS)
async def test_patient_search_returns_only_that_patients_part_of_a_shared_uid(
    client: TestClient, source: MemoryQidoSource, twin: str
) -> None:
    add_part(source, "P1", "2.25.900.1")
    add_part(source, twin, "2.25.900.2", name="Other^Person")
    found = matches(await get(client, "/fhir/ImagingStudy?patient=P1"))
    assert len(found) == 1
    assert series_uids(found[0]) == ["2.25.900.1"]
    assert found[0]["subject"]["identifier"]["value"] == "P1"
    assert found[0]["subject"]["display"] == "Jane Doe"


@pytest.mark.parametrize("twin", ["P1\u00a0", "\tP1"])
async def test_a_study_of_an_invisible_twin_is_labelled_with_its_raw_patient_id(
    client: TestClient, source: MemoryQidoSource, twin: str
) -> None:
    add_part(source, twin, "2.25.900.2")
    resource = await get(client, f"/fhir/ImagingStudy/{UID}")
    assert resource["subject"]["identifier"]["value"] == twin
    assert matches(await get(client, "/fhir/ImagingStudy?patient=P1")) == []


async def test_a_patient_id_fhir_cannot_carry_is_written_as_absent_not_cleaned(
    client: TestClient, source: MemoryQidoSource
) -> None:
    add_part(source, "P\x0b1", "2.25.900.2")
    resource = await get(client, f"/fhir/ImagingStudy/{UID}")
    assert "value" not in resource["subject"]["identifier"]
    assert resource["subject"]["identifier"]["_value"]["extension"][0]["valueCode"] == "unsupported"
    assert matches(await get(client, "/fhir/ImagingStudy?patient=P1")) == []


async def test_read_of_one_patient_id_from_two_issuers_in_two_study_rows_is_a_conflict(
    client: TestClient, source: MemoryQidoSource
) -> None:
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-B")
    await get(client, f"/fhir/ImagingStudy/{UID}", 409)


async def test_read_of_one_patient_id_from_two_issuers_merged_into_one_study_row_is_a_conflict(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # Orthanc keys patients by PatientID alone: both hospitals' series hang under one study row.
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-B", study_row=False)
    body = await get(client, f"/fhir/ImagingStudy/{UID}", 409)
    assert "one PatientID from two issuers" in body["issue"][0]["diagnostics"]


async def test_issuer_pinned_search_finds_its_own_part_of_a_shared_uid(
    client: TestClient, source: MemoryQidoSource
) -> None:
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-B")
    for system, series in (("urn:oid:1.2.3.4", "2.25.900.1"), ("urn:oid:5.6.7.8", "2.25.900.2")):
        found = matches(await get(client, f"/fhir/ImagingStudy?patient:identifier={system}|P1"))
        assert [series_uids(r) for r in found] == [[series]]
        assert found[0]["subject"]["identifier"]["system"] == system


async def test_series_and_instances_without_an_issuer_belong_to_the_study_rows_patient(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # Some PACSes return IssuerOfPatientID at the study level only.
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A", lower_issuer=False)
    resource = await get(client, f"/fhir/ImagingStudy/{UID}")
    assert series_uids(resource) == ["2.25.900.1"]
    assert resource["numberOfInstances"] == 1


async def test_rows_without_an_issuer_are_not_attributed_when_the_patient_id_has_two(
    client: TestClient, source: MemoryQidoSource
) -> None:
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A", lower_issuer=False)
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-B", lower_issuer=False)
    bundle = await get(client, "/fhir/ImagingStudy?patient:identifier=urn:oid:1.2.3.4|P1")
    assert matches(bundle) == []  # neither part can be told apart: refused, rather than shown empty or mixed
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert "does not say which of the patients" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("system", ["urn:oid:1.2.3.4", "urn:oid:5.6.7.8"])
async def test_patient_search_reports_a_study_the_pacs_keeps_for_two_issuers_as_one(
    client: TestClient, source: MemoryQidoSource, system: str
) -> None:
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-B", study_row=False)
    bundle = await get(client, f"/fhir/ImagingStudy?patient:identifier={system}|P1")
    assert matches(bundle) == []  # the study row names HOSP-A alone: neither hospital's search may trust it
    outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    assert "from two issuers as one study" in outcome["issue"][0]["diagnostics"]


async def test_rows_with_an_empty_patient_id_or_issuer_belong_to_the_study_rows_patient(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # Some PACSes return an attribute asked for with includefield empty where they do not index it.
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    empty = {PATIENT_ID: {"vr": "LO"}, ISSUER: {"vr": "LO"}}
    source.series[UID][0].update(empty)
    source.instances[(UID, "2.25.900.1")][0].update(empty)
    resource = await get(client, f"/fhir/ImagingStudy/{UID}")
    assert resource["numberOfInstances"] == 1
    found = matches(await get(client, "/fhir/ImagingStudy?patient=P1"))
    assert [r["numberOfInstances"] for r in found] == [1]


async def test_a_study_whose_series_alone_give_an_issuer_is_one_patients(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # Files of one study differ: Orthanc built the study row from a file without IssuerOfPatientID.
    add_part(source, "P1", "2.25.900.1", issuer=None)
    add_part(source, "P1", "2.25.900.2", issuer="HOSP-A", study_row=False)
    resource = await get(client, f"/fhir/ImagingStudy/{UID}")
    assert series_uids(resource) == ["2.25.900.1", "2.25.900.2"]


async def test_an_instance_of_an_invisible_twin_inside_a_study_refuses_it_to_reads_and_searches(
    client: TestClient, source: MemoryQidoSource
) -> None:
    add_part(source, "P1", "2.25.900.1")
    source.instances[(UID, "2.25.900.1")].append(
        {"00080018": el("UI", "2.25.900.1.2"), "00080016": el("UI", CT), PATIENT_ID: el("LO", "P1\u00a0")}
    )
    await get(client, f"/fhir/ImagingStudy/{UID}", 409)
    for query in ("patient=P1", "_id=2.25.900"):
        bundle = await get(client, f"/fhir/ImagingStudy?{query}")
        assert matches(bundle) == []  # not shown with one of its two instances, as if complete
        outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
        assert "different patient" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("patient_id", "issuer"),
    [
        pytest.param(None, None, id="another-patient-id"),
        pytest.param("P1", "HOSP-B", id="the-same-patient-id-object-from-another-issuer"),
    ],
)
async def test_rows_sharing_their_owner_objects_are_checked_again_when_one_differs(
    client: TestClient, source: MemoryQidoSource, patient_id: str | None, issuer: str | None
) -> None:
    # The HTTP source hands a series' rows the very same PatientID and IssuerOfPatientID objects (RowTrimmer), and
    # the check is answered once for them: a row holding another object, even just the issuer, is checked anew.
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A")
    rows = source.instances[(UID, "2.25.900.1")]
    shared = rows[0]
    for n in range(2, 5):
        rows.append({**shared, "00080018": el("UI", f"2.25.900.1.{n}")})  # the same owner objects
    odd = {**shared, "00080018": el("UI", "2.25.900.1.5")}
    if patient_id is None:
        odd[PATIENT_ID] = el("LO", "P2")
    else:
        odd[ISSUER] = el("LO", issuer)
    rows.insert(3, odd)

    body = await get(client, f"/fhir/ImagingStudy/{UID}", 409)

    assert "different patient" in body["issue"][0]["diagnostics"]


async def test_a_series_criterion_matches_series_rows_that_give_no_issuer(
    client: TestClient, source: MemoryQidoSource
) -> None:
    # Some PACSes return IssuerOfPatientID at the study level only: the series row says nothing against it.
    add_part(source, "P1", "2.25.900.1", issuer="HOSP-A", lower_issuer=False)
    found = matches(await get(client, "/fhir/ImagingStudy?series=2.25.900.1&_elements=identifier"))
    assert [r["id"] for r in found] == [UID]
