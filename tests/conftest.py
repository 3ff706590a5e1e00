"""Shared fixtures: a real Orthanc loaded with generated studies, and the bridge in front of it; a real Redis; the
``integration`` mark on every test that needs a real Orthanc or Redis; no test leaves a task running."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright
from redis.asyncio import Redis

from bridge.auth.tokens import TokenVerifier
from bridge.qido.source import QidoSource
from bridge.settings import Settings, load_settings
from bridge.web.app import create_app
from bridge.web.server import server_options
from tests.support import catalog, every_catalog, integration
from tests.support.authserver import AuthServer
from tests.support.dicomgen import StudySpec, encode
from tests.support.orthanc import OrthancServer
from tests.support.redis_server import RedisServer
from tests.support.toxic_proxy import ToxicProxy


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if integration.FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures start anything
def pytest_runtest_setup(item: pytest.Item) -> None:
    integration.running(None if item.get_closest_marker("integration") else item.nodeid)


@pytest.fixture(autouse=True)
async def no_task_left_running() -> AsyncIterator[None]:
    """Every task a test starts ends with it (set up first, so checked after the other fixtures have closed):
    one left pending would be cancelled unseen when the loop closes, hiding a leak the bridge or a double has."""
    yield
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    assert not left, f"tasks left running: {left}"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One real Orthanc with its DICOMweb plugin for the whole run (install: scripts/test)."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="session")
def studies(orthanc: OrthancServer) -> dict[str, StudySpec]:
    """The catalog of awkward studies, uploaded once."""
    loaded = catalog.studies()
    for spec in loaded.values():
        orthanc.upload_many(encode(spec))
    for spec in catalog.shared_uid_pair():
        orthanc.upload_many(encode(spec))
    return loaded


@pytest.fixture(scope="session")
def every_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[every_catalog.Loaded]:
    """An Orthanc of its own holding every catalog (tests/support/every_catalog.py), for the suites that read all
    of a PACS (the other suites hold every study of the shared one against their index)."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc-every")) as server:
        yield every_catalog.load(server)


def orthanc_settings(orthanc: OrthancServer, **overrides: str) -> Settings:
    environ = {
        "BRIDGE_QIDO_URL": orthanc.dicomweb_url,
        "BRIDGE_PACS_USERNAME": orthanc.username,
        "BRIDGE_PACS_PASSWORD": orthanc.password,
    }
    environ.update({f"BRIDGE_{key.upper()}": value for key, value in overrides.items()})
    return load_settings(environ)


async def start_client(
    settings: Settings, source: QidoSource | None = None, verifier: TokenVerifier | None = None
) -> TestClient:
    server = TestServer(create_app(settings, source, verifier))
    await server.start_server(**server_options(settings))  # the same limits and timeouts as `imaging-bridge serve`
    client = TestClient(server)
    await client.start_server()
    return client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the whole run (Debian's redis-server, installed by scripts/test)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def bridge(orthanc: OrthancServer, studies: dict[str, StudySpec]) -> AsyncIterator[TestClient]:
    """The bridge in front of the loaded Orthanc."""
    client = await start_client(orthanc_settings(orthanc))
    yield client
    await client.close()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied."""
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return redis_server.url


@pytest.fixture
async def proxy(orthanc: OrthancServer) -> AsyncIterator[ToxicProxy]:
    """A proxy in front of the real Orthanc that can be told to make it fail (``proxy.mode``)."""
    parts = urlsplit(orthanc.base_url)
    proxy = await ToxicProxy(parts.hostname or "127.0.0.1", parts.port or 80).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless chromium driven by Playwright (no browser download): the CORS and viewer tests' browser."""
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed (scripts/test installs it)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    """A test authorization server (JWKS, introspection, token endpoint) and clinical FHIR server on 127.0.0.1:
    see tests/support/authserver.py."""
    async with AuthServer() as server:
        yield server
