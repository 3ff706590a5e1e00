"""Search through the HTTP layer with an in-memory PACS: Bundles, paging links, result parameters, handling."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from bridge.mapping.dicomjson import DicomJson
from bridge.qido.memory import MemoryQidoSource
from bridge.qido.source import NO_FILTERS, Filters
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.fhircheck import validate

CT = "1.2.840.10008.5.1.4.1.1.2"


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def pacs(studies: int = 12) -> MemoryQidoSource:
    """``studies`` studies of patient P1 (one a day in March 2024), each one CT series with one instance."""
    source = MemoryQidoSource()
    for n in range(1, studies + 1):
        uid, series = f"2.25.{n}", f"2.25.{n}.1"
        source.studies.append({
            "0020000D": el("UI", uid), "00100020": el("LO", "P1"), "00080020": el("DA", f"202403{n:02d}"),
            "00080061": el("CS", "CT"), "00080050": el("SH", f"ACC{n}"),
        })  # fmt: skip
        source.series[uid] = [{"0020000E": el("UI", series), "00080060": el("CS", "CT"), "00100020": el("LO", "P1")}]
        source.instances[(uid, series)] = [{"00080018": el("UI", f"{series}.1"), "00080016": el("UI", CT)}]
    return source


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL":
                              "https://fhir.example.org/fhir"})  # fmt: skip
    client = await start_client(settings, source)
    yield client
    await client.close()


async def bundle(client: TestClient, query: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    response = await client.get(f"/fhir/ImagingStudy?{query}", **kwargs)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    validate(body)
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]


def link(body: dict[str, Any], relation: str) -> str | None:
    return next((entry["url"] for entry in body["link"] if entry["relation"] == relation), None)


async def test_searchset_bundle(client: TestClient) -> None:
    body = await bundle(client, "patient=P1&_count=5")
    assert body["type"] == "searchset"
    assert body["total"] == 12
    assert ids(body) == [f"2.25.{n}" for n in (12, 11, 10, 9, 8)]  # newest first
    first = body["entry"][0]
    assert first["fullUrl"] == "https://fhir.example.org/fhir/ImagingStudy/2.25.12"
    assert first["resource"]["series"][0]["instance"][0]["uid"] == "2.25.12.1.1"  # complete resources
    assert link(body, "self") == "https://fhir.example.org/fhir/ImagingStudy?patient=P1&_count=5"


async def test_search_bundles_are_not_stored_by_any_cache(client: TestClient) -> None:
    got = await client.get("/fhir/ImagingStudy?patient=P1&_count=1")
    posted = await client.post("/fhir/ImagingStudy/_search", data={"patient": "P1"})
    read = await client.get("/fhir/ImagingStudy/2.25.1")
    assert (got.status, posted.status, read.status) == (200, 200, 200)
    assert got.headers["Cache-Control"] == posted.headers["Cache-Control"] == "private, no-store"
    assert read.headers["Cache-Control"] == "private, no-cache"  # reads revalidate with their ETag


async def test_following_next_visits_every_study_once_and_previous_goes_back(client: TestClient) -> None:
    seen: list[str] = []
    url: str | None = "/fhir/ImagingStudy?_count=5&started=ge2024-03"
    pages = []
    while url:
        path = urlsplit(url)
        page = await bundle(client, path.query) if path.query else None
        assert page is not None
        pages.append(page)
        seen += ids(page)
        url = link(page, "next")
    assert len(seen) == 12
    assert sorted(seen) == sorted(set(seen))
    back = urlsplit(link(pages[-1], "previous") or "")
    assert ids(await bundle(client, back.query)) == ids(pages[-2])


async def test_empty_result_is_an_empty_searchset(client: TestClient) -> None:
    body = await bundle(client, "patient=NOBODY")
    assert body["total"] == 0
    assert "entry" not in body
    assert link(body, "self")


@pytest.mark.parametrize("query", ["_summary=count", "_count=0"])
async def test_count_only(client: TestClient, query: str) -> None:
    body = await bundle(client, query)
    assert body["total"] == 12
    assert "entry" not in body


async def test_summary_true_drops_instances_and_says_so(client: TestClient) -> None:
    body = await bundle(client, "_summary=true&_count=1")
    resource = body["entry"][0]["resource"]
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert "instance" not in resource["series"][0]
    assert "numberOfInstances" not in resource  # ist-4 would otherwise demand the listed instances


@pytest.mark.parametrize("mode", ["true", "data"])
async def test_summary_true_and_data_leave_the_narrative_out(client: TestClient, mode: str) -> None:
    # Resource.text is no summary element (in R4 or R5), and _summary=data is "remove the text element".
    resource = (await bundle(client, f"_summary={mode}&_count=1"))["entry"][0]["resource"]
    assert "text" not in resource
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert ("instance" in resource["series"][0]) is (mode == "data")


async def test_elements_without_series_reads_only_the_study_level(client: TestClient, source: MemoryQidoSource) -> None:
    body = await bundle(client, "_elements=identifier,modality&_count=3")
    resource = body["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "identifier", "modality", "status", "subject"}
    assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    assert source.calls == ["studies", "studies"]  # the page, and who else holds its UIDs: no series, no instances


async def test_elements_may_name_what_is_always_returned(client: TestClient) -> None:
    # fhirpy's .elements("started") sends _elements=started,id,resourceType.
    body = await bundle(client, "patient=P1&_count=2&_elements=started,id,resourceType")
    resource = body["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "subject", "started"}


async def test_sort_by_started_both_ways(client: TestClient, source: MemoryQidoSource) -> None:
    source.studies[4]["00080020"] = el("DA", "")  # a study without a date: last either way
    oldest = await bundle(client, "patient=P1&_sort=started&_count=12")
    newest = await bundle(client, "patient=P1&_sort=-started&_count=12")
    assert ids(oldest) == [f"2.25.{n}" for n in (1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 5)]
    assert ids(newest) == [f"2.25.{n}" for n in (12, 11, 10, 9, 8, 7, 6, 4, 3, 2, 1, 5)]
    assert link(oldest, "self") == "https://fhir.example.org/fhir/ImagingStudy?patient=P1&_sort=started&_count=12"
    second = await bundle(client, "patient=P1&_sort=started&_count=5&_offset=5")
    assert ids(second) == [f"2.25.{n}" for n in (7, 8, 9, 10, 11)]


async def test_sorted_pages_are_never_read_in_the_pacs_order(client: TestClient, source: MemoryQidoSource) -> None:
    # Unnarrowed, a page is read at the PACS in its order; sorted, every match is read and ordered here.
    source.studies.reverse()  # the PACS lists the newest first
    assert ids(await bundle(client, "_sort=started&_count=3")) == ["2.25.1", "2.25.2", "2.25.3"]
    assert ids(await bundle(client, "_count=3")) == ["2.25.12", "2.25.11", "2.25.10"]  # the PACS's order


async def test_sort_by_last_updated_is_refused_saying_why(client: TestClient) -> None:
    refused = await client.get("/fhir/ImagingStudy?patient=P1&_sort=-_lastUpdated")
    assert refused.status == 400
    assert "a PACS keeps no modification time" in (await refused.json())["issue"][0]["diagnostics"]
    lenient = await bundle(client, "patient=P1&_sort=-_lastUpdated&_count=1", headers={"Prefer": "handling=lenient"})
    assert ids(lenient) == ["2.25.12"]


async def test_total_method_count_is_an_accurate_total(client: TestClient) -> None:
    # fhirpy's count() sends _count=0&_totalMethod=count; with a page asked for, it asks for the total too.
    assert (await bundle(client, "_count=0&_totalMethod=count"))["total"] == 12
    assert (await bundle(client, "_count=2&_totalMethod=count"))["total"] == 12
    assert "total" not in await bundle(client, "_count=2")  # read at the PACS: no count unless asked for


async def test_last_updated_finds_what_changed_since_a_sync(source: MemoryQidoSource) -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_CACHE_MIN_REREAD": "0"})
    client = await start_client(settings, source)
    try:
        synced = await bundle(client, "patient=P1&_count=20")  # the first sync reads every study
        mark = max(e["resource"]["meta"]["lastUpdated"] for e in synced["entry"])
        mark_ms = dt.datetime.fromisoformat(mark).timestamp() * 1000
        while time.time() * 1000 < mark_ms + 2:  # the change below must be seen at a later millisecond
            pass
        series = source.instances[("2.25.3", "2.25.3.1")]
        series.append({**series[0], "00080018": el("UI", "2.25.3.1.2")})  # the PACS receives an image
        assert (await client.get("/fhir/ImagingStudy/2.25.3", headers={"Cache-Control": "no-cache"})).status == 200
        changed = await bundle(client, f"patient=P1&_lastUpdated=gt{quote(mark)}")
        assert ids(changed) == ["2.25.3"]
        assert len(changed["entry"][0]["resource"]["series"][0]["instance"]) == 2
        assert ids(await bundle(client, f"patient=P1&_lastUpdated=le{quote(mark)}&_count=20")) == [
            f"2.25.{n}" for n in (12, 11, 10, 9, 8, 7, 6, 5, 4, 2, 1)
        ]
        assert (await bundle(client, "patient=P1&_lastUpdated=gt2000-01-01&_summary=count"))["total"] == 12
    finally:
        await client.close()


async def test_last_updated_reads_at_most_a_hundred_studies_whole() -> None:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web"}), pacs(101))
    try:
        refused = await bundle(client, "_lastUpdated=gt2020-01-01", status=400)
        assert "at most 100 are read" in refused["issue"][0]["diagnostics"]
        assert refused["issue"][0]["code"] == "too-costly"
    finally:
        await client.close()


async def test_include_endpoint(client: TestClient) -> None:
    body = await bundle(client, "_count=2&_include=ImagingStudy:endpoint")
    included = [e for e in body["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == 1
    assert included[0]["resource"]["resourceType"] == "Endpoint"
    assert included[0]["fullUrl"].startswith("https://fhir.example.org/fhir/Endpoint/")


async def test_post_search_equals_get(client: TestClient) -> None:
    got = await bundle(client, "patient=P1&_count=3&modality=CT")
    response = await client.post("/fhir/ImagingStudy/_search?_count=3", data={"patient": "P1", "modality": "CT"})
    posted = await response.json()
    assert response.status == 200
    validate(posted)
    assert ids(posted) == ids(got)
    assert posted["total"] == got["total"]
    assert link(posted, "next") == link(got, "next")


async def test_post_search_takes_a_form_only(client: TestClient) -> None:
    response = await client.post("/fhir/ImagingStudy/_search", json={"patient": "P1"})
    assert response.status == 415
    validate(await response.json())


async def test_unknown_parameters_are_refused_by_default_and_ignored_on_request(client: TestClient) -> None:
    for headers in ({}, {"Prefer": "handling=strict"}):
        strict = await bundle(client, "patient=P1&frobnicate=yes", 400, headers=headers)
        assert "frobnicate" in strict["issue"][0]["diagnostics"]
    lenient = await bundle(client, "patient=P1&frobnicate=yes&_count=2", headers={"Prefer": "handling=lenient"})
    assert ids(lenient) == ["2.25.12", "2.25.11"]
    assert "frobnicate" not in (link(lenient, "self") or "")


async def test_a_foreign_patient_reference_is_refused(client: TestClient, source: MemoryQidoSource) -> None:
    body = await bundle(client, "patient=http://evil/fhir/Patient/P1", 400)
    assert "'http://evil/fhir/Patient/P1' refers to another server" in body["issue"][0]["diagnostics"]
    assert source.calls == []
    own = await bundle(client, "patient=https://fhir.example.org/fhir/Patient/P1&_count=1")
    assert own["total"] == 12


@pytest.mark.parametrize("query", ["Patient=P2", "PATIENT=P2", "Patient=P2&PATIENT=P2"])
async def test_a_misspelt_patient_is_refused_not_ignored(client: TestClient, query: str) -> None:
    body = await bundle(client, query, 400)
    diagnostics = body["issue"][0]["diagnostics"]
    for name in {pair.split("=")[0] for pair in query.split("&")}:
        assert f"{name} (did you mean patient?)" in diagnostics
    assert "Prefer: handling=lenient" in diagnostics


async def test_refusals_are_400_operation_outcomes(client: TestClient, source: MemoryQidoSource) -> None:
    for query in ("patient=P*", "identifier=A?", "started=ap2024", "_count=x", "patient:contains=P"):
        body = await bundle(client, query, 400)
        assert body["issue"][0]["severity"] == "error"
    assert source.calls == []  # nothing reached the PACS


async def test_format_is_negotiated_before_the_pacs_is_asked(client: TestClient, source: MemoryQidoSource) -> None:
    response = await client.get("/fhir/ImagingStudy?patient=P1&_format=xml")
    assert response.status == 406
    assert source.calls == []


async def test_a_uid_under_two_patients_is_left_out_unless_the_search_names_the_patient(
    client: TestClient, source: MemoryQidoSource
) -> None:
    shared = "2.25.3"
    source.studies.append({"0020000D": el("UI", shared), "00100020": el("LO", "P2"), "00080020": el("DA", "20240303")})
    source.series[shared].append({"0020000E": el("UI", "2.25.3.9"), "00080060": el("CS", "MR"),
                                  "00100020": el("LO", "P2")})  # fmt: skip
    source.instances[(shared, "2.25.3.9")] = [
        {"00080018": el("UI", "2.25.3.9.1"), "00080016": el("UI", CT), "00100020": el("LO", "P2")}
    ]
    unscoped = await bundle(client, "started=2024-03-03")
    assert ids(unscoped) == []
    outcome = [e for e in unscoped["entry"] if e["search"]["mode"] == "outcome"]
    assert "registered under 2 patients" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    for patient, series in (("P1", "2.25.3.1"), ("P2", "2.25.3.9")):
        scoped = await bundle(client, f"patient={patient}&started=2024-03-03")
        assert ids(scoped) == [shared]
        assert [s["uid"] for s in scoped["entry"][0]["resource"]["series"]] == [series]  # only their part


async def test_a_pacs_that_ignores_the_patient_filter_cannot_leak_studies() -> None:
    class Careless(MemoryQidoSource):
        async def search_studies(self, filters: Filters, fields: Sequence[str]) -> list[DicomJson]:
            return await super().search_studies({}, fields)  # returns everyone's studies

    careless = Careless(pacs(3).studies, pacs(3).series, pacs(3).instances)
    careless.studies.append({"0020000D": el("UI", "2.25.99"), "00100020": el("LO", "P2")})
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), careless)
    try:
        body = await bundle(client, "patient=P2")
        assert ids(body) == ["2.25.99"]
        assert ids(await bundle(client, "patient=p2")) == []  # exact, whatever the PACS's case rules
    finally:
        await client.close()


async def test_a_pages_studies_are_read_concurrently() -> None:
    all_in = asyncio.Event()

    class Gathering(MemoryQidoSource):
        """Each instance query waits until all six studies' are asked at once: read one after the other, the
        first would wait alone, and fail the search."""

        in_flight = 0

        async def search_instances(
            self, study_uid: str | None, series_uid: str | None, fields: Sequence[str],
            expected: int | None = None, filters: Filters = NO_FILTERS,
        ) -> list[DicomJson]:  # fmt: skip
            Gathering.in_flight += 1
            if Gathering.in_flight == 6:
                all_in.set()
            try:
                await asyncio.wait_for(all_in.wait(), timeout=5)
            finally:
                Gathering.in_flight -= 1
            return await super().search_instances(study_uid, series_uid, fields, expected, filters)

    data = pacs(6)
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}),
                                Gathering(data.studies, data.series, data.instances))  # fmt: skip
    try:
        assert len(ids(await bundle(client, "_count=6"))) == 6
    finally:
        await client.close()
    assert all_in.is_set()


def test_links_are_plain_get_urls() -> None:
    from bridge.search.bundle import page_links
    from bridge.search.query import parse_search

    query = parse_search([("patient:identifier", "urn:oid:1.2|PAT 01/ä"), ("_count", "2"), ("_offset", "2")])
    links = {entry["relation"]: entry["url"] for entry in page_links("https://x/fhir", query, has_next=True)}
    assert dict(parse_qsl(urlsplit(links["next"]).query)) == {
        "patient:identifier": "urn:oid:1.2|PAT 01/ä", "_count": "2", "_offset": "4"
    }  # fmt: skip
    assert dict(parse_qsl(urlsplit(links["previous"]).query))["_count"] == "2"
    assert "_offset" not in dict(parse_qsl(urlsplit(links["previous"]).query))


async def search_in(source: MemoryQidoSource, query: str) -> dict[str, Any]:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), source)
    try:
        return await bundle(client, query)
    finally:
        await client.close()


async def test_a_shared_uid_whose_rows_do_not_name_their_patient_is_refused_to_a_patient_search() -> None:
    shared = "2.25.100"
    source = MemoryQidoSource(
        studies=[{"0020000D": el("UI", shared), "00100020": el("LO", pid)} for pid in ("PA", "PB")],
        series={shared: [{"0020000E": el("UI", f"{shared}.{n}"), "00080060": el("CS", "CT")} for n in (1, 2)]},
        instances={(shared, f"{shared}.{n}"): [{"00080018": el("UI", f"{shared}.{n}.1"), "00080016": el("UI", CT)}]
                   for n in (1, 2)},
    )  # fmt: skip
    body = await search_in(source, "patient=PA")
    # No row says it is PA's: the study is neither shown as PA's nor shown without its series, as if complete.
    assert ids(body) == []
    outcome = next(e for e in body["entry"] if e["search"]["mode"] == "outcome")["resource"]
    assert "does not say which of the patients" in outcome["issue"][0]["diagnostics"]


async def test_one_patient_id_from_two_issuers_is_two_patients() -> None:
    source = MemoryQidoSource(studies=[
        {"0020000D": el("UI", f"2.25.{n}"), "00100020": el("LO", "RDUP"), "00100021": el("LO", issuer)}
        for n, issuer in ((1, "1.2.3.1"), (2, "1.2.3.2"))
    ])  # fmt: skip
    ambiguous = await search_in(source, "patient=RDUP&_elements=subject")
    assert ids(ambiguous) == []
    outcome = next(e for e in ambiguous["entry"] if e["search"]["mode"] == "outcome")["resource"]
    assert "assigned by 2 issuers" in outcome["issue"][0]["diagnostics"]
    pinned = await search_in(source, "patient:identifier=urn:oid:1.2.3.2|RDUP&_elements=subject")
    assert ids(pinned) == ["2.25.2"]


async def test_a_patient_id_the_bridge_had_to_clean_never_passes_for_the_cleaned_one() -> None:
    source = MemoryQidoSource(studies=[
        {"0020000D": el("UI", "2.25.1"), "00100020": el("LO", "RS 2")},
        {"0020000D": el("UI", "2.25.2"), "00100020": el("LO", "RS\u00a02")},  # a no-break space
    ])  # fmt: skip
    assert ids(await search_in(source, "patient:identifier=RS 2&_elements=subject")) == ["2.25.1"]


async def test_elements_with_series_keep_the_study_uid_identifier(client: TestClient) -> None:
    body = await bundle(client, "_elements=series&_count=1")  # bundle() validates: ist-1 holds
    resource = body["entry"][0]["resource"]
    assert resource["identifier"][0]["system"] == "urn:dicom:uid"
    assert resource["series"]


async def test_a_form_that_is_not_utf8_is_a_400(client: TestClient) -> None:
    response = await client.post(
        "/fhir/ImagingStudy/_search", data=b"\xff\xfe garbage",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.status == 400
    assert "UTF-8" in (await response.json())["issue"][0]["diagnostics"]


FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "body",
    [
        "patient=P2".encode("utf-16-le"),  # no BOM: valid UTF-8, full of NULs
        "patient=P2".encode("utf-16"),  # with a BOM
        "patient=P2".encode("utf-32-le"),
        b"patient=%FF",  # a percent-escape that is not UTF-8
    ],
    ids=["utf-16-le", "utf-16-bom", "utf-32-le", "percent-ff"],
)
async def test_a_form_not_in_utf8_is_a_400(client: TestClient, source: MemoryQidoSource, body: bytes) -> None:
    response = await client.post("/fhir/ImagingStudy/_search", data=body, headers={"Content-Type": FORM})
    assert response.status == 400
    validate(await response.json())
    assert source.calls == []


@pytest.mark.parametrize("charset", ["utf-16", "iso-8859-1", "x-no-such-charset"])
async def test_a_form_in_another_charset_is_a_415(client: TestClient, charset: str) -> None:
    response = await client.post(
        "/fhir/ImagingStudy/_search", data="patient=P1".encode(charset if charset != "x-no-such-charset" else "ascii"),
        headers={"Content-Type": f"{FORM}; charset={charset}"},
    )  # fmt: skip
    assert response.status == 415
    body = await response.json()
    validate(body)
    assert f"charset={charset}" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("charset", ["", "; charset=utf-8", "; charset=UTF8"])
async def test_a_utf8_form_is_read(client: TestClient, charset: str) -> None:
    response = await client.post(
        "/fhir/ImagingStudy/_search", data=b"patient=P1&_count=1&_elements=identifier\n",
        headers={"Content-Type": FORM + charset},
    )  # fmt: skip
    assert response.status == 200, await response.text()
    assert ids(await response.json()) == ["2.25.12"]
