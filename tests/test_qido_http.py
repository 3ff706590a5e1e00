"""``HttpQidoSource`` at its HTTP edge: query strings, paging, merging, and every failure mapped to the error tree.

The PACS is faked with aioresponses (no sockets), except where a real socket is the point: a handler too slow for
the timeout and a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from bridge.errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido import http
from bridge.qido.http import HttpQidoSource, query_string
from bridge.qido.paging import MAX_PAGES, MAX_REPEATS
from tests.support.mock_pacs import MockedResponse, PacsMock

BASE = "http://pacs.test/dicom-web"
STUDIES = re.compile(r"^http://pacs\.test/dicom-web/studies(\?.*)?$")
SERIES = re.compile(r"^http://pacs\.test/dicom-web/studies/1\.2\.3/series(\?.*)?$")
INSTANCES = re.compile(r"^http://pacs\.test/dicom-web/studies/1\.2\.3/series/4\.5/instances(\?.*)?$")
MORE = '299 pacs "There are additional results"'

MakeSource = Callable[..., HttpQidoSource]


# --- helpers -------------------------------------------------------------------------------------------------------


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def instance(uid: str, **extra: dict[str, Any]) -> DicomJson:
    return {tags.SOP_INSTANCE_UID: element("UI", uid), **extra}


def instances(count: int) -> list[DicomJson]:
    return [instance(f"1.2.3.4.5.{n}") for n in range(1, count + 1)]


def uids(rows: list[DicomJson], tag: str = tags.SOP_INSTANCE_UID) -> list[str]:
    return [row[tag]["Value"][0] for row in rows]


def sent(pacs: aioresponses) -> list[tuple[URL, Mapping[str, str]]]:
    """Every request the source made, in order: its URL and headers (session headers included)."""
    return [(url, call.kwargs["headers"]) for (_, url), calls in pacs.requests.items() for call in calls]


@dataclass
class FakePacs:
    """A QIDO endpoint over ``rows``, as an aioresponses callback; records each (limit, offset) it is asked."""

    rows: list[DicomJson]
    cap: int | None = None  # the most rows it sends at once, whatever the limit
    warn: bool = False  # send ``Warning: 299 ... additional results`` when rows remain
    honour_offset: bool = True
    asked: list[tuple[int | None, int]] = field(default_factory=list)

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        limit = int(url.query["limit"]) if "limit" in url.query else None
        offset = int(url.query.get("offset", "0"))
        self.asked.append((limit, offset))
        start = offset if self.honour_offset else 0
        sizes = [size for size in (limit, self.cap) if size]
        page = self.rows[start : start + min(sizes)] if sizes else self.rows[start:]
        remaining = start + len(page) < len(self.rows)
        headers = {"Warning": MORE} if self.warn and remaining else {}
        return CallbackResult(
            status=200,
            body=json.dumps(page),
            headers=headers,
            content_type="application/dicom+json",
            response_class=MockedResponse,
        )


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def pacs() -> Iterator[aioresponses]:
    with PacsMock() as mocked:
        yield mocked


@pytest.fixture
async def make_source() -> AsyncIterator[MakeSource]:
    """Builds sources (``BASE`` unless told) and closes every one of them after the test."""
    opened: list[HttpQidoSource] = []

    def make(base_url: str = BASE, **kwargs: Any) -> HttpQidoSource:
        source = HttpQidoSource(base_url, **kwargs)
        opened.append(source)
        return source

    yield make
    for source in opened:
        await source.close()


@pytest.fixture
async def source(make_source: MakeSource) -> HttpQidoSource:
    return make_source(timeout=5, retries=0)  # one attempt: these tests are about mapping answers, not retrying


# --- query_string --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "fields", "limit", "offset", "expected"),
    [
        pytest.param({}, (), None, 0, "", id="nothing"),
        pytest.param(
            {"StudyDate": "20240101-", "PatientID": "P1"}, (), None, 0,
            "PatientID=P1&StudyDate=20240101-", id="filters-sorted",
        ),
        pytest.param(
            {}, ("00100020", "0020000D", "00100020"), None, 0,
            "includefield=00100020&includefield=0020000D", id="includefield-repeated-sorted-deduplicated",
        ),
        pytest.param({}, (), 2, 0, "limit=2", id="limit-without-offset-zero"),
        pytest.param({}, (), 2, 4, "limit=2&offset=4", id="limit-and-offset"),
        pytest.param({}, (), None, 4, "offset=4", id="offset-without-limit"),
        pytest.param({}, (), 0, 0, "", id="limit-zero-means-unset"),
        pytest.param(
            {"AccessionNumber": "A&C=D#E[F]", "PatientName": "Doe^John Q"}, (), None, 0,
            "AccessionNumber=A%26C%3DD%23E%5BF%5D&PatientName=Doe%5EJohn%20Q", id="values-percent-encoded",
        ),
        pytest.param(
            {"PatientID": "ID*7*3", "StudyInstanceUID": "1.2,1.3"}, (), None, 0,
            "PatientID=ID*7*3&StudyInstanceUID=1.2,1.3", id="planner-wildcards-and-uid-lists-sent-as-they-are",
        ),
        pytest.param({"StudyDescription": "a/b?c"}, (), None, 0, "StudyDescription=a%2Fb%3Fc", id="slash-and-query"),
        pytest.param(
            {"ModalitiesInStudy": "CT", "00100020": "P 1"}, ("00080020", "00100010"), 10, 20,
            "00100020=P%201&ModalitiesInStudy=CT&includefield=00080020&includefield=00100010&limit=10&offset=20",
            id="everything",
        ),
    ],
)  # fmt: skip
def test_query_string(
    filters: dict[str, str], fields: tuple[str, ...], limit: int | None, offset: int, expected: str
) -> None:
    assert query_string(filters, fields, limit, offset) == expected


def test_query_string_keys_come_out_sorted() -> None:
    query = query_string({"StudyDate": "x", "AccessionNumber": "y"}, ("0020000D", "00080020"), 5, 10)
    keys = [pair.split("=")[0] for pair in query.split("&")]
    assert keys == sorted(keys)


# --- paging --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "asked"),
    [
        pytest.param(0, [(2, 0)], id="empty"),
        pytest.param(1, [(2, 0), (1, 1)], id="one-short-page-then-a-proof-of-its-end"),
        pytest.param(5, [(2, 0), (2, 2), (2, 4), (1, 5)], id="last-page-short-then-a-proof-of-its-end"),
        pytest.param(4, [(2, 0), (2, 2), (2, 4)], id="last-page-empty"),
    ],
)
async def test_page_size_asks_limit_and_growing_offsets_until_the_end_is_proved(
    pacs: aioresponses, make_source: MakeSource, count: int, asked: list[tuple[int, int]]
) -> None:
    fake = FakePacs(instances(count))
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await make_source(page_size=2).search_instances("1.2.3", "4.5", ())

    assert uids(rows) == uids(fake.rows)
    assert fake.asked == asked


async def test_without_page_size_the_additional_results_warning_makes_it_ask_again(
    pacs: aioresponses, source: HttpQidoSource
) -> None:
    fake = FakePacs(instances(7), cap=3, warn=True)
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await source.search_instances("1.2.3", "4.5", ())

    assert uids(rows) == uids(fake.rows)
    assert fake.asked == [(None, 0), (None, 3), (None, 6), (1, 7)]


async def test_a_silent_cap_without_counts_is_read_past(pacs: aioresponses, source: HttpQidoSource) -> None:
    fake = FakePacs(instances(5), cap=2)  # no Warning, no count: only asking past the end shows there is more
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await source.search_instances("1.2.3", "4.5", ())

    assert uids(rows) == uids(fake.rows)
    assert fake.asked == [(None, 0), (1, 2), (None, 3), (1, 5)]


async def test_a_silent_cap_that_ignores_offset_is_a_502_not_a_shorter_list(
    pacs: aioresponses, source: HttpQidoSource
) -> None:
    pacs.get(INSTANCES, callback=FakePacs(instances(5), cap=2, honour_offset=False), repeat=True)

    with pytest.raises(UpstreamBadResponse, match="ignores offset"):
        await source.search_instances("1.2.3", "4.5", ())


async def test_an_answer_with_a_count_costs_no_proof(pacs: aioresponses, source: HttpQidoSource) -> None:
    fake = FakePacs(instances(3))
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await source.search_instances("1.2.3", "4.5", (), expected=3)

    assert len(rows) == 3
    assert fake.asked == [(None, 0)]


async def test_one_study_uid_costs_no_proof(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(STUDIES, payload=[{tags.STUDY_INSTANCE_UID: element("UI", "1.2.3")}])

    rows = await source.search_studies({"StudyInstanceUID": "1.2.3"}, ())

    assert len(rows) == 1
    assert len(pacs.requests) == 1


@pytest.mark.parametrize(
    ("stored", "expected", "offsets", "returned"),
    [
        pytest.param(5, 5, [0, 2, 4], 5, id="until-the-count-is-reached"),
        pytest.param(5, 9, [0, 2, 4, 5], 5, id="until-an-empty-page-when-the-count-is-too-high"),
        pytest.param(5, 2, [0], 2, id="count-reached-by-the-first-page"),
    ],
)
async def test_expected_count_continues_after_short_pages(
    pacs: aioresponses, source: HttpQidoSource, stored: int, expected: int, offsets: list[int], returned: int
) -> None:
    fake = FakePacs(instances(stored), cap=2)  # caps silently: only the count says there is more
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await source.search_instances("1.2.3", "4.5", (), expected=expected)

    assert uids(rows) == uids(fake.rows[:returned])
    assert fake.asked == [(None, offset) for offset in offsets]


async def test_expected_count_pages_series_too(pacs: aioresponses, source: HttpQidoSource) -> None:
    rows = [{tags.SERIES_INSTANCE_UID: element("UI", f"4.5.{n}")} for n in range(3)]
    fake = FakePacs(rows, cap=1)
    pacs.get(SERIES, callback=fake, repeat=True)

    found = await source.search_series("1.2.3", (), expected=3)

    assert uids(found, tags.SERIES_INSTANCE_UID) == ["4.5.0", "4.5.1", "4.5.2"]
    assert fake.asked == [(None, 0), (None, 1), (None, 2)]


@pytest.mark.parametrize(
    ("page_size", "fake"),
    [
        pytest.param(2, FakePacs(instances(6), honour_offset=False), id="full-pages"),
        pytest.param(0, FakePacs(instances(6), cap=2, warn=True, honour_offset=False), id="warning-forever"),
    ],
)
async def test_pacs_ignoring_offset_without_a_count_is_a_502_not_the_first_page(
    pacs: aioresponses, make_source: MakeSource, page_size: int, fake: FakePacs
) -> None:
    pacs.get(INSTANCES, callback=fake, repeat=True)

    with pytest.raises(UpstreamBadResponse, match="ignores offset"):
        await make_source(page_size=page_size).search_instances("1.2.3", "4.5", ())
    assert len(fake.asked) == 1 + MAX_REPEATS  # the same page again and again: it stops there


async def test_pacs_ignoring_offset_with_a_count_stops_with_the_distinct_rows(
    pacs: aioresponses, make_source: MakeSource
) -> None:
    fake = FakePacs(instances(6), cap=2, honour_offset=False)
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await make_source(page_size=0).search_instances("1.2.3", "4.5", (), expected=6)

    assert uids(rows) == uids(fake.rows[:2])  # short of the count: the study read completes it from WADO-RS
    assert len(fake.asked) == 1 + MAX_REPEATS


async def test_many_pages_stay_under_the_page_guard(pacs: aioresponses, make_source: MakeSource) -> None:
    fake = FakePacs(instances(60))
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await make_source(page_size=1).search_instances("1.2.3", "4.5", ())

    assert uids(rows) == uids(fake.rows)
    assert len(fake.asked) == 61 < MAX_PAGES


async def test_page_guard_stops_a_pacs_that_never_ends(
    pacs: aioresponses, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_PAGES", 5)  # the real guard is 10,000 requests: too slow to reach in a test
    fake = FakePacs(instances(100), cap=1, warn=True)
    pacs.get(INSTANCES, callback=fake, repeat=True)

    with pytest.raises(UpstreamBadResponse, match="paging past 5 pages"):
        await make_source(page_size=1).search_instances("1.2.3", "4.5", ())
    assert len(fake.asked) == 5


# --- empty answers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(204, "", id="204"),
        pytest.param(200, "[]", id="200-empty-list"),
        pytest.param(200, "", id="200-empty-body"),
        pytest.param(200, " \r\n", id="200-blank-body"),
    ],
)
async def test_no_content_means_no_rows(pacs: aioresponses, source: HttpQidoSource, status: int, body: str) -> None:
    pacs.get(STUDIES, status=status, body=body)

    assert await source.search_studies({"PatientID": "P1"}, ()) == []


async def test_missing_study_means_no_series_or_instances(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(SERIES, status=404)
    pacs.get(INSTANCES, status=404)

    assert await source.search_series("1.2.3", ()) == []
    assert await source.search_instances("1.2.3", "4.5", ()) == []


async def test_404_on_studies_is_an_error(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(STUDIES, status=404)

    with pytest.raises(UpstreamBadResponse, match="HTTP 404"):
        await source.search_studies({}, ())


# --- merging duplicates --------------------------------------------------------------------------------------------


async def test_duplicate_instances_merge_keeping_attributes_only_the_later_one_has(
    pacs: aioresponses, source: HttpQidoSource
) -> None:
    first = instance("1.1", **{tags.INSTANCE_NUMBER: element("IS", 1), tags.SOP_CLASS_UID: element("UI")})
    other = instance("1.2")
    again = instance(
        "1.1",
        **{tags.INSTANCE_NUMBER: element("IS", 2), tags.SOP_CLASS_UID: element("UI", "1.2.840.10008.5.1.4.1.1.2")},
    )
    pacs.get(INSTANCES, payload=[first, other, again])
    pacs.get(INSTANCES, payload=[])  # nothing past them

    rows = await source.search_instances("1.2.3", "4.5", ())

    assert uids(rows) == ["1.1", "1.2"]
    merged = rows[0]
    assert merged[tags.INSTANCE_NUMBER]["Value"] == [1]  # the first seen wins
    assert merged[tags.SOP_CLASS_UID]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]  # an empty element is filled in


async def test_duplicates_across_pages_merge(pacs: aioresponses, make_source: MakeSource) -> None:
    rows = [
        {tags.SERIES_INSTANCE_UID: element("UI", "4.5.1")},
        {tags.SERIES_INSTANCE_UID: element("UI", "4.5.2")},
        {tags.SERIES_INSTANCE_UID: element("UI", "4.5.1"), tags.MODALITY: element("CS", "CT")},
        {tags.SERIES_INSTANCE_UID: element("UI", "4.5.3")},
    ]
    pacs.get(SERIES, callback=FakePacs(rows), repeat=True)

    found = await make_source(page_size=2).search_series("1.2.3", ())

    assert uids(found, tags.SERIES_INSTANCE_UID) == ["4.5.1", "4.5.2", "4.5.3"]
    assert found[0][tags.MODALITY]["Value"] == ["CT"]


@pytest.mark.parametrize(
    ("page_size", "order"),
    [
        pytest.param(1, ["1.1", "1.1", "1.2"], id="page-size-1-adjacent-duplicate"),
        pytest.param(2, ["1.1", "1.2", "1.1", "1.2", "1.3"], id="page-size-2-a-page-of-duplicates"),
    ],
)
async def test_a_page_of_duplicates_does_not_end_the_read(
    pacs: aioresponses, make_source: MakeSource, page_size: int, order: list[str]
) -> None:
    fake = FakePacs([instance(uid) for uid in order])  # honours limit and offset
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await make_source(page_size=page_size).search_instances("1.2.3", "4.5", ())

    assert uids(rows) == sorted(set(order))


@pytest.mark.parametrize(
    ("patients", "kept"),
    [
        pytest.param(["P1", "P2"], 2, id="two-patients-both-kept"),
        pytest.param(["P1", "P1"], 1, id="same-patient-merged"),
    ],
)
async def test_study_rows_are_keyed_by_study_and_patient(
    pacs: aioresponses, source: HttpQidoSource, patients: list[str], kept: int
) -> None:
    pacs.get(
        STUDIES,
        payload=[
            {tags.STUDY_INSTANCE_UID: element("UI", "1.2.3"), tags.PATIENT_ID: element("LO", patient)}
            for patient in patients
        ],
    )
    pacs.get(STUDIES, payload=[])  # nothing past them

    rows = await source.search_studies({}, ())

    assert len(rows) == kept
    assert uids(rows, tags.PATIENT_ID) == sorted(set(patients))


# --- failures ------------------------------------------------------------------------------------------------------

#: aioresponses arguments -> the error the source must raise, and a fragment of its message.
FAILURES = [
    pytest.param({"exception": TimeoutError()}, UpstreamTimeout, "BRIDGE_QIDO_TIMEOUT", id="timeout"),
    pytest.param({"exception": aiohttp.ServerDisconnectedError()}, UpstreamUnavailable, "dropped", id="disconnect"),
    pytest.param(
        {"exception": aiohttp.ClientOSError(104, "Connection reset by peer")}, UpstreamUnavailable, "dropped",
        id="reset",
    ),
    pytest.param(
        {"exception": aiohttp.ClientConnectionError("refused")}, UpstreamUnavailable, "failed", id="connection-error"
    ),
    pytest.param(
        {"exception": aiohttp.ClientPayloadError("Response payload is not completed")}, UpstreamBadResponse,
        "truncated", id="truncated-body",
    ),
    pytest.param({"body": "[{"}, UpstreamBadResponse, "malformed JSON", id="malformed-json"),
    pytest.param({"body": '{"0020000D": {}}'}, UpstreamBadResponse, "not a list", id="object-not-list"),
    pytest.param({"body": '[1, "x"]'}, UpstreamBadResponse, "not a list", id="list-of-non-objects"),
    pytest.param({"body": "[{}, null]"}, UpstreamBadResponse, "not a list", id="list-with-a-null"),
    pytest.param({"status": 400}, UpstreamBadResponse, "HTTP 400", id="400"),
    pytest.param({"status": 401}, UpstreamBadResponse, "credentials", id="401"),
    pytest.param({"status": 403}, UpstreamBadResponse, "credentials", id="403"),
    pytest.param({"status": 413}, UpstreamBadResponse, "too broad", id="413"),
    pytest.param({"status": 500}, UpstreamBadResponse, "HTTP 500", id="500"),
    pytest.param({"status": 429}, UpstreamUnavailable, "HTTP 429", id="429"),
    pytest.param({"status": 502}, UpstreamUnavailable, "HTTP 502", id="502"),
    pytest.param({"status": 503}, UpstreamUnavailable, "HTTP 503", id="503"),
    pytest.param({"status": 504}, UpstreamTimeout, "HTTP 504", id="504"),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "error", "fragment"), FAILURES)
async def test_failures_map_to_the_error_tree(
    pacs: aioresponses, source: HttpQidoSource, answer: dict[str, Any], error: type[UpstreamError], fragment: str
) -> None:
    pacs.get(STUDIES, **answer)

    with pytest.raises(error, match=fragment) as raised:
        await source.search_studies({}, ())
    assert type(raised.value) is error
    assert "QIDO /studies" in str(raised.value)


@pytest.fixture
async def slow_pacs() -> AsyncIterator[TestServer]:
    """A real server that answers QIDO only after a second."""
    released = asyncio.Event()

    async def studies(request: web.Request) -> web.Response:
        await asyncio.wait_for(released.wait(), 1)
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/dicom-web/studies", studies)
    server = TestServer(app)
    await server.start_server()
    yield server
    released.set()
    await server.close()


async def test_slow_pacs_times_out(slow_pacs: TestServer, make_source: MakeSource) -> None:
    source = make_source(str(slow_pacs.make_url("/dicom-web")), timeout=0.05)

    with pytest.raises(UpstreamTimeout, match=r"within 0\.05 s"):
        await source.search_studies({}, ())


async def test_refused_connection_is_unavailable(make_source: MakeSource) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and that nobody listens on now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = make_source(f"http://127.0.0.1:{port}/dicom-web", timeout=5)

    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await source.search_studies({}, ())


# --- credentials and headers ---------------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@pytest.mark.parametrize(
    ("base_url", "kwargs", "authorization"),
    [
        pytest.param("http://alice:s3cret@pacs.test/dicom-web", {}, basic("alice", "s3cret"), id="url-userinfo"),
        pytest.param(
            "http://alice:s3cr%40t%3A@pacs.test/dicom-web", {}, basic("alice", "s3cr@t:"), id="url-userinfo-encoded"
        ),
        pytest.param(BASE, {"username": "alice", "password": "s3cret"}, basic("alice", "s3cret"), id="arguments"),
        pytest.param(BASE, {"token": "t0ken"}, "Bearer t0ken", id="token"),
        pytest.param(BASE, {}, None, id="anonymous"),
    ],
)
async def test_credentials_are_sent_as_an_authorization_header(
    pacs: aioresponses, make_source: MakeSource, base_url: str, kwargs: dict[str, str], authorization: str | None
) -> None:
    pacs.get(STUDIES, payload=[])  # matches only the address without userinfo

    await make_source(base_url, **kwargs).search_studies({}, ())

    [(url, headers)] = sent(pacs)
    assert url.user is None
    assert url.password is None
    assert headers.get("Authorization") == authorization


@pytest.mark.parametrize(("answer", "error", "fragment"), FAILURES)
async def test_credentials_appear_in_no_error_message(
    pacs: aioresponses,
    make_source: MakeSource,
    answer: dict[str, Any],
    error: type[UpstreamError],
    fragment: str,
) -> None:
    pacs.get(STUDIES, **answer)
    source = make_source("http://alice:s3cret@pacs.test/dicom-web")

    assert source.description == BASE
    with pytest.raises(error) as raised:
        await source.search_studies({}, ())
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in raised.value.diagnostics
    assert "alice" not in str(raised.value)


async def test_token_appears_in_no_error_message(pacs: aioresponses, make_source: MakeSource) -> None:
    pacs.get(STUDIES, status=401)
    source = make_source(token="t0ken")

    with pytest.raises(UpstreamBadResponse) as raised:
        await source.search_studies({}, ())
    assert "t0ken" not in str(raised.value)


async def test_accept_header_asks_for_dicom_json_first(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(STUDIES, payload=[])

    await source.search_studies({}, ())

    [(_, headers)] = sent(pacs)
    assert headers["Accept"].split(",")[0].strip() == "application/dicom+json"


async def test_query_reaches_the_pacs_percent_encoded(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(STUDIES, payload=[])

    await source.search_studies({"AccessionNumber": "A&B=C"}, ("00100020",))

    [(url, _)] = sent(pacs)
    assert url.path == "/dicom-web/studies"
    assert url.query["AccessionNumber"] == "A&B=C"
    assert url.query.getall("includefield") == ["00100020"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param({"payload": []}, None, id="ok"),
        pytest.param({"status": 204}, None, id="no-content"),
        pytest.param({"status": 404}, UpstreamBadResponse, id="wrong-base-url"),
        pytest.param({"status": 401}, UpstreamBadResponse, id="bad-credentials"),
        pytest.param({"status": 503}, UpstreamUnavailable, id="down"),
    ],
)
async def test_check(
    pacs: aioresponses, source: HttpQidoSource, answer: dict[str, Any], error: type[UpstreamError] | None
) -> None:
    pacs.get(STUDIES, **answer)

    if error is None:
        await source.check()
    else:
        with pytest.raises(error):
            await source.check()
    [(url, _)] = sent(pacs)
    assert url.query == {"limit": "1"}


# --- review findings -----------------------------------------------------------------------------------------------


class ShufflingPacs(FakePacs):
    """Ignores offset and sends its rows in a new order each time, so no two pages are equal."""

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.rows = self.rows[1:] + self.rows[:1]
        return super().__call__(url, **kwargs)


async def test_a_pacs_ignoring_offset_with_shuffled_pages_is_not_paged_forever(
    pacs: aioresponses, source: HttpQidoSource
) -> None:
    fake = ShufflingPacs(instances(5), honour_offset=False)
    pacs.get(INSTANCES, callback=fake, repeat=True)

    rows = await source.search_instances("1.2.3", "4.5", (), expected=10)  # a count it never reaches

    assert sorted(uids(rows)) == sorted(uids(instances(5)))
    assert len(fake.asked) == 1 + MAX_REPEATS


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_an_answer_beyond_the_size_cap_is_a_502(
    pacs: aioresponses, make_source: MakeSource, declared: bool
) -> None:
    body = json.dumps(instances(200)).encode()
    headers = {} if declared else {"Transfer-Encoding": "chunked"}
    pacs.get(INSTANCES, body=body, headers=headers, content_type="application/dicom+json")
    source = make_source(max_bytes=2048)

    with pytest.raises(UpstreamBadResponse, match="exceeds 2048 bytes"):
        await source.search_instances("1.2.3", "4.5", ())


async def test_series_metadata_is_read_from_wado_rs(pacs: aioresponses, source: HttpQidoSource) -> None:
    pacs.get(f"{BASE}/studies/1.2.3/series/4.5/metadata", payload=instances(3))

    assert uids(await source.series_metadata("1.2.3", "4.5")) == uids(instances(3))
