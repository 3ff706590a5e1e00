"""QIDO-RS through the DICOMweb gateway against a real Orthanc holding patients whose IDs collide (by case, by
wildcards, by issuer): a confined token sees only its patient's rows, the query is checked before the PACS is
asked, and one search has a bounded cost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.errors import InvalidRequest
from bridge.mapping import tags
from bridge.qido.factory import open_source
from bridge.settings import load_settings
from bridge.web.gateway_qido import parse_qido
from bridge.web.observe import redacted
from tests.conftest import orthanc_settings, start_client
from tests.support.colliding_patients import HOSP_B_SYSTEM, NAMED_ISSUER, PATIENTS, Catalog, loaded_catalog
from tests.support.orthanc import OrthancServer
from tests.support.recording_source import RecordingSource
from tests.support.standin_tokens import Verifier, claims

pytestmark = pytest.mark.integration

JSON = {"Accept": "application/dicom+json"}
SMART = {"auth": "smart", "auth_jwks_url": "https://auth.example.org/jwks", "public_url": "https://fhir.test/fhir"}
#: The patients with IDs a PACS matches loosely or a ``*`` pattern takes in: the tokens tried.
TRIED = ("PAT-A", "pat-a", "PAT*A", "PAT?A", "PATA", "PAT A", "ISS-1")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of their own: the other suites hold every study of the shared one against their index."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc-gateway-qido")) as server:
        yield server


@pytest.fixture(scope="module")
def loaded(pacs: OrthancServer) -> Catalog:
    return loaded_catalog(pacs)


def verifier() -> Verifier:
    verifier = Verifier()
    for n, patient_id in enumerate(TRIED):
        verifier.extra[f"patient-{n}"] = claims("launch/patient patient/ImagingStudy.rs", patient=patient_id)
    verifier.extra["clinician"] = claims("openid fhirUser user/ImagingStudy.rs")
    verifier.extra["reader"] = claims("launch/patient patient/ImagingStudy.r", patient="PAT-A")
    return verifier


@pytest.fixture
async def bridge(pacs: OrthancServer, loaded: Catalog) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(pacs, access_log="false", **SMART), verifier=verifier())
    yield client
    await client.close()


def token(patient_id: str) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer patient-{TRIED.index(patient_id)}"}


CLINICIAN = {**JSON, "Authorization": "Bearer clinician"}


def value(row: dict[str, Any], tag: str) -> Any:
    return (row.get(tag) or {}).get("Value", [None])[0]


def owners(rows: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    return {(value(row, tags.STUDY_INSTANCE_UID), value(row, tags.PATIENT_ID)) for row in rows}


async def search(client: TestClient, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    got = await client.get("/dicom-web" + path, headers=headers)
    body = await got.json(content_type=None) if got.status == 200 else await got.text()
    return got.status, body


@pytest.mark.parametrize("patient_id", TRIED)
async def test_a_confined_study_search_returns_its_patients_rows_only(
    bridge: TestClient, loaded: Catalog, patient_id: str
) -> None:
    status, rows = await search(bridge, "/studies", token(patient_id))
    assert status == 200
    expected = {(spec.uid, owner.patient_id) for owner, spec in loaded.studies if owner.patient_id == patient_id}
    assert expected, "the catalog has no study of this patient: nothing was tested"
    assert owners(rows) == expected
    assert {value(row, tags.PATIENT_ID) for row in rows} == {patient_id}


async def test_one_patient_id_from_several_issuers_is_told_apart_by_issuer(
    pacs: OrthancServer, loaded: Catalog
) -> None:
    """With one issuer given a system, a token for ISS-1 stands for HOSP-B's ISS-1 alone (as in FHIR search):
    the same PatientID from the other issuers is someone else, at every level."""
    environ = {"issuer_systems": json.dumps({NAMED_ISSUER: HOSP_B_SYSTEM})}
    client = await start_client(orthanc_settings(pacs, access_log="false", **SMART, **environ), verifier=verifier())
    try:
        status, rows = await search(client, "/studies", token("ISS-1"))
        assert status == 200
        own = [(owner, spec) for owner, spec in loaded.studies if owner.patient_id == "ISS-1"]
        assert {(value(row, tags.STUDY_INSTANCE_UID), value(row, tags.ISSUER_OF_PATIENT_ID)) for row in rows} == {
            (spec.uid, owner.issuer) for owner, spec in own if owner.issuer == NAMED_ISSUER
        }
        for owner, spec in own:
            status, rows = await search(client, f"/studies/{spec.uid}/series", token("ISS-1"))
            assert status == (200 if owner.issuer == NAMED_ISSUER else 404), owner
    finally:
        await client.close()


@pytest.mark.parametrize(("patient_id", "sent"), [("PAT-A", "PAT-A"), ("PAT?A", "PAT*A"), ("PAT A", "PAT*A")])
async def test_a_confined_study_search_asks_the_pacs_for_its_patient_id(
    pacs: OrthancServer, loaded: Catalog, patient_id: str, sent: str
) -> None:
    """Narrowed at the PACS by the grant's PatientID, as the FHIR search sends it (what cannot be sent exactly as
    a ``*`` pattern); the rows then checked exactly."""
    settings = orthanc_settings(pacs, access_log="false", **SMART)
    source = RecordingSource(await open_source(settings))
    client = await start_client(settings, source=source, verifier=verifier())
    try:
        status, rows = await search(client, "/studies?StudyDate=19000101-", token(patient_id))
        assert status == 200
        assert rows
        assert source.searches == [("studies", {"StudyDate": "19000101-", "PatientID": sent})]
    finally:
        await client.close()
        await source.close()


async def test_a_grant_of_several_patients_sees_each_of_them(
    pacs: OrthancServer, loaded: Catalog, tmp_path: Path
) -> None:
    """A backend service whose client policy names three patients: one PACS search per PatientID, every row
    checked, none of the colliders (pat-a, PATA, PAT*A …) in the answer."""
    policy = tmp_path / "clients.json"
    granted = ("PAT-A", "PAT A", "ISS-1")
    policy.write_text(json.dumps({"registry": granted}))
    tokens = verifier()
    tokens.extra["registry"] = claims("system/ImagingStudy.rs", client="registry")
    settings = orthanc_settings(pacs, access_log="false", auth_client_policy=str(policy), **SMART)
    client = await start_client(settings, verifier=tokens)
    try:
        status, rows = await search(client, "/studies", {**JSON, "Authorization": "Bearer registry"})
        assert status == 200
        expected = {(spec.uid, owner.patient_id) for owner, spec in loaded.studies if owner.patient_id in granted}
        assert owners(rows) == expected
    finally:
        await client.close()


async def test_an_unconfined_study_search_returns_every_patient(bridge: TestClient, loaded: Catalog) -> None:
    status, rows = await search(bridge, "/studies", CLINICIAN)
    assert status == 200
    assert owners(rows) == {(spec.uid, owner.patient_id) for owner, spec in loaded.studies}


async def test_a_confined_search_under_its_own_study_lists_its_series_and_instances(
    bridge: TestClient, loaded: Catalog
) -> None:
    owner = next(p for p in PATIENTS if p.patient_id == "PAT*A")
    spec = loaded.of(owner)[0]
    series = spec.series[0]
    status, rows = await search(bridge, f"/studies/{spec.uid}/series", token("PAT*A"))
    assert status == 200
    assert {value(row, tags.SERIES_INSTANCE_UID) for row in rows} == {s.uid for s in spec.series}
    status, rows = await search(bridge, f"/studies/{spec.uid}/series/{series.uid}/instances", token("PAT*A"))
    assert status == 200
    assert {value(row, tags.SOP_INSTANCE_UID) for row in rows} == {i.uid for i in series.instances}
    status, rows = await search(bridge, f"/studies/{spec.uid}/instances", token("PAT*A"))
    assert status == 200
    assert {value(row, tags.SOP_INSTANCE_UID) for row in rows} == {i.uid for s in spec.series for i in s.instances}
    assert all(tags.PATIENT_ID in row for row in rows)
    status, rows = await search(bridge, f"/studies/{spec.uid}/instances?includefield=RetrieveURL", token("PAT*A"))
    assert status == 200
    assert rows
    assert not any("00081190" in row for row in rows)  # the PACS's address, which the token cannot reach


async def test_another_patients_study_is_not_found_under_a_confined_token(bridge: TestClient, loaded: Catalog) -> None:
    """PATA's study, which the PACS's match for PAT*A takes in, is the 404 of a study that does not exist."""
    other = loaded.of(next(p for p in PATIENTS if p.patient_id == "PATA"))[0]
    for path in (f"/studies/{other.uid}/series", f"/studies/{other.uid}/instances"):
        status, _ = await search(bridge, path, token("PAT*A"))
        assert status == 404, path
    status, _ = await search(bridge, f"/studies/{loaded.shared_uid}/series", token("PAT-A"))
    assert status == 404  # one UID under two patients: no one's to list


async def test_root_level_series_and_instances_are_refused_to_a_confined_token(bridge: TestClient) -> None:
    for level in ("series", "instances"):
        got = await bridge.get(f"/dicom-web/{level}", headers=token("PAT-A"))
        assert got.status == 400
        assert "under a study" in await got.text()
        assert (await bridge.get(f"/dicom-web/{level}?limit=1", headers=CLINICIAN)).status == 200


async def test_a_patient_id_the_token_does_not_hold_is_forbidden(bridge: TestClient, loaded: Catalog) -> None:
    for asked in ("PATA", "PAT*", "pat-a", "*"):
        status, _ = await search(bridge, f"/studies?PatientID={asked}", token("PAT*A"))
        assert status == 403, asked
    status, rows = await search(bridge, "/studies?PatientID=PAT-A", token("PAT-A"))
    assert status == 200
    assert {value(row, tags.PATIENT_ID) for row in rows} == {"PAT-A"}
    own = loaded.of(next(p for p in PATIENTS if p.patient_id == "PAT*A"))[0]
    status, _ = await search(bridge, f"/studies/{own.uid}/series?PatientID=PATA", token("PAT*A"))
    assert status == 403


async def test_a_path_that_is_no_uid_is_refused_before_the_pacs(pacs: OrthancServer, loaded: Catalog) -> None:
    settings = orthanc_settings(pacs, access_log="false", **SMART)
    source = RecordingSource(await open_source(settings))
    client = await start_client(settings, source=source, verifier=verifier())
    try:
        for path in ("/studies/1.2.x/series", "/studies/1.2/series/..%2F/instances", "/studies/2.25.1%2F../instances"):
            status, _ = await search(client, path, CLINICIAN)
            assert status == 400, path
    finally:
        await client.close()
        await source.close()
    assert source.searches == []


async def test_a_search_needs_the_search_scope(bridge: TestClient) -> None:
    status, _ = await search(bridge, "/studies", {**JSON, "Authorization": "Bearer reader"})
    assert status == 403
    status, _ = await search(bridge, "/studies", JSON)
    assert status == 401


async def test_matching_keys_narrow_a_confined_search(bridge: TestClient, loaded: Catalog) -> None:
    own = loaded.of(next(p for p in PATIENTS if p.patient_id == "PAT-A"))[0]
    for key in ("StudyInstanceUID", "0020000D"):
        status, rows = await search(bridge, f"/studies?{key}={own.uid}&includefield=StudyDescription", token("PAT-A"))
        assert status == 200
        assert owners(rows) == {(own.uid, "PAT-A")}


@pytest.mark.parametrize(
    "query",
    ["nonsense=1", "PatientsName=X", "00081111.00081150=1", "includefield=all", "includefield=Nope", "limit=-1",
     "limit=2&limit=3", "fuzzymatching=true", "StudyDate=1&StudyDate=2"],
)  # fmt: skip
async def test_a_query_the_gateway_does_not_understand_is_a_400(bridge: TestClient, query: str) -> None:
    status, body = await search(bridge, f"/studies?{query}", CLINICIAN)
    assert status == 400, body


async def test_an_answer_in_dicom_json_only(bridge: TestClient) -> None:
    for accept in ("application/dicom+json", "application/json", "*/*", "text/html, application/*;q=0.5"):
        got = await bridge.get("/dicom-web/studies?limit=1", headers={**CLINICIAN, "Accept": accept})
        assert got.status == 200, accept
    for accept in ('multipart/related; type="application/dicom+xml"', "application/dicom+json;q=0"):
        got = await bridge.get("/dicom-web/studies?limit=1", headers={**CLINICIAN, "Accept": accept})
        assert got.status == 406, accept


async def test_limit_is_capped_at_the_search_row_limit(pacs: OrthancServer, loaded: Catalog) -> None:
    settings = orthanc_settings(pacs, access_log="false", search_max_rows="3", **SMART)
    client = await start_client(settings, verifier=verifier())
    try:
        for query in ("", "?limit=100"):
            got = await client.get("/dicom-web/studies" + query, headers=CLINICIAN)
            assert got.status == 200
            assert len(await got.json(content_type=None)) == 3
            assert got.headers["Warning"].startswith("299 ")
        got = await client.get("/dicom-web/studies?limit=2&offset=1", headers=CLINICIAN)
        assert len(await got.json(content_type=None)) == 2
        assert "Warning" not in got.headers
    finally:
        await client.close()


async def test_a_confined_window_is_taken_from_the_patients_own_rows(bridge: TestClient, loaded: Catalog) -> None:
    """The PACS's match for PAT*A takes in PATA's studies too: offset and limit count PAT*A's rows alone."""
    status, everything = await search(bridge, "/studies", token("PAT*A"))
    assert status == 200
    assert len(everything) == 2
    pages = [await search(bridge, f"/studies?limit=1&offset={offset}", token("PAT*A")) for offset in (0, 1, 2)]
    assert [status for status, _ in pages] == [200, 200, 200]
    assert [owners(rows) for _, rows in pages] == [owners(everything[:1]), owners(everything[1:]), set()]


async def test_a_search_matching_more_rows_than_a_search_may_read_is_a_400(
    pacs: OrthancServer, loaded: Catalog
) -> None:
    """A confined search reads every row its PatientID pattern matches: beyond BRIDGE_SEARCH_MAX_ROWS, it asks the
    client to narrow it rather than ask on."""
    settings = orthanc_settings(pacs, access_log="false", search_max_rows="3", **SMART)
    client = await start_client(settings, verifier=verifier())
    try:
        got = await client.get("/dicom-web/studies", headers=token("PAT*A"))
        assert got.status == 400
        assert "narrow" in await got.text()
    finally:
        await client.close()


async def test_no_match_is_200_with_an_empty_list(bridge: TestClient) -> None:
    got = await bridge.get("/dicom-web/studies?StudyInstanceUID=2.25.404", headers=CLINICIAN)
    assert got.status == 200
    assert got.headers["Content-Type"].startswith("application/dicom+json")
    assert await got.json(content_type=None) == []


async def test_the_host_check_applies_to_dicomweb_routes(pacs: OrthancServer, loaded: Catalog) -> None:
    """Without BRIDGE_PUBLIC_URL only loopback names may be asked for, under /dicom-web as under /fhir."""
    client = await start_client(orthanc_settings(pacs, access_log="false"))
    try:
        spec = loaded.studies[0][1]
        for path in ("/fhir/ImagingStudy", "/dicom-web/studies", f"/dicom-web/studies/{spec.uid}/metadata"):
            got = await client.get(path, headers={"Host": "rebound.example"})
            assert got.status == 421, path
        assert (await client.get("/dicom-web/studies", headers={"Host": "localhost"})).status == 200
    finally:
        await client.close()


async def test_the_rate_limit_applies_to_dicomweb_routes(pacs: OrthancServer, loaded: Catalog) -> None:
    settings = orthanc_settings(pacs, access_log="false", rate_limit="0.001", rate_limit_burst="2")
    client = await start_client(settings)
    try:
        spec = loaded.studies[0][1]
        answers = [await client.get("/dicom-web/studies?limit=1") for _ in range(2)]
        answers.append(await client.get(f"/dicom-web/studies/{spec.uid}/metadata"))
        assert [a.status for a in answers] == [200, 200, 429]
    finally:
        await client.close()


async def test_the_embedded_default_answers_qido_from_its_folder() -> None:
    client = await start_client(load_settings({}))
    try:
        status, rows = await search(client, "/studies", JSON)
        assert status == 200
        assert rows
        assert all(value(row, tags.STUDY_INSTANCE_UID) for row in rows)
        study = value(rows[0], tags.STUDY_INSTANCE_UID)
        status, series = await search(client, f"/studies/{study}/series", JSON)
        assert status == 200
        assert series
    finally:
        await client.close()


def test_the_access_log_keeps_patient_ids_of_a_qido_search_out() -> None:
    assert redacted("/dicom-web/studies?PatientID=PAT-A&00100010=DOE&limit=1") == "/dicom-web/studies?***&***&***"


@pytest.mark.parametrize(
    ("pairs", "filters", "fields"),
    [
        ([("PatientName", "DOE*")], {"PatientName": "DOE*"}, ()),
        ([("00100010", "DOE*")], {"PatientName": "DOE*"}, ()),
        ([("includefield", "StudyDescription,00080060"), ("includefield", "0008103e")], {},
         ("00081030", "00080060", "0008103E")),
        ([("StudyDescription", "")], {}, ("00081030",)),
    ],
)  # fmt: skip
def test_parse_qido(pairs: list[tuple[str, str]], filters: dict[str, str], fields: tuple[str, ...]) -> None:
    query = parse_qido(pairs)
    assert (query.filters, query.fields) == (filters, fields)


def test_parse_qido_refuses_control_characters() -> None:
    with pytest.raises(InvalidRequest):
        parse_qido([("PatientID", "A\x00")])
