"""The bridge behind a proxy that makes the real Orthanc go down, stall, answer garbage, cut bodies short and drop
connections, then recover: every failure an OperationOutcome with the right status, and service resumes."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientResponse

from tests.conftest import orthanc_settings, start_client
from tests.support.dicomgen import StudySpec
from tests.support.orthanc import OrthancServer
from tests.support.toxic_proxy import ToxicProxy
from tests.support.waiting import eventually

# (mode, status, words the OperationOutcome must hold)
FAILURES = [
    ("down", 503, "dropped the connection"),
    ("drop", 503, "dropped the connection"),
    ("stall", 504, "within 0.5 s"),
    ("garbage", 502, "malformed JSON"),
    ("cut", 502, "truncated"),
]


@pytest.mark.parametrize(("mode", "status", "words"), FAILURES)
async def test_each_failure_is_answered_clearly(
    proxy: ToxicProxy, orthanc: OrthancServer, studies: dict[str, StudySpec], mode: str, status: int, words: str
) -> None:
    settings = orthanc_settings(orthanc, qido_url=proxy.url("/dicom-web"), qido_timeout="0.5", qido_retries="1",
                                cache_ttl="0", cache_stale_while_revalidate="0", cache_stale_if_error="0")  # fmt: skip
    client = await start_client(settings)
    try:
        proxy.mode = mode
        response = await asyncio.wait_for(client.get(f"/fhir/ImagingStudy/{studies['full'].uid}"), timeout=10)
        body = await response.json()
        assert response.status == status, body
        assert body["resourceType"] == "OperationOutcome"
        assert words in body["issue"][0]["diagnostics"]
        assert orthanc.password not in str(body)
    finally:
        await client.close()


async def test_service_resumes_when_the_pacs_recovers(
    proxy: ToxicProxy, orthanc: OrthancServer, studies: dict[str, StudySpec]
) -> None:
    settings = orthanc_settings(orthanc, qido_url=proxy.url("/dicom-web"), qido_retries="0", breaker_threshold="2",
                                breaker_cooldown="0.5", cache_ttl="0", cache_stale_while_revalidate="0",
                                cache_stale_if_error="0")  # fmt: skip
    client = await start_client(settings)
    url = f"/fhir/ImagingStudy/{studies['full'].uid}"
    try:
        proxy.mode = "down"
        statuses = [(await client.get(url)).status for _ in range(3)]
        assert statuses == [503, 503, 503]
        asked = proxy.connections
        opened = await client.get(url)
        assert opened.status == 503
        assert "Retry-After" in opened.headers
        assert proxy.connections == asked  # the breaker answered at once, without asking the PACS
        proxy.mode = "pass"

        async def answered() -> ClientResponse | None:
            response = await client.get(url)
            return response if response.status == 200 else None

        recovered = await eventually(answered, what="a 200 once the breaker's cooldown is over")
        assert (await recovered.json())["id"] == studies["full"].uid
    finally:
        await client.close()


async def test_a_stored_study_outlives_a_failing_pacs(
    proxy: ToxicProxy, orthanc: OrthancServer, studies: dict[str, StudySpec]
) -> None:
    settings = orthanc_settings(orthanc, qido_url=proxy.url("/dicom-web"), qido_timeout="0.5", qido_retries="0",
                                cache_ttl="0", cache_stale_while_revalidate="0")  # fmt: skip
    client = await start_client(settings)
    url = f"/fhir/ImagingStudy/{studies['full'].uid}"
    try:
        assert (await client.get(url)).status == 200
        for mode in ("down", "stall", "garbage", "cut", "drop"):
            proxy.mode = mode
            response = await client.get(url)
            assert (response.status, response.headers["X-Cache"]) == (200, "STALE-IF-ERROR"), mode
    finally:
        await client.close()
