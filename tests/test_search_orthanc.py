"""FHIR search against a real Orthanc: every search's exact set of studies, across all pages, held against what
was loaded (``tests/support/search_catalog.py``), and every Bundle validated (R5, ist-1..ist-7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from fhirpy import AsyncFHIRClient
from fhirpy.base.searchset import Raw

from bridge.datatypes import is_uid
from tests.conftest import orthanc_settings, start_client
from tests.support import search_catalog
from tests.support.dicomgen import MR_IMAGE, StudySpec, encode
from tests.support.fhircheck import validate
from tests.support.orthanc import OrthancServer
from tests.support.search_catalog import (
    DATES_PATIENT,
    KINDS_PATIENT,
    ODD_DATES_PATIENT,
    ODD_PATIENT,
    PAGING_PATIENT,
    PRIVATE_SOP_CLASS,
    Key,
    SearchCatalog,
    key,
    started_matches,
)

pytestmark = pytest.mark.integration

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203|ACSN"
Params = list[tuple[str, str]]


@pytest.fixture(scope="session")
def search_studies(orthanc: OrthancServer, studies: dict[str, StudySpec]) -> SearchCatalog:
    """The search catalog, uploaded once, beside the read-path catalog in the same Orthanc."""
    cat = search_catalog.build()
    orthanc.upload_many(data for spec in cat.all() for data in encode(spec))
    return cat


@pytest.fixture
async def client(orthanc: OrthancServer, search_studies: SearchCatalog) -> AsyncIterator[TestClient]:
    client = await start_client(orthanc_settings(orthanc))
    yield client
    await client.close()


# ---- helpers ----


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle.get("link", []) if item["relation"] == relation), None)


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def resource_key(resource: dict[str, Any]) -> Key:
    return (resource["id"], resource["subject"].get("identifier", {}).get("value"))


async def get_bundle(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET a link exactly as the bridge wrote it; the answer must be a valid searchset."""
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/fhir+json"
        bundle: dict[str, Any] = await response.json(content_type=None)
    check_bundle(bundle)
    return bundle


def check_bundle(bundle: dict[str, Any]) -> None:
    validate(bundle)
    assert bundle["type"] == "searchset"
    for entry in bundle.get("entry", []):
        assert entry["fullUrl"]
        if entry["search"]["mode"] != "outcome":
            resource = entry["resource"]
            assert entry["fullUrl"].endswith(f"/{resource['resourceType']}/{resource['id']}")


async def first_page(client: TestClient, params: Params, **kwargs: Any) -> dict[str, Any]:
    response = await client.get("/fhir/ImagingStudy", params=params, **kwargs)
    assert response.status == 200, await response.text()
    bundle: dict[str, Any] = await response.json(content_type=None)
    check_bundle(bundle)
    return bundle


async def search_all(client: TestClient, params: Params) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every matched resource across all pages (following ``next`` as given), and the Bundles."""
    bundles = [await first_page(client, params)]
    async with aiohttp.ClientSession() as session:
        while (url := link(bundles[-1], "next")) is not None:
            assert len(bundles) < 50, "runaway paging"
            bundles.append(await get_bundle(session, url))
    found = [resource for bundle in bundles for resource in matches(bundle)]
    keys = [resource_key(r) for r in found]
    assert len(keys) == len(set(keys)), "a study was returned twice"
    assert all(bundle["total"] == len(found) for bundle in bundles)
    return found, bundles


async def found_keys(client: TestClient, params: Params) -> set[Key]:
    found, _ = await search_all(client, params)
    return {resource_key(r) for r in found}


def resolve(cat: SearchCatalog, names: list[str]) -> set[Key]:
    """``group.name`` -> the study's key (``twins.0`` indexes the pair)."""
    keys = set()
    for name in names:
        group, _, item = name.partition(".")
        specs = getattr(cat, group)
        spec = specs[int(item)] if isinstance(specs, tuple | list) else specs[item]
        keys.add(key(spec))
    return keys


def fill(cat: SearchCatalog, params: Params, **extra: str) -> Params:
    """Parameter templates: ``{ids[acc1].uid}``, ``{kinds[ct_mr].series[1].uid}``, ``{endpoint}``."""
    fields = {name: getattr(cat, name) for name in ("ids", "patients", "twins", "dates", "kinds")}
    return [(name, value.format(**fields, **extra)) for name, value in params]


async def endpoint_id(client: TestClient, cat: SearchCatalog) -> str:
    study = await (await client.get(f"/fhir/ImagingStudy/{cat.kinds['ct_chest'].uid}")).json()
    reference: str = study["endpoint"][0]["reference"]
    assert reference.startswith("Endpoint/")
    return reference.removeprefix("Endpoint/")


# ---- identifiers, patients, kinds: (parameters, the studies expected) ----

IDENTIFIER_CASES = {
    "_id": ([("_id", "{ids[acc1].uid}")], ["ids.acc1"]),
    "_id OR": ([("_id", "{ids[acc1].uid},{ids[no_acc].uid}")], ["ids.acc1", "ids.no_acc"]),
    "_id unknown": ([("_id", "1.2.3.999999.1")], []),
    "dicom uid": ([("identifier", "urn:dicom:uid|urn:oid:{ids[acc1].uid}")], ["ids.acc1"]),
    "bare urn:oid": ([("identifier", "urn:oid:{ids[no_acc].uid}")], ["ids.no_acc"]),
    "accession": ([("identifier", "QSX-ACC-1")], ["ids.acc1"]),
    "accession other case": ([("identifier", "qsx-acc-1")], ["ids.acc1_lower"]),
    "accession no system": ([("identifier", "|QSX-ACC-1")], ["ids.acc1"]),
    "accession odd chars": ([("identifier", "QSX ACC/ö 2")], ["ids.acc_odd"]),
    "accession wrong system": ([("identifier", "urn:dicom:uid|QSX-ACC-1")], []),
    "of-type ACSN": ([("identifier:of-type", f"{ACSN}|QSX-ACC-1")], ["ids.acc1"]),
    "of-type other type": ([("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|QSX-ACC-1")], []),
    "OR uid and accession": (
        [("identifier", "urn:oid:{ids[acc1].uid},QSX ACC/ö 2")], ["ids.acc1", "ids.acc_odd"]
    ),
    "OR two dicom uids": (
        [("identifier", "urn:dicom:uid|urn:oid:{ids[acc1].uid},urn:dicom:uid|urn:oid:{ids[no_acc].uid}")],
        ["ids.acc1", "ids.no_acc"],
    ),
    "AND identifier and patient": ([("identifier", "QSX-ACC-1"), ("patient", "QSX-CASE")], []),
    "based-on:identifier": ([("based-on:identifier", "QSX-ACC-1")], ["ids.acc1"]),
    "based-on:identifier odd": ([("based-on:identifier", "QSX ACC/ö 2")], ["ids.acc_odd"]),
}  # fmt: skip

CASE = ["patients.case_upper", "patients.case_upper_2"]
ODD = ["patients.odd", "patients.odd_twice"]
PATIENT_CASES = {
    "Patient/id": ([("patient", "Patient/QSX-CASE")], CASE),
    "bare id": ([("patient", "QSX-CASE")], CASE),
    "lower-case twin": ([("patient", "Patient/qsx-case")], ["patients.case_lower"]),
    "subject": ([("subject", "Patient/QSX-CASE")], CASE),
    "OR of the case twins": ([("patient", "Patient/QSX-CASE,Patient/qsx-case")], [*CASE, "patients.case_lower"]),
    "not a Patient": ([("patient", "Group/QSX-CASE")], []),
    ":identifier no system": ([("patient:identifier", "|QSX-CASE")], CASE),
    ":identifier any system": ([("patient:identifier", "qsx-case")], ["patients.case_lower"]),
    ":identifier other system": ([("patient:identifier", "http://example.org/mrn|QSX-CASE")], []),
    "subject:identifier": ([("subject:identifier", "QSX-CASE")], CASE),
    "chain": ([("patient.identifier", "QSX-CASE")], CASE),
    "odd :identifier": ([("patient:identifier", ODD_PATIENT)], ODD),
    "odd :identifier no system": ([("patient:identifier", f"|{ODD_PATIENT}")], ODD),
    "odd chain": ([("patient.identifier", ODD_PATIENT)], ODD),
    "odd upper-case twin": ([("patient:identifier", "QSX 01/Ä")], ["patients.decoy_upper"]),
    "odd dash decoy": ([("patient.identifier", "QSX-01/ä")], ["patients.decoy_dash"]),
    "odd prefix only": ([("patient:identifier", "QSX 01/")], []),
    "odd and started": ([("patient:identifier", ODD_PATIENT), ("started", "2023")], ["patients.odd_twice"]),
}

KINDS_CASES = {
    "modality code": ([("modality", "CT")], ["kinds.ct_chest", "kinds.ct_mr"]),
    "modality system|code": ([("modality", f"{DCM}|MR")], ["kinds.mr_knee", "kinds.ct_mr"]),
    "modality OR": ([("modality", "CT,PT")], ["kinds.ct_chest", "kinds.ct_mr", "kinds.pt"]),
    "modality AND": ([("modality", "CT"), ("modality", "MR")], ["kinds.ct_mr"]),
    "modality other system": ([("modality", "http://example.org/modality|CT")], []),
    "modality lower case": ([("modality", "ct")], []),
    "body-site chest": ([("body-site", "816094009")], ["kinds.ct_chest", "kinds.ct_mr"]),
    "body-site system|code": ([("body-site", "http://snomed.info/sct|72696002")], ["kinds.mr_knee"]),
    "body-site AND modality": ([("body-site", "816094009"), ("modality", "MR")], ["kinds.ct_mr"]),
    "dicom-class AND modality": ([("dicom-class", MR_IMAGE), ("modality", "CT")], ["kinds.ct_mr"]),
    "dicom-class urn:oid": ([("dicom-class", f"urn:oid:{MR_IMAGE}")], ["kinds.mr_knee", "kinds.ct_mr"]),
    "dicom-class bare": ([("dicom-class", MR_IMAGE)], ["kinds.mr_knee", "kinds.ct_mr"]),
    "dicom-class OR": (
        [("dicom-class", f"{PRIVATE_SOP_CLASS},urn:oid:{MR_IMAGE}")],
        ["kinds.private_class", "kinds.mr_knee", "kinds.ct_mr"],
    ),
    "status": ([("status", "available")], ["kinds.ct_chest", "kinds.mr_knee", "kinds.ct_mr", "kinds.pt",
                                            "kinds.private_class"]),
    "status system|code": ([("status", "http://hl7.org/fhir/imagingstudy-status|available")],
                           ["kinds.ct_chest", "kinds.mr_knee", "kinds.ct_mr", "kinds.pt", "kinds.private_class"]),
    "status cancelled": ([("status", "cancelled")], []),
    "endpoint": ([("endpoint", "Endpoint/{endpoint}")], ["kinds.ct_chest", "kinds.mr_knee", "kinds.ct_mr",
                                                          "kinds.pt", "kinds.private_class"]),
    "endpoint other": ([("endpoint", "Endpoint/not-ours")], []),
}  # fmt: skip

UNSCOPED_CASES = {
    "series": ([("series", "{kinds[ct_mr].series[1].uid}")], ["kinds.ct_mr"]),
    "series OR": ([("series", "{kinds[ct_chest].series[0].uid},{kinds[pt].series[0].uid}")],
                  ["kinds.ct_chest", "kinds.pt"]),
    "instance": ([("instance", "{kinds[private_class].series[0].instances[1].uid}")], ["kinds.private_class"]),
    "instance AND series of another study": (
        [("instance", "{kinds[private_class].series[0].instances[1].uid}"), ("series", "{kinds[pt].series[0].uid}")],
        [],
    ),
    "instance AND series of its study": (
        [("instance", "{kinds[ct_mr].series[1].instances[0].uid}"), ("series", "{kinds[ct_mr].series[1].uid}")],
        ["kinds.ct_mr"],
    ),
    "dicom-class private, unscoped": ([("dicom-class", f"urn:oid:{PRIVATE_SOP_CLASS}")], ["kinds.private_class"]),
    "series AND modality it lacks": ([("series", "{kinds[ct_chest].series[0].uid}"), ("modality", "MR")], []),
    "series AND modality it has": ([("series", "{kinds[ct_mr].series[0].uid}"), ("modality", "MR")], ["kinds.ct_mr"]),
}  # fmt: skip


def cases(table: dict[str, tuple[Params, list[str]]]) -> list[Any]:
    return [pytest.param(*case, id=name) for name, case in table.items()]


@pytest.mark.parametrize(("params", "expected"), cases(IDENTIFIER_CASES))
async def test_identifier_search(
    client: TestClient, search_studies: SearchCatalog, params: Params, expected: list[str]
) -> None:
    assert await found_keys(client, fill(search_studies, params)) == resolve(search_studies, expected)


@pytest.mark.parametrize(("params", "expected"), cases(PATIENT_CASES))
async def test_patient_search(
    client: TestClient, search_studies: SearchCatalog, params: Params, expected: list[str]
) -> None:
    """Orthanc matches PatientID case-insensitively and the bridge widens unsafe characters to wildcards:
    the decoys come back from the PACS, and must not come back from the bridge."""
    assert await found_keys(client, params) == resolve(search_studies, expected)


async def test_an_absolute_patient_reference_counts_only_on_this_server(
    client: TestClient, search_studies: SearchCatalog
) -> None:
    own = str(client.make_url("/fhir/Patient/QSX-CASE"))
    assert await found_keys(client, [("patient", own)]) == resolve(search_studies, CASE)
    foreign = await client.get(
        "/fhir/ImagingStudy", params={"patient": "https://ehr.example.org/fhir/Patient/QSX-CASE"}
    )
    assert foreign.status == 400
    validate(await foreign.json(content_type=None))


@pytest.mark.parametrize(("params", "expected"), cases(KINDS_CASES))
async def test_kind_search(
    client: TestClient, search_studies: SearchCatalog, params: Params, expected: list[str]
) -> None:
    endpoint = await endpoint_id(client, search_studies)
    scoped = [("patient", KINDS_PATIENT), *fill(search_studies, params, endpoint=endpoint)]
    assert await found_keys(client, scoped) == resolve(search_studies, expected)


@pytest.mark.parametrize(("params", "expected"), cases(UNSCOPED_CASES))
async def test_unscoped_uid_search(
    client: TestClient, search_studies: SearchCatalog, params: Params, expected: list[str]
) -> None:
    assert await found_keys(client, fill(search_studies, params)) == resolve(search_studies, expected)


async def test_matched_resources_are_complete(client: TestClient, search_studies: SearchCatalog) -> None:
    """A search result is the same complete resource as a read: every series and instance."""
    found, _ = await search_all(client, [("patient", KINDS_PATIENT)])
    by_uid = {spec.uid: spec for spec in search_studies.kinds.values()}
    assert {r["id"] for r in found} == set(by_uid)
    for resource in found:
        assert_parts(resource, by_uid[resource["id"]])


def assert_parts(resource: dict[str, Any], spec: StudySpec) -> None:
    assert resource["numberOfSeries"] == len(spec.series)
    assert resource["numberOfInstances"] == spec.instance_count
    assert {s["uid"] for s in resource["series"]} == {s.uid for s in spec.series}
    assert {i["uid"] for s in resource["series"] for i in s["instance"]} == {
        i.uid for s in spec.series for i in s.instances
    }
    assert resource["subject"]["identifier"]["value"] == spec.patient_id


# ---- one StudyInstanceUID, two patients ----


@pytest.mark.parametrize("which", [0, 1])
async def test_shared_uid_patient_scoped_gives_that_patients_part(
    client: TestClient, search_studies: SearchCatalog, which: int
) -> None:
    spec = search_studies.twins[which]
    for params in ([("patient", f"Patient/{spec.patient_id}")], [("patient.identifier", str(spec.patient_id))]):
        found, _ = await search_all(client, params)
        assert [resource_key(r) for r in found] == [key(spec)]
        assert_parts(found[0], spec)


async def test_shared_uid_instance_of_one_patient(client: TestClient, search_studies: SearchCatalog) -> None:
    """An instance only patient B holds selects B's part, whether or not the search names both patients."""
    a, b = search_studies.twins
    instance = b.series[1].instances[0].uid
    for params in (
        [("instance", instance)],
        [("patient", f"{a.patient_id},{b.patient_id}"), ("instance", instance)],
        [("patient", f"Patient/{b.patient_id}"), ("series", b.series[1].uid)],
    ):
        found, _ = await search_all(client, params)
        assert [resource_key(r) for r in found] == [key(b)]
        assert_parts(found[0], b)
    assert await found_keys(client, [("patient", str(a.patient_id)), ("instance", instance)]) == set()


@pytest.mark.parametrize(
    "params",
    [[("_id", "{twins[0].uid}")], [("identifier", "urn:dicom:uid|urn:oid:{twins[0].uid}")]],
    ids=["_id", "identifier"],
)
async def test_shared_uid_unscoped_is_left_out_with_an_outcome(
    client: TestClient, search_studies: SearchCatalog, params: Params
) -> None:
    bundle = await first_page(client, fill(search_studies, params))
    assert matches(bundle) == []
    assert bundle["total"] == 0
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    outcome = outcomes[0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert search_studies.twins[0].uid in outcome["issue"][0]["diagnostics"]


# ---- started ----

DATE_VALUES = [
    "2023",
    "2024",
    "2023-12",
    "2024-02",
    "2023-12-31",
    "2024-01-01",
    "2024-02-29",
    "2023-06-15T12:00:00Z",
    "2023-12-31T23:30:00-05:00",
    "2024-01-01T11:00:00Z",
    "2024-01-01T00:00+02:00",
    "2024-02-29T23:00:00Z",
]
PREFIXES = ["eq", "ne", "gt", "ge", "lt", "le", "sa", "eb"]


def expected_dates(cat: SearchCatalog, *conditions: tuple[str, str]) -> set[Key]:
    return {
        key(spec)
        for spec in cat.dates.values()
        if all(started_matches(prefix, value, spec) for prefix, value in conditions)
    }


@pytest.mark.parametrize("value", DATE_VALUES)
@pytest.mark.parametrize("prefix", PREFIXES)
async def test_started(client: TestClient, search_studies: SearchCatalog, prefix: str, value: str) -> None:
    params = [("patient", DATES_PATIENT), ("started", f"{prefix}{value}")]
    assert await found_keys(client, params) == expected_dates(search_studies, (prefix, value))


async def test_started_without_prefix_is_eq(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", DATES_PATIENT), ("started", "2023-12-31")]
    assert await found_keys(client, params) == expected_dates(search_studies, ("eq", "2023-12-31"))


async def test_started_and_or(client: TestClient, search_studies: SearchCatalog) -> None:
    both = [("patient", DATES_PATIENT), ("started", "ge2024"), ("started", "lt2024-03")]
    assert await found_keys(client, both) == expected_dates(search_studies, ("ge", "2024"), ("lt", "2024-03"))
    either = [("patient", DATES_PATIENT), ("started", "2023-06-15,2025")]
    assert await found_keys(client, either) == resolve(search_studies, ["dates.date_only", "dates.next_year"])


async def test_study_without_date_never_matches_started(client: TestClient, search_studies: SearchCatalog) -> None:
    no_date = key(search_studies.dates["no_date"])
    everything_else = {key(s) for s in search_studies.dates.values()} - {no_date}
    for value in ("ne1900", "ge1900", "le2999"):
        assert await found_keys(client, [("patient", DATES_PATIENT), ("started", value)]) == everything_else
    # ne of an instant two studies start at: every other dated study, still not the undated one
    found = await found_keys(client, [("patient", DATES_PATIENT), ("started", "ne2024-01-01T11:00:00Z")])
    assert found == everything_else - resolve(search_studies, ["dates.plus_14", "dates.minus_12"])


async def test_started_missing(client: TestClient, search_studies: SearchCatalog) -> None:
    no_date = key(search_studies.dates["no_date"])
    missing = await found_keys(client, [("patient", DATES_PATIENT), ("started:missing", "true")])
    assert missing == {no_date}
    present = await found_keys(client, [("patient", DATES_PATIENT), ("started:missing", "false")])
    assert present == {key(s) for s in search_studies.dates.values()} - {no_date}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1997-04-24", ["odd_dates.dotted", "odd_dates.regular"]),
        pytest.param("ge1997-04-24", ["odd_dates.dotted", "odd_dates.regular"]),
        ("lt2000", ["odd_dates.dotted", "odd_dates.regular"]),  # an open range happens to compare lexically
        ("ne2000", ["odd_dates.dotted", "odd_dates.regular"]),
        ("1997-04-24T09:00:00Z", []),  # regular has no zone: a whole day, not contained in one second
    ],
)
async def test_started_on_repaired_dates(
    client: TestClient, search_studies: SearchCatalog, value: str, expected: list[str]
) -> None:
    """The resource says started=1997-04-24 (read path); a search for that day must find it."""
    found = await found_keys(client, [("patient", ODD_DATES_PATIENT), ("started", value)])
    assert found == resolve(search_studies, expected)


async def test_started_missing_includes_unreadable_dates(client: TestClient, search_studies: SearchCatalog) -> None:
    found = await found_keys(client, [("patient", ODD_DATES_PATIENT), ("started:missing", "true")])
    assert found == resolve(search_studies, ["odd_dates.impossible"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("ge0001-01-01", "dated"),
        pytest.param("9999-12-31", "none"),
        pytest.param("le0001-01-01T00:00:00+14:00", "none"),
        ("lt9999", "dated"),
    ],
)
async def test_started_at_the_ends_of_the_calendar(
    client: TestClient, search_studies: SearchCatalog, value: str, expected: str
) -> None:
    """Either the exact answer or a 400 naming started; never a 500."""
    response = await client.get("/fhir/ImagingStudy", params=[("patient", DATES_PATIENT), ("started", value)])
    body = await response.json(content_type=None)
    validate(body)
    if response.status == 400:
        assert "started" in body["issue"][0]["diagnostics"]
        return
    assert response.status == 200, body
    dated = {key(s) for s in search_studies.dates.values() if s.date}
    assert {resource_key(r) for r in matches(body)} == (dated if expected == "dated" else set())


async def test_links_carry_unsafe_characters(client: TestClient, search_studies: SearchCatalog) -> None:
    """Spaces, slashes, non-ASCII and the + of a zone survive the round trip through next links."""
    found, bundles = await search_all(client, [("patient:identifier", ODD_PATIENT), ("_count", "1")])
    assert len(bundles) == 2
    assert {resource_key(r) for r in found} == resolve(search_studies, ODD)
    value = "ge2023-12-31T00:00:00+02:00"
    found, bundles = await search_all(client, [("patient", DATES_PATIENT), ("started", value), ("_count", "2")])
    assert len(bundles) > 1
    assert {resource_key(r) for r in found} == expected_dates(search_studies, ("ge", value[2:]))


# ---- paging ----


async def test_paging_visits_every_study_once_in_order(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", PAGING_PATIENT), ("_count", "7")]
    found, bundles = await search_all(client, params)
    assert len(bundles) == 7  # 45 studies, 7 a page
    assert [len(matches(b)) for b in bundles] == [7, 7, 7, 7, 7, 7, 3]
    assert [r["id"] for r in found] == search_catalog.paging_order(search_studies.paging)
    assert all(b["total"] == 45 for b in bundles)
    assert link(bundles[0], "previous") is None
    assert link(bundles[-1], "next") is None
    async with aiohttp.ClientSession() as session:
        # self links work as given and give the same page
        again = await get_bundle(session, str(link(bundles[2], "self")))
        assert [r["id"] for r in matches(again)] == [r["id"] for r in matches(bundles[2])]
        # previous leads back page by page
        for index in range(len(bundles) - 1, 0, -1):
            previous = await get_bundle(session, str(link(bundles[index], "previous")))
            assert [r["id"] for r in matches(previous)] == [r["id"] for r in matches(bundles[index - 1])]


async def test_count_is_capped(client: TestClient, search_studies: SearchCatalog) -> None:
    """105 studies, _count=150: never more than the cap of 100 a page; the rest on the next page."""
    params = [("patient", f"{PAGING_PATIENT},{search_catalog.BULK_PATIENT}"), ("_count", "150"),
              ("_elements", "identifier")]  # fmt: skip
    found, bundles = await search_all(client, params)
    assert [len(matches(b)) for b in bundles] == [100, 5]
    assert bundles[0]["total"] == 105
    assert {resource_key(r) for r in found} == {key(s) for s in [*search_studies.paging, *search_studies.bulk]}


@pytest.mark.parametrize("params", [[("_count", "0")], [("_summary", "count")]], ids=["_count=0", "_summary=count"])
async def test_total_without_entries(client: TestClient, search_studies: SearchCatalog, params: Params) -> None:
    bundle = await first_page(client, [("patient", PAGING_PATIENT), *params])
    assert bundle["total"] == 45
    assert "entry" not in bundle
    assert link(bundle, "next") is None


async def test_offset_past_the_end_is_empty(client: TestClient, search_studies: SearchCatalog) -> None:
    bundle = await first_page(client, [("patient", PAGING_PATIENT), ("_offset", "45")])
    assert bundle["total"] == 45
    assert matches(bundle) == []


async def test_no_match_is_an_empty_searchset(client: TestClient, search_studies: SearchCatalog) -> None:
    bundle = await first_page(client, [("patient", "QSX-NOBODY")])
    assert bundle["total"] == 0
    assert "entry" not in bundle


# ---- result control ----


async def test_include_endpoint(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", search_catalog.IDS_PATIENT), ("_include", "ImagingStudy:endpoint")]
    bundle = await first_page(client, params)
    assert {resource_key(r) for r in matches(bundle)} == {key(s) for s in search_studies.ids.values()}
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == 1
    endpoint = included[0]["resource"]
    assert endpoint["resourceType"] == "Endpoint"
    assert included[0]["fullUrl"].endswith(f"/Endpoint/{endpoint['id']}")
    assert {r["endpoint"][0]["reference"] for r in matches(bundle)} == {f"Endpoint/{endpoint['id']}"}
    assert ("_include", "ImagingStudy:endpoint") in parse_qsl(urlsplit(str(link(bundle, "self"))).query)


async def test_summary_true(client: TestClient, search_studies: SearchCatalog) -> None:
    found, _ = await search_all(client, [("patient", KINDS_PATIENT), ("_summary", "true")])
    by_uid = {spec.uid: spec for spec in search_studies.kinds.values()}
    assert {r["id"] for r in found} == set(by_uid)
    for resource in found:
        assert any(tag["code"] == "SUBSETTED" for tag in resource["meta"]["tag"])
        assert {s["uid"] for s in resource["series"]} == {s.uid for s in by_uid[resource["id"]].series}
        assert all("instance" not in s for s in resource["series"])


async def test_elements_gives_study_level_results(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", KINDS_PATIENT), ("_elements", "identifier,modality,numberOfSeries")]
    found, _ = await search_all(client, params)
    by_uid = {spec.uid: spec for spec in search_studies.kinds.values()}
    assert {r["id"] for r in found} == set(by_uid)
    allowed = {"resourceType", "id", "meta", "status", "subject", "identifier", "modality", "numberOfSeries"}
    for resource in found:
        spec = by_uid[resource["id"]]
        assert set(resource) <= allowed
        assert "series" not in resource
        assert any(tag["code"] == "SUBSETTED" for tag in resource["meta"]["tag"])
        assert resource["numberOfSeries"] == len(spec.series)
        assert {c["code"] for m in resource["modality"] for c in m["coding"]} == {s.modality for s in spec.series}
        assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{spec.uid}"}


async def test_post_search_equals_get(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", KINDS_PATIENT), ("modality", "CT,MR"), ("_count", "2"), ("_include", "ImagingStudy:endpoint")]
    got = await first_page(client, params)
    response = await client.post("/fhir/ImagingStudy/_search", data=params)
    assert response.status == 200, await response.text()
    posted = await response.json(content_type=None)
    check_bundle(posted)
    assert posted == got
    found, _ = await search_all(client, params)
    assert {resource_key(r) for r in found} == resolve(
        search_studies, ["kinds.ct_chest", "kinds.mr_knee", "kinds.ct_mr"]
    )


# ---- refusals and handling ----

REFUSALS = [
    ("patient", "QSX*"),
    ("patient:identifier", "QSX-CAS?"),
    ("patient.identifier", "QSX\\CASE"),
    ("identifier", "QSX-ACC-*"),
    ("based-on:identifier", "QSX?ACC-1"),
    ("modality", "C*"),
    ("_id", "1.2.*"),
    ("patient:exact", "QSX-CASE"),
    ("modality:text", "CT"),
    ("started", "ap2024"),
    ("started", "2024-13"),
    ("started", "2024-02-30"),
    ("started", "2024-1-01"),
    ("started", "2024-01-01T25:00:00Z"),
    ("started", "2024-01-01T10:00:00+15:00"),
    ("started", "yesterday"),
    ("started:missing", "maybe"),
    ("_count", "-1"),
]


@pytest.mark.parametrize(("name", "value"), REFUSALS, ids=[f"{n}={v}" for n, v in REFUSALS])
async def test_refusal_names_the_parameter(client: TestClient, name: str, value: str) -> None:
    response = await client.get("/fhir/ImagingStudy", params=[("patient", "QSX-CASE"), (name, value)])
    assert response.status == 400, await response.text()
    outcome = await response.json(content_type=None)
    validate(outcome)
    assert outcome["resourceType"] == "OperationOutcome"
    diagnostics = " ".join(issue.get("diagnostics", "") for issue in outcome["issue"])
    assert name.split(":")[0].split(".")[0] in diagnostics


async def test_percent_encoded_wildcard_is_refused(client: TestClient) -> None:
    response = await client.get("/fhir/ImagingStudy?patient=QSX%2ACASE")
    assert response.status == 400
    validate(await response.json(content_type=None))


async def test_unknown_parameter_strict_and_lenient(client: TestClient, search_studies: SearchCatalog) -> None:
    params = [("patient", "QSX-CASE"), ("colour", "blue")]
    for headers in ({}, {"Prefer": "handling=strict"}):
        strict = await client.get("/fhir/ImagingStudy", params=params, headers=headers)
        assert strict.status == 400
        outcome = await strict.json(content_type=None)
        validate(outcome)
        assert "colour" in outcome["issue"][0]["diagnostics"]
    for headers in ({"Prefer": "handling=lenient"}, {"Prefer": "respond-async, handling=lenient"}):
        bundle = await first_page(client, params, headers=headers)
        assert {resource_key(r) for r in matches(bundle)} == resolve(search_studies, CASE)
        applied = dict(parse_qsl(urlsplit(str(link(bundle, "self"))).query))
        assert "colour" not in applied
        assert applied["patient"] == "QSX-CASE"


# ---- a real FHIR client ----


async def test_fhirpy_searches_and_pages(client: TestClient, search_studies: SearchCatalog) -> None:
    base = str(client.make_url("/fhir"))
    fhir = AsyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})
    studies = fhir.resources("ImagingStudy")
    paged = await studies.search(patient=f"Patient/{PAGING_PATIENT}").limit(7).fetch_all()
    assert [r["id"] for r in paged] == search_catalog.paging_order(search_studies.paging)
    pages = 0
    async for _ in studies.search(patient=PAGING_PATIENT).limit(10):
        pages += 1
    assert pages == 45
    # count() sends Aidbox's _totalMethod=count; .elements() adds id and resourceType; .sort() sends _sort.
    assert await studies.search(patient=PAGING_PATIENT).count() == 45
    selected = await studies.search(patient=PAGING_PATIENT).elements("started").limit(50).fetch_all()
    assert {key for r in selected for key in r} == {"resourceType", "id", "meta", "status", "subject", "started"}
    oldest = await studies.search(patient=PAGING_PATIENT).sort("started").limit(9).fetch_all()
    newest = await studies.search(patient=PAGING_PATIENT).sort("-started").limit(9).fetch_all()
    assert [r["started"] for r in oldest if "started" in r] == [r["started"] for r in newest if "started" in r][::-1]
    assert len({r["started"] for r in oldest if "started" in r}) > 1
    assert [r["id"] for r in oldest if "started" not in r] == [r["id"] for r in newest if "started" not in r]
    odd = await studies.search(Raw(**{"patient:identifier": ODD_PATIENT})).limit(1).fetch_all()
    assert {(r["id"], r["subject"]["identifier"]["value"]) for r in odd} == resolve(search_studies, ODD)
    ct = await studies.search(patient=KINDS_PATIENT, modality=f"{DCM}|CT").fetch_all()
    assert {r["id"] for r in ct} == {search_studies.kinds[n].uid for n in ("ct_chest", "ct_mr")}


# ---- pages read at the PACS ----


async def test_unnarrowed_pages_read_at_orthanc_cover_every_study_once(
    client: TestClient, orthanc: OrthancServer, search_studies: SearchCatalog
) -> None:
    bundles = [await first_page(client, [("_count", "9"), ("_elements", "identifier")])]
    async with aiohttp.ClientSession() as session:
        while (url := link(bundles[-1], "next")) is not None:
            assert len(bundles) < 200, "runaway paging"
            bundles.append(await get_bundle(session, url))
    assert all("total" not in bundle for bundle in bundles)
    found = [resource["id"] for bundle in bundles for resource in matches(bundle)]
    left_out = {
        word
        for bundle in bundles
        for entry in bundle.get("entry", [])
        if entry["search"]["mode"] == "outcome"
        for issue in entry["resource"]["issue"]
        for word in issue["diagnostics"].split()
        if "." in word and is_uid(word)
    }
    held = {study["MainDicomTags"]["StudyInstanceUID"] for study in orthanc.get_json("/studies?expand")}
    assert len(found) == len(set(found)), sorted(u for u in set(found) if found.count(u) > 1)
    assert set(found) | left_out == {uid for uid in held if is_uid(uid)}
