"""A real viewer through the Endpoint: a Cornerstone3D page (viewer/, bundled by esbuild) in headless Chromium,
served from another origin than the bridge, reads an ImagingStudy with a bearer token, follows ``endpoint`` to the
Endpoint, and renders the first frame from WADO-RS URLs built from the Endpoint's ``address`` alone.

Against Orthanc (the bridge's gateway forwarding to it) and against the embedded default (no configuration: the
pydicom samples folder), with pydicom's CT_small and MR_small. What is checked is what a user would see: pixels
on the canvas (a blank canvas is the usual silent failure), every pixel request sent to the Endpoint's address,
and a token for another patient getting nothing. A screenshot of each rendered frame is saved under pytest's
basetemp, in ``viewer-screenshots/``.

Nothing here is skipped: without Chromium, npm or the page's packages the tests fail."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydicom
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response
from pydicom.data import get_testdata_file

from bridge.settings import Settings, load_settings
from bridge.web.app import create_app
from bridge.web.server import server_options
from tests.conftest import orthanc_settings
from tests.support import viewer_page
from tests.support.orthanc import OrthancServer
from tests.support.standin_tokens import Verifier

pytestmark = [pytest.mark.browser, pytest.mark.viewer]

SAMPLES = ("CT_small.dcm", "MR_small.dcm")
SMART = {"BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks", "BRIDGE_AUDIT_LOG": "off"}


@dataclass(frozen=True)
class Sample:
    name: str
    patient: str
    study: str
    series: str
    instance: str

    @property
    def token(self) -> str:
        return f"patient:{self.patient}"  # tests/support/standin_tokens.py


def sample_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom has no test file {name}"
    return Path(path)


def sample(name: str) -> Sample:
    ds = pydicom.dcmread(sample_file(name), stop_before_pixels=True)
    return Sample(name, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


CT, MR = (sample(name) for name in SAMPLES)


@pytest.fixture(scope="session")
def dist() -> Path:
    return viewer_page.build()


@pytest.fixture
async def page_server(dist: Path) -> AsyncIterator[TestServer]:
    server = await viewer_page.serve(dist)
    yield server
    await server.close()


@pytest.fixture(scope="module")
def orthanc_samples(orthanc: OrthancServer) -> None:
    orthanc.upload_many(sample_file(name).read_bytes() for name in SAMPLES)


def origin(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_bridge(settings: Settings, port: int) -> AsyncIterator[str]:
    """The bridge on ``port`` with stand-in tokens; yields its origin."""
    server = TestServer(create_app(settings, None, Verifier()), host="127.0.0.1", port=port)
    await server.start_server(**server_options(settings))
    try:
        yield origin(server)
    finally:
        await server.close()


@pytest.fixture(params=[pytest.param("orthanc", marks=pytest.mark.integration), "embedded"])
async def bridge(request: pytest.FixtureRequest, page_server: TestServer) -> AsyncIterator[str]:
    """The bridge, with the page's origin allowed, its Endpoint the gateway on its own origin: in front of Orthanc
    loaded with the samples, or with no PACS configured at all (the embedded pydicom samples)."""
    port = free_port()  # BRIDGE_PUBLIC_URL names the port before the server is started on it
    environ = {
        **SMART,
        "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}/fhir",
        "BRIDGE_CORS_ORIGINS": origin(page_server),
    }
    if request.param == "orthanc":
        request.getfixturevalue("orthanc_samples")
        orthanc: OrthancServer = request.getfixturevalue("orthanc")
        settings = orthanc_settings(orthanc, **{key.removeprefix("BRIDGE_").lower(): v for key, v in environ.items()})
    else:
        settings = load_settings(environ)
    async for bridge_origin in start_bridge(settings, port):
        yield bridge_origin


@dataclass
class Visit:
    """One page load: what the page answered, and every request and response the browser saw."""

    result: dict[str, Any]
    requests: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return f"page result {self.result}\nbrowser console:\n" + "\n".join(self.messages)


async def visit(browser: Browser, page_origin: str, screenshot: Path | None = None, **params: str) -> Visit:
    page: Page = await browser.new_page(viewport={"width": 512, "height": 512})
    requests: list[str] = []
    responses: list[tuple[str, int]] = []
    messages: list[str] = []

    def on_request(request: Request) -> None:
        requests.append(request.url)

    def on_response(response: Response) -> None:
        responses.append((response.url, response.status))

    def on_console(message: ConsoleMessage) -> None:
        messages.append(f"{message.type}: {message.text}")

    def on_error(error: Exception) -> None:
        messages.append(f"pageerror: {error}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", on_error)
    try:
        await page.goto(f"{page_origin}/?{urlencode(params)}")
        result: dict[str, Any] = await page.evaluate("window.viewerResult")
        if screenshot is not None:
            await page.locator("#viewport").screenshot(path=screenshot)
        return Visit(result, requests, responses, messages)
    finally:
        await page.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("viewer-screenshots", numbered=False)


@pytest.mark.parametrize("shown", [CT, MR], ids=["CT", "MR"])
async def test_a_viewer_renders_the_first_frame_through_the_endpoint_only(
    browser: Browser, page_server: TestServer, bridge: str, shown: Sample, screenshots: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    shot = screenshots / f"{request.node.callspec.id}.png"
    seen = await visit(browser, origin(page_server), shot, fhir=f"{bridge}/fhir", study=shown.study, token=shown.token)
    assert seen.result.get("rendered"), seen.explain()
    address = seen.result["address"]
    assert address == f"{bridge}/dicom-web", seen.explain()
    assert seen.result["uids"] == {"study": shown.study, "series": shown.series, "instance": shown.instance}
    pixels = seen.result["pixels"]
    assert pixels["distinct"] > 16, f"the canvas is blank or nearly so: {pixels}"
    assert pixels["variance"] > 100, f"the canvas is blank or nearly so: {pixels}"
    # Every request for pixels or their metadata went to the Endpoint's address; the frame was among them.
    # (blob: and data: URLs are the page's own memory, not requests.)
    network = [url for url in seen.requests if url.startswith(("http:", "https:"))]
    fhir = [url for url in network if url.startswith(f"{bridge}/fhir/")]
    page = [url for url in network if url.startswith(f"{origin(page_server)}/")]
    dicomweb = [url for url in network if url not in fhir and url not in page]
    assert dicomweb, seen.explain()
    assert all(url.startswith(f"{address}/studies/{shown.study}/") for url in dicomweb), dicomweb
    assert any(url.endswith(f"/instances/{shown.instance}/frames/1") for url in dicomweb), dicomweb
    assert all(status == 200 for url, status in seen.responses if url in dicomweb), seen.responses


async def test_a_token_for_another_patient_renders_nothing(
    browser: Browser, page_server: TestServer, bridge: str
) -> None:
    assert CT.patient != MR.patient
    # Through the ImagingStudy: refused before any WADO-RS request is made.
    seen = await visit(browser, origin(page_server), fhir=f"{bridge}/fhir", study=CT.study, token=MR.token)
    assert not seen.result.get("rendered"), seen.explain()
    assert seen.result["status"] in (403, 404), seen.explain()
    assert not [url for url in seen.requests if "/dicom-web/" in url], seen.requests
    # A viewer that knows the UIDs anyway, asking the gateway: refused there too, and no pixel arrives.
    seen = await visit(
        browser, origin(page_server), address=f"{bridge}/dicom-web", studyUid=CT.study, seriesUid=CT.series,
        instanceUid=CT.instance, token=MR.token,
    )  # fmt: skip
    assert not seen.result.get("rendered"), seen.explain()
    assert seen.result["status"] in (403, 404), seen.explain()
    refused = [(url, status) for url, status in seen.responses if "/dicom-web/" in url]
    assert refused, seen.explain()
    assert all(status in (403, 404) for _, status in refused), refused
    # The frame itself, asked for without its metadata.
    frame = f"{bridge}/dicom-web/studies/{CT.study}/series/{CT.series}/instances/{CT.instance}/frames/1"
    assert await fetch_status(browser, origin(page_server), frame, MR.token) in (403, 404)


async def fetch_status(browser: Browser, page_origin: str, url: str, token: str) -> int:
    page = await browser.new_page()
    try:
        await page.goto(f"{page_origin}/viewer.js")  # any document of the page's origin
        status: int = await page.evaluate(
            "async ([url, token]) => (await fetch(url, {headers: {Authorization: `Bearer ${token}`}})).status",
            [url, token],
        )
        return status
    finally:
        await page.close()
