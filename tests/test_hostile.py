"""Hundreds of randomized hostile requests through the HTTP layer (seeded, so a failure can be replayed).

Every answer must be well-formed: never a 500, every error under /fhir an OperationOutcome, every body that
claims to be FHIR valid R5.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from bridge import logs
from bridge.errors import MisdirectedRequest, UpstreamUnavailable
from bridge.settings import Settings, load_settings
from bridge.web.hosts import HostCheck
from bridge.web.server import ADMIN
from tests.conftest import start_client
from tests.support.fhircheck import validate
from tests.test_search_web import pacs

PIECES = ["patient", "subject", "identifier", "started", "modality", "series", "instance", "dicom-class",
          "body-site", "based-on", "status", "endpoint", "_id", "_count", "_offset", "_summary", "_elements",
          "_include", "_format", "_total", "_sort", "patient.identifier", "junk", ""]  # fmt: skip
MODIFIERS = ["", ":missing", ":identifier", ":of-type", ":exact", ":not", ":Patient", ":", "::"]
VALUES = ["P1", "2.25.3", "urn:oid:2.25.3", "*", "?", "\\", "a,b", ",", "|", "a|b|c", "ge2024", "ap2024",
          "2024-13-45", "eq2024-03-05T10:00:00+99:00", "true", "maybe", "-1", "999999999999", "0", "ä/ 01",
          "\u0000", "%00", "%2A", "x" * 300, "Patient/", "Group/1", "urn:dicom:uid|urn:oid:1.2", "<script>",
          "'; DROP TABLE", "json", "xml", "count", "identifier,foo", "ImagingStudy:endpoint", "*", "²", "٣",
          "http://evil/fhir/Patient/P1", "x\n2026-01-01 forged"]  # fmt: skip
PATHS = ["/fhir/ImagingStudy", "/fhir/ImagingStudy/_search", "/fhir/ImagingStudy/2.25.3", "/fhir/ImagingStudy/x",
         "/fhir/ImagingStudy/1..2", "/fhir/Endpoint/x", "/fhir/metadata", "/fhir/", "/fhir/Patient/1",
         "/fhir/ImagingStudy/%2e%2e/%2e%2e", "/fhir//ImagingStudy", "/healthz", "/readyz", "/metrics"]  # fmt: skip
HEADERS = [("Accept", "application/fhir+xml"), ("Accept", "*/*;q=0"), ("Accept", "garbage/;;"),
           ("If-None-Match", '"x"'), ("If-None-Match", "*"), ("If-Modified-Since", "yesterday"),
           ("Cache-Control", "no-cache, max-age=x"), ("Prefer", "handling=strict"), ("X-Request-ID", "../%7f<>"),
           ("Content-Type", "application/json"), ("Pragma", "no-cache"), ("Prefer", "handling=lenient"),
           ("Host", "evil.example"),
           ("Content-Type", "application/x-www-form-urlencoded; charset=x-unknown")]  # fmt: skip


def hostile_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes | None]:
    method = rng.choice(["GET", "GET", "GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS"])
    params = "&".join(
        f"{rng.choice(PIECES)}{rng.choice(MODIFIERS)}={quote(rng.choice(VALUES), safe=rng.choice(['', '*,|:']))}"
        for _ in range(rng.randint(0, 6))
    )
    path = rng.choice(PATHS) + (f"?{params}" if params else "")
    headers = dict(rng.sample(HEADERS, rng.randint(0, 3)))
    body = None
    if method == "POST":
        body = rng.choice([params.encode(), b"\xff\xfe garbage", b"patient=P1", b"x" * 70_000,
                           "patient=P1".encode("utf-16-le")])  # fmt: skip
        headers.setdefault("Content-Type", rng.choice(["application/x-www-form-urlencoded", "text/plain"]))
    return method, path, headers, body


@pytest.mark.parametrize("seed", range(5))
async def test_hostile_requests_get_well_formed_answers(seed: int) -> None:
    rng = random.Random(seed)
    client = await start_client(load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web",
                                               "BRIDGE_ACCESS_LOG": "false"}), pacs(5))  # fmt: skip
    try:
        for _ in range(100):
            method, path, headers, body = hostile_request(rng)
            response = await client.request(method, path, headers=headers, data=body)
            text = await response.read()
            where = f"{method} {path[:120]} {headers} -> {response.status}"
            assert response.status < 500, where
            # The client normalizes some paths (/fhir/x/%2e%2e/%2e%2e is /): judge by what was asked for.
            if not response.url.path.startswith("/fhir") or method == "HEAD" or response.status == 304:
                continue
            assert response.content_type in ("application/fhir+json", "application/json"), where
            resource = await response.json()
            validate(resource)
            if response.status >= 400:
                assert resource["resourceType"] == "OperationOutcome", where
            assert text
    finally:
        await client.close()


# ---- requests crafted against one weakness each ----


@pytest.mark.parametrize("query", ["_count=²", "_offset=²", "_count=٣", "_count=%C2%B2"])
async def test_unicode_digits_are_a_400_not_a_500(query: str) -> None:
    async with running() as client:
        response = await client.get(f"/fhir/ImagingStudy?{query}")
        assert response.status == 400
        body = await response.json()
        validate(body)
        assert "takes a whole number" in body["issue"][0]["diagnostics"]


def settings_of(**environ: str) -> Settings:
    return load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_ACCESS_LOG": "false",
                          **{f"BRIDGE_{key.upper()}": value for key, value in environ.items()}})  # fmt: skip


@asynccontextmanager
async def running(**environ: str) -> AsyncIterator[TestClient]:
    client = await start_client(settings_of(**environ), pacs(3))
    try:
        yield client
    finally:
        await client.close()


def links_of(body: dict[str, Any]) -> list[str]:
    return [link["url"] for link in body["link"]] + [entry["fullUrl"] for entry in body.get("entry", [])]


@pytest.mark.parametrize("path", ["/fhir/ImagingStudy?_count=1", "/fhir/metadata", "/fhir/ImagingStudy/2.25.1"])
async def test_an_unknown_host_is_refused_when_links_come_from_the_host(path: str) -> None:
    async with running() as client:
        response = await client.get(path, headers={"Host": "evil.example"})
        assert response.status == 421
        body = await response.json()
        validate(body)
        assert "BRIDGE_PUBLIC_URL" in body["issue"][0]["diagnostics"]
        assert "BRIDGE_ALLOWED_HOSTS" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize("host", ["localhost:8080", "LOCALHOST", "127.0.0.1:1", "[::1]:8080", "localhost."])
async def test_loopback_hosts_shape_links_by_default(host: str) -> None:
    async with running() as client:
        response = await client.get("/fhir/ImagingStudy?_count=1", headers={"Host": host})
        assert response.status == 200
        assert all(url.lower().startswith(f"http://{host.lower()}/fhir/") for url in links_of(await response.json()))


async def test_with_a_public_url_the_host_shapes_no_link() -> None:
    async with running(public_url="https://fhir.example.org/fhir") as client:
        response = await client.get("/fhir/ImagingStudy?_count=1", headers={"Host": "evil.example"})
        assert response.status == 200
        urls = links_of(await response.json())
        assert urls
        assert all(url.startswith("https://fhir.example.org/fhir/") for url in urls)


async def test_allowed_hosts_replace_the_defaults() -> None:
    async with running(allowed_hosts="fhir.internal, 10.1.2.3") as client:
        for host, status in (("fhir.internal:8080", 200), ("10.1.2.3", 200), ("localhost", 421), ("evil", 421)):
            response = await client.get("/fhir/metadata", headers={"Host": host})
            assert response.status == status, host


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_answer_any_host(path: str) -> None:
    async with running() as client:
        assert (await client.get(path, headers={"Host": "10.0.0.7:8080"})).status == 200


@pytest.mark.parametrize(
    ("header", "allowed"),
    [("localhost", True), ("localhost:8080", True), ("localhost:", True), ("[::1]:80", True), ("[0:0::1]", True),
     ("Localhost", True), ("localhost:80x", False), ("localhost.evil", False), ("[::1", False), ("", False),
     ("evil@localhost", False), ("localhost:8080:1", False), ("[::2]", False)],
)  # fmt: skip
def test_host_check(header: str, allowed: bool) -> None:
    check = HostCheck(frozenset({"localhost", "[::1]"}))
    if allowed:
        check(header)
    else:
        with pytest.raises(MisdirectedRequest):
            check(header)


# ---- logs: no client value starts a line of its own ----

FORGED = "2026-01-01 00:00:00,000 ERROR bridge.web [-]: forged"


@pytest.fixture(params=["text", "json"])
def bridge_log(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """The bridge's own log, as ``serve`` configures it, captured at INFO."""
    stream = io.StringIO()
    written = logs.handler(request.param, stream)
    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    level = root.level
    root.addHandler(written)
    root.setLevel(logging.INFO)
    server.addFilter(logs.MALFORMED_REQUESTS)
    try:
        yield request.param, stream
    finally:
        server.removeFilter(logs.MALFORMED_REQUESTS)
        root.removeHandler(written)
        root.setLevel(level)


def records(log_format: str, stream: io.StringIO) -> list[tuple[str, str]]:
    """The log's records as (logger, line); as JSON, each line must be one object."""
    found = []
    for line in stream.getvalue().splitlines():
        if log_format == "json":
            record = orjson.loads(line)
            found.append((record["logger"], record["message"]))
        else:
            found.append((line.split(" ")[3] if line.count(" ") > 3 else "", line))
    return found


async def test_an_ignored_parameters_name_cannot_forge_a_log_line(bridge_log: tuple[str, io.StringIO]) -> None:
    log_format, stream = bridge_log
    async with running() as client:
        name = quote(f"x\n{FORGED}\r\u2028\x1b[2J", safe="")
        response = await client.get(f"/fhir/ImagingStudy?{name}=1", headers={"Prefer": "handling=lenient"})
        assert response.status == 200
    lines = [line for _, line in records(log_format, stream)]
    ignored = [line for line in lines if "ignored unknown parameters" in line]
    assert len(ignored) == 1
    assert not [line for line in lines if line.startswith(FORGED)]
    if log_format == "text":
        assert f"x\\n{FORGED}\\r\\u2028\\x1b[2J" in ignored[0]


async def test_a_traceback_in_the_text_log_cannot_pass_for_a_record() -> None:
    stream = io.StringIO()
    log = logging.getLogger("tests.hostile.traceback")
    log.addHandler(logs.handler("text", stream))
    log.propagate = False
    try:
        raise ValueError(f"client value\n{FORGED}")
    except ValueError:
        log.exception("failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR tests.hostile.traceback [-]: failed")
    assert rest
    assert all(line.startswith("    ") for line in rest)


async def raw_exchange(client: TestClient, request: bytes) -> bytes:
    """``request`` sent as is on a connection of its own; what the server answers before it closes."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nBad Header\x01: y\r\n\r\n",
        b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nX: a\x00b\r\n\r\n",
        b"GET /fhir/metadata\r\n\x1b[2J HTTP/1.1\r\n\r\n",
    ],
    ids=["header-name", "header-value", "request-line"],
)
async def test_a_malformed_request_is_one_log_line_without_traceback(
    bridge_log: tuple[str, io.StringIO], request_bytes: bytes
) -> None:
    log_format, stream = bridge_log
    async with running() as client:
        answer = await raw_exchange(client, request_bytes)
    assert answer.startswith(b"HTTP/1.0 400")
    lines = [line for logger, line in records(log_format, stream) if logger == "aiohttp.server"]
    assert len(lines) == 1, lines
    assert "malformed request from 127.0.0.1: 400" in lines[0]
    assert "Traceback" not in stream.getvalue()


# ---- slow clients: a bound on the time to send headers and body ----

READ_TIMEOUT = 0.5  # BRIDGE_CLIENT_READ_TIMEOUT in these tests
#: Far beyond the bound: a server that holds the connection past it has no bound.
NO_BOUND = 8.0


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.1) -> None:
    """What a hostile client does: ``data`` a byte at a time, until the server closes the connection."""
    for byte in data:
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)  # the client's pace, not a wait for the server


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed the connection. Closing with trickled bytes unread, it resets the
    connection, and ``reader.read()`` would raise and lose an answer already received: read as it arrives."""
    answer = b""
    try:
        while chunk := await reader.read(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


async def held_for(client: TestClient, head: bytes, slow: bytes) -> tuple[float, bytes]:
    """``head`` sent at once and ``slow`` trickled: how long the server keeps the connection, and its answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    started = asyncio.get_running_loop().time()
    writer.write(head)
    trickling = asyncio.create_task(trickle(writer, slow))
    try:
        answer = await asyncio.wait_for(until_closed(reader), timeout=NO_BOUND)
        return asyncio.get_running_loop().time() - started, answer
    finally:
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        writer.close()


async def test_headers_trickled_a_byte_at_a_time_lose_the_connection() -> None:
    async with running(client_read_timeout=str(READ_TIMEOUT)) as client:
        held, answer = await held_for(
            client, b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n", b"X-Slow: " + b"a" * 200
        )
    assert answer == b""  # closed, never answered
    assert READ_TIMEOUT <= held < 4 * READ_TIMEOUT + 1


async def test_a_body_trickled_a_byte_at_a_time_is_a_408_and_the_connection_closes() -> None:
    async with running(client_read_timeout=str(READ_TIMEOUT)) as client:
        held, answer = await held_for(
            client,
            b"POST /fhir/ImagingStudy/_search HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n",
            b"patient=P1&" + b"x" * 189,
        )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in head
    outcome = orjson.loads(body)
    validate(outcome)
    assert "BRIDGE_CLIENT_READ_TIMEOUT" in outcome["issue"][0]["diagnostics"]
    assert held < 4 * READ_TIMEOUT + 1  # the 408 after the bound, the close after draining for as long


async def test_a_body_sent_in_time_is_read() -> None:
    async with running(client_read_timeout=str(READ_TIMEOUT)) as client:
        response = await client.post("/fhir/ImagingStudy/_search", data={"patient": "P1"})
        assert response.status == 200


# ---- what the probes tell, and to whom ----


async def test_readiness_says_unavailable_without_naming_the_pacs() -> None:
    source = pacs(1)
    source.fail_with = UpstreamUnavailable("cannot connect to the PACS at pacs.internal:8042")
    client = await start_client(settings_of(qido_url="http://pacs.internal:8042/dicom-web"), source)
    try:
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert await ready.json() == {"status": "unavailable"}
    finally:
        await client.close()


async def test_readiness_details_are_a_setting() -> None:
    source = pacs(1)
    source.fail_with = UpstreamUnavailable("cannot connect to the PACS at pacs.internal:8042")
    client = await start_client(settings_of(health_details="true"), source)
    try:
        ready = await client.get("/readyz")
        assert (ready.status, await ready.json()) == (
            503, {"status": "unavailable", "reason": "cannot connect to the PACS at pacs.internal:8042"}
        )  # fmt: skip
    finally:
        await client.close()


async def test_an_admin_port_moves_probes_and_metrics_off_the_public_listener() -> None:
    source = pacs(1)
    client = await start_client(settings_of(admin_port="0"), source)
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status == 404, path
        assert (await client.get("/fhir/metadata")).status == 200
        host, port = client.server.app[ADMIN].addresses[0][:2]
        assert host == "127.0.0.1"  # BRIDGE_ADMIN_HOST's default
        async with aiohttp.ClientSession(f"http://{host}:{port}") as admin:
            async with admin.get("/healthz") as alive:
                assert alive.status == 200
            async with admin.get("/metrics") as metrics:
                assert "bridge_http_requests_total" in await metrics.text()
            async with admin.get("/fhir/metadata") as fhir:
                assert fhir.status == 404  # the admin listener serves no FHIR
            source.fail_with = UpstreamUnavailable("cannot connect to the PACS at pacs.internal:8042")
            async with admin.get("/readyz") as ready:
                assert ready.status == 503
                assert (await ready.json())["reason"] == "cannot connect to the PACS at pacs.internal:8042"
    finally:
        await client.close()
