"""What an operator sees: metrics, request ids end to end, the batched access log."""

from __future__ import annotations

import io
import logging
import re
import sys
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import ConfigError
from bridge.qido.http import HttpQidoSource
from bridge.settings import load_settings
from bridge.telemetry import REQUEST_ID
from bridge.web.observe import AccessLog
from tests.conftest import start_client
from tests.support.mock_pacs import PacsMock
from tests.test_cache import STUDY, pacs


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_routes_and_cache_outcomes() -> None:
    # The metrics are the process's: other tests count too, so what is checked is what these requests added.
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), pacs())
    try:
        before = samples(await (await client.get("/metrics")).text())
        for _ in range(2):
            await client.get(f"/fhir/ImagingStudy/{STUDY}")  # a miss, then a hit
        await client.get("/fhir/nowhere")
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    after = samples(text)

    def added(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    study = {"method": "GET", "route": "/fhir/ImagingStudy/{id}"}
    assert added("bridge_http_requests_total", **study, status="200") == 2
    assert added("bridge_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert added("bridge_cache_reads_total", outcome="miss") == 1
    assert added("bridge_cache_reads_total", outcome="hit") == 1
    assert ("bridge_cache_reads_total", frozenset({("outcome", "stale-if-error")})) in after  # even if none yet
    assert added("bridge_http_request_duration_seconds_count", route="/fhir/ImagingStudy/{id}") == 2


async def test_request_ids_are_echoed_or_made() -> None:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), pacs())
    try:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert given.headers["X-Request-ID"] == "abc-123"
        hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
        made = hostile.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", made)
    finally:
        await client.close()


async def test_the_request_id_travels_to_the_pacs() -> None:
    source = HttpQidoSource("http://pacs.test/dicom-web")
    token = REQUEST_ID.set("req-42")
    try:
        with PacsMock() as mocked:
            mocked.get(re.compile(r"^http://pacs\.test/dicom-web/studies.*"), status=204)
            await source.search_studies({}, ())
            ((call,),) = mocked.requests.values()
            assert call.kwargs["headers"]["X-Request-ID"] == "req-42"
    finally:
        REQUEST_ID.reset(token)
        await source.close()


async def test_the_access_log_writes_json_lines_in_batches() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    for n in range(3):
        log.record(1764255600.25, f"r{n}", "GET", f'/fhir/ImagingStudy/"{n}', 200, 0.0123456)
    assert stream.getvalue() == b""  # nothing written on the request's path
    await log.flush()
    lines: list[dict[str, Any]] = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["id"] for line in lines] == ["r0", "r1", "r2"]
    assert lines[0] == {
        "time": 1764255600.25, "id": "r0", "method": "GET", "path": '/fhir/ImagingStudy/"0', "status": 200, "ms": 12.35
    }  # fmt: skip


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/fhir/ImagingStudy/2.25.1", "/fhir/ImagingStudy/2.25.1"),
        ("/fhir/ImagingStudy?patient=PAT-123&_count=5&modality=CT",
         "/fhir/ImagingStudy?patient=***&_count=5&modality=CT"),
        ("/fhir/ImagingStudy?subject%3Aidentifier=urn%3Aoid%3A1%7CPAT-123",
         "/fhir/ImagingStudy?subject%3Aidentifier=***"),
        ("/fhir/ImagingStudy?patient.identifier=PAT-123&based-on:identifier=ACC-9&identifier=ACC-9",
         "/fhir/ImagingStudy?patient.identifier=***&based-on:identifier=***&identifier=***"),
        ("/fhir/ImagingStudy?subject:Patient=PAT-123&patient:PAT-123=1&PAT-123&Patient=PAT-123",
         "/fhir/ImagingStudy?subject:Patient=***&***&***&***"),  # unknown names may be identifiers themselves
        ("/fhir/ImagingStudy?_id=2.25.1&started=ge2024&_elements=identifier&patient",
         "/fhir/ImagingStudy?_id=***&started=***&_elements=identifier&patient"),
        ("/fhir/Patient/PAT-123/ImagingStudy?modality=CT&_id=2.25.1",
         "/fhir/Patient/***/ImagingStudy?modality=CT&_id=***"),  # the compartment's path names its patient
        ("/fhir/Patient/PAT%20123/ImagingStudy", "/fhir/Patient/***/ImagingStudy"),
    ],
)  # fmt: skip
async def test_the_access_log_keeps_patients_out_of_query_strings(path: str, logged: str) -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    log.record(1764255600.25, "r1", "GET", path, 200, 0.001)
    await log.flush()
    assert orjson.loads(stream.getvalue())["path"] == logged


async def test_access_log_lines_are_one_line_each_whatever_the_path() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    log.record(1764255600.25, "r1", "GET", "/fhir/x\u2028y\u2029\n", 404, 0.001)
    log.record(1764255600.25, "r2", "GET", "/fhir/x", 404, 0.001)
    await log.flush()
    lines = stream.getvalue().decode().splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == ["r1", "r2"]


async def test_clients_cannot_grow_the_metric_labels() -> None:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), pacs())
    try:
        for name in ("PROPFIND", "MKCOL", "PURGE"):  # methods the HTTP parser knows (others it refuses itself)
            await client.request(name, "/fhir/metadata")
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    assert "PROPFIND" not in text
    assert 'method="OTHER"' in text


async def test_a_broken_stdout_loses_lines_not_the_service() -> None:
    class Broken(io.BytesIO):
        def write(self, data: Any) -> int:
            raise BrokenPipeError

    log = AccessLog(Broken())
    log.record(1764255600.25, "r1", "GET", "/healthz", 200, 0.001)
    await log.flush()  # no exception
    assert log.dropped == 1


def test_the_bridges_own_log_lines_name_their_request_as_text_or_json() -> None:
    from bridge.logs import JsonFormatter, RequestIdFilter, TextFormatter

    def formatted(formatter: logging.Formatter, exc_info: Any = None) -> str:
        record = logging.LogRecord(
            "bridge.studies", logging.WARNING, __file__, 1, "series %s: %s", ("1.2", "x"), exc_info
        )
        RequestIdFilter().filter(record)
        return formatter.format(record)

    token = REQUEST_ID.set("req-7")
    try:
        assert formatted(TextFormatter()).endswith("WARNING bridge.studies [req-7]: series 1.2: x")
        try:
            raise ValueError("boom")
        except ValueError:
            line = orjson.loads(formatted(JsonFormatter(), sys.exc_info()))
    finally:
        REQUEST_ID.reset(token)
    assert (line["id"], line["level"], line["message"]) == ("req-7", "WARNING", "series 1.2: x")
    assert "ValueError: boom" in line["exception"]
    outside = orjson.loads(formatted(JsonFormatter()))
    assert outside["id"] == "-"


def test_log_format_is_a_setting() -> None:
    assert load_settings({"BRIDGE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="BRIDGE_LOG_FORMAT"):
        load_settings({"BRIDGE_LOG_FORMAT": "xml"})
