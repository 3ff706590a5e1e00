"""Every search has a bounded cost at the PACS, whatever its parameters: counted in the requests a PACS double
receives (over HTTP, through the real QIDO client), not estimated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.fhircheck import validate
from tests.support.pacs_double import PacsDouble, serving

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
STUDIES = 300


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def archive() -> MemoryQidoSource:
    """300 studies of ten patients, CT and MR in turn, each one series (CHEST) of one instance."""
    rows = MemoryQidoSource()
    for n in range(STUDIES):
        study, series, modality = f"2.25.{n + 1}", f"2.25.{n + 1}.1", ("CT", "MR")[n % 2]
        patient = {"00100020": el("LO", f"P{n % 10}")}
        rows.studies.append({
            "0020000D": el("UI", study), "00080061": el("CS", modality), "00080020": el("DA", "20240301"),
            "00201206": el("IS", 1), "00201208": el("IS", 1), **patient,
        })  # fmt: skip
        rows.series[study] = [{
            "0020000E": el("UI", series), "00080060": el("CS", modality), "00180015": el("CS", "CHEST"),
            "00201209": el("IS", 1), **patient,
        }]  # fmt: skip
        sop_class = (CT, MR)[n % 2]
        rows.instances[(study, series)] = [{"00080018": el("UI", f"{series}.1"), "00080016": el("UI", sop_class),
                                            **patient}]  # fmt: skip
    return rows


@pytest.fixture
def double() -> PacsDouble:
    return PacsDouble(archive())


@pytest.fixture
async def client(double: PacsDouble) -> AsyncIterator[TestClient]:
    async with serving(double) as url:
        settings = load_settings({
            "BRIDGE_QIDO_URL": url, "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
            "BRIDGE_SEARCH_MAX_QUERIES": "6", "BRIDGE_SEARCH_MAX_ROWS": "100",
        })  # fmt: skip
        client = await start_client(settings)
        yield client
        await client.close()


async def search(client: TestClient, query: str, status: int = 200) -> dict[str, Any]:
    response = await client.get(f"/fhir/ImagingStudy?{query}")
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    validate(body)
    return body


def asked(double: PacsDouble) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(request).query) for request in double.requests]


def rows_allowed(double: PacsDouble) -> list[int]:
    """The ``limit`` of every request: what the PACS was allowed to answer with."""
    return [int(query["limit"][0]) for query in asked(double)]


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


@pytest.mark.parametrize("criteria", ["", "status=available&"], ids=["unnarrowed", "by-status"])
@pytest.mark.parametrize("offset", [0, 130], ids=["page-1", "page-14"])
async def test_a_page_is_read_at_the_pacs_whatever_its_offset(
    client: TestClient, double: PacsDouble, criteria: str, offset: int
) -> None:
    bundle = await search(client, f"{criteria}_count=10&_offset={offset}&_elements=identifier")
    assert len(bundle["entry"]) == 10
    assert "total" not in bundle  # not counted: that would read every row
    assert "_offset=" in links(bundle)["next"]
    page, shared = asked(double)
    assert (page["limit"], page.get("offset", ["0"])) == (["10"], [str(offset)])
    assert len(shared["StudyInstanceUID"][0].split(",")) == 10  # who else holds the page's UIDs
    assert double.rows_sent == [10, 10]  # two page-sizes of rows, whatever the offset


async def test_the_last_page_read_at_the_pacs_has_no_next_link(client: TestClient, double: PacsDouble) -> None:
    bundle = await search(client, "_count=10&_offset=295&_elements=identifier")
    assert len(bundle["entry"]) == 5
    assert "next" not in links(bundle)
    assert double.rows_sent == [5, 0, 5]  # a short page, its end proved by asking past it; its UIDs' holders


async def test_pages_read_at_the_pacs_neither_repeat_nor_skip_a_study(client: TestClient) -> None:
    seen: list[str] = []
    url: str | None = "/fhir/ImagingStudy?_count=40&_elements=identifier"
    while url is not None:
        response = await client.get(url.removeprefix("https://fhir.example.org"))
        bundle = await response.json()
        seen += [entry["resource"]["id"] for entry in bundle.get("entry", [])]
        url = links(bundle).get("next")
    assert sorted(seen) == sorted(f"2.25.{n + 1}" for n in range(STUDIES))


async def test_a_uid_two_patients_hold_is_left_out_of_pages_read_at_the_pacs(
    client: TestClient, double: PacsDouble
) -> None:
    twin = dict(double.rows.studies[0], **{"00100020": el("LO", "P-OTHER")})
    double.rows.studies.append(twin)  # its rows are on the first page and on the last
    first = await search(client, "_count=10&_elements=identifier")
    last = await search(client, "_count=10&_offset=300&_elements=identifier")
    for bundle in (first, last):
        assert "2.25.1" not in [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        outcome = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome")
        assert "study 2.25.1 is registered under 2 patients" in outcome["issue"][0]["diagnostics"]


async def test_a_count_of_the_whole_archive_is_refused_naming_what_to_add(
    client: TestClient, double: PacsDouble
) -> None:
    body = await search(client, "_summary=count", 400)
    assert body["issue"][0]["code"] == "too-costly"
    assert "patient" in body["issue"][0]["diagnostics"]
    assert max(rows_allowed(double)) <= 101  # never asked for more than the budget and one row


@pytest.mark.parametrize(
    "criteria", [f"dicom-class={CT}", "body-site=816094009", "started=2024-03-01", "modality=CT", "_total=accurate"]
)
async def test_criteria_the_pacs_cannot_page_read_no_more_than_the_budget(
    client: TestClient, double: PacsDouble, criteria: str
) -> None:
    body = await search(client, criteria, 400)
    assert body["issue"][0]["code"] == "too-costly"
    assert max(rows_allowed(double)) <= 101
    assert len(double.requests) <= 6


@pytest.mark.parametrize(
    "criteria",
    [
        "patient=" + ",".join(f"P{n}" for n in range(7)),  # more queries than the budget
        "patient=P1,P2,P3",  # three lists and the issuers' check, each with its proof: eight requests
    ],
)
async def test_an_or_list_beyond_the_budget_is_refused_before_the_pacs_is_asked(
    client: TestClient, double: PacsDouble, criteria: str
) -> None:
    body = await search(client, criteria, 400)
    assert "fewer OR values" in body["issue"][0]["diagnostics"]
    assert double.requests == []


async def test_the_budget_counts_requests_across_levels(client: TestClient, double: PacsDouble) -> None:
    # Each criterion alone fits; together the series, instance and study levels ask more than six requests.
    body = await search(client, f"patient=P1&body-site=816094009&dicom-class={CT},{MR}&series=2.25.2.1", 400)
    assert body["issue"][0]["code"] == "too-costly"
    assert len(double.requests) <= 6


async def test_a_narrow_search_within_the_budget_is_answered_with_its_total(
    client: TestClient, double: PacsDouble
) -> None:
    bundle = await search(client, "patient=P3&modality=MR&_elements=identifier")
    assert bundle["total"] == 30
    assert len(double.requests) <= 6


async def test_lists_asked_at_once_share_the_row_budget(double: PacsDouble) -> None:
    async with serving(double) as url:
        settings = load_settings({
            "BRIDGE_QIDO_URL": url, "BRIDGE_SEARCH_MAX_QUERIES": "40", "BRIDGE_SEARCH_MAX_ROWS": "50",
        })  # fmt: skip
        client = await start_client(settings)
        try:
            # Six patients of thirty studies each, asked at once: 180 rows, where the budget is 50.
            body = await search(client, "patient=" + ",".join(f"P{n}" for n in range(6)), 400)
        finally:
            await client.close()
    assert body["issue"][0]["code"] == "too-costly"
    assert sum(double.rows_sent) <= 50 + len(double.requests)  # each request may see one row past its share


async def test_a_page_from_a_pacs_that_caps_and_ignores_offset_is_a_502(client: TestClient, double: PacsDouble) -> None:
    double.cap, double.honours_offset = 5, False
    body = await search(client, "_count=10&_elements=identifier", 502)
    assert "ignores offset" in body["issue"][0]["diagnostics"]
