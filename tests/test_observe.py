"""What an operator sees: metrics, request ids end to end, the batched access log."""

from __future__ import annotations

import io
import re
from typing import Any

import orjson

from bridge.qido.http import HttpQidoSource
from bridge.settings import load_settings
from bridge.telemetry import REQUEST_ID
from bridge.web.observe import AccessLog
from tests.conftest import start_client
from tests.support.mock_pacs import PacsMock
from tests.test_cache import STUDY, pacs


async def test_metrics_count_requests_routes_and_cache_outcomes() -> None:
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web"}), pacs())
    try:
        for _ in range(2):
            await client.get(f"/fhir/ImagingStudy/{STUDY}")
        await client.get("/fhir/nowhere")
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    assert re.search(
        r'bridge_http_requests_total\{method="GET",route="/fhir/ImagingStudy/\{id\}",status="200"\} \d', text
    )
    assert 'route="unmatched",status="404"' in text
    assert re.search(r'bridge_cache_reads_total\{outcome="hit"\} \d', text)
    assert "bridge_http_request_duration_seconds_bucket" in text


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
