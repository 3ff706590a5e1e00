"""CORS in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright; installed by
scripts/test) opens a page served from another origin than the bridge, which fetches an ImagingStudy with a bearer
token. The browser, not this test, decides what the page may read: only what the bridge's headers allow.

Nothing here is skipped: without Chromium, or when it does not start, the tests fail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser

from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.standin_tokens import Verifier
from tests.test_authz import pacs

pytestmark = pytest.mark.browser

STUDY = "2.25.1"  # Patient P1's (tests/test_authz.py)
PAGE = "<!doctype html><title>viewer</title><p>a viewer's page</p>"

#: Run in the page: a fetch as a viewer makes it, and what the page can read of the answer (or the error).
FETCH = """async ([url, token]) => {
  try {
    const response = await fetch(url, {headers: {Authorization: `Bearer ${token}`, Accept: "application/fhir+json",
                                                 "X-Request-ID": "from-the-browser"}});
    return {status: response.status, etag: response.headers.get("ETag"),
            requestId: response.headers.get("X-Request-ID"), body: await response.json()};
  } catch (error) {
    return {error: `${error.name}: ${error.message}`};
  }
}"""


async def page_server() -> TestServer:
    """A web server of one origin (``http://127.0.0.1:<port>``) serving a page."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.fixture
async def pages() -> AsyncIterator[tuple[TestServer, TestServer]]:
    """Two origins: the viewer's, which the bridge allows, and another."""
    allowed, other = await page_server(), await page_server()
    yield allowed, other
    await allowed.close()
    await other.close()


def origin(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


@pytest.fixture
async def bridge(pages: tuple[TestServer, TestServer]) -> AsyncIterator[TestClient]:
    settings = load_settings({
        "BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
        "BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks", "BRIDGE_AUDIT_LOG": "off",
        "BRIDGE_CORS_ORIGINS": origin(pages[0]),
    })  # fmt: skip
    client = await start_client(settings, pacs(), Verifier())
    yield client
    await client.close()


async def fetch_from(browser: Browser, page_origin: str, url: str, token: str) -> dict[str, Any]:
    page = await browser.new_page()
    try:
        await page.goto(page_origin + "/")
        result: dict[str, Any] = await page.evaluate(FETCH, [url, token])
        return result
    finally:
        await page.close()


async def test_a_page_of_an_allowed_origin_reads_a_study_and_its_headers(
    browser: Browser, pages: tuple[TestServer, TestServer], bridge: TestClient
) -> None:
    url = str(bridge.make_url(f"/fhir/ImagingStudy/{STUDY}"))
    result = await fetch_from(browser, origin(pages[0]), url, "patient:P1")
    assert "error" not in result, result
    assert result["status"] == 200
    assert result["body"]["resourceType"] == "ImagingStudy"
    assert result["body"]["id"] == STUDY
    assert result["etag"], "ETag is not exposed to the page"
    assert result["requestId"] == "from-the-browser"
    # What a page needs when the token is refused: the status and the OperationOutcome (and WWW-Authenticate).
    refused = await fetch_from(browser, origin(pages[0]), url, "not-a-token")
    assert refused.get("status") == 401, refused
    assert refused["body"]["resourceType"] == "OperationOutcome"


async def test_a_page_of_another_origin_cannot_read_anything(
    browser: Browser, pages: tuple[TestServer, TestServer], bridge: TestClient
) -> None:
    url = str(bridge.make_url(f"/fhir/ImagingStudy/{STUDY}"))
    result = await fetch_from(browser, origin(pages[1]), url, "patient:P1")
    assert result.get("error", "").startswith("TypeError"), result
