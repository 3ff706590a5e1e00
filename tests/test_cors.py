"""CORS through the HTTP layer (BRIDGE_CORS_ORIGINS): preflights answered without a token, audit or PACS;
responses to allowed origins (errors, 401, 304 included) carry what a page needs; other origins get nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bridge.bases import BASES, Base
from bridge.errors import ConfigError
from bridge.qido.memory import MemoryQidoSource
from bridge.settings import load_settings, web_origin
from bridge.web.app import FHIR_ROUTES, FhirRoute
from tests.conftest import start_client
from tests.support.standin_tokens import Verifier
from tests.test_authz import pacs

APP = "https://viewer.example.org"
OTHER = "https://evil.example.net"
STUDY = "/fhir/ImagingStudy/2.25.1"


async def smart_client(source: MemoryQidoSource, verifier: Verifier, origins: str = APP, **environ: str) -> TestClient:
    settings = load_settings({
        "BRIDGE_QIDO_URL": "http://pacs.internal/dicom-web", "BRIDGE_PUBLIC_URL": "https://fhir.example.org/fhir",
        "BRIDGE_AUTH": "smart", "BRIDGE_AUTH_JWKS_URL": "https://auth.example.org/jwks",
        "BRIDGE_CORS_ORIGINS": origins, "BRIDGE_AUDIT_LOG": "off", **environ,
    })  # fmt: skip
    return await start_client(settings, source, verifier)


@pytest.fixture
def source() -> MemoryQidoSource:
    return pacs()


@pytest.fixture
async def client(source: MemoryQidoSource) -> AsyncIterator[TestClient]:
    client = await smart_client(source, Verifier())
    yield client
    await client.close()


def preflight_headers(origin: str = APP, method: str = "GET") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,x-request-id"}  # fmt: skip


def concrete(path: str) -> str:
    return path.replace("{id}", "2.25.1")


@pytest.mark.parametrize("base", BASES, ids=lambda base: base.path)
@pytest.mark.parametrize("route", FHIR_ROUTES, ids=lambda route: f"{route.method} {route.path}")
async def test_every_fhir_route_answers_a_preflight_without_a_token(
    client: TestClient, source: MemoryQidoSource, route: FhirRoute, base: Base
) -> None:
    method, path = route.method, base.path + route.path
    response = await client.options(concrete(path), headers=preflight_headers(method=method))
    assert response.status == 204, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "Origin" in response.headers.getall("Vary")
    assert method in response.headers["Access-Control-Allow-Methods"].split(", ")
    allowed = {name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept", "content-type", "prefer", "if-none-match", "if-modified-since",
            "x-request-id", "cache-control"} <= allowed  # fmt: skip
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert source.calls == []


async def test_the_search_post_route_is_preflighted_with_post(client: TestClient) -> None:
    response = await client.options("/fhir/ImagingStudy/_search", headers=preflight_headers(method="POST"))
    assert response.status == 204
    assert "POST" in response.headers["Access-Control-Allow-Methods"].split(", ")


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/.well-known/smart-configuration"])
async def test_discovery_routes_are_preflighted_too(client: TestClient, path: str) -> None:
    response = await client.options(path, headers=preflight_headers())
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP


async def test_a_preflight_from_another_origin_is_refused_without_cors_headers(client: TestClient) -> None:
    response = await client.options(STUDY, headers=preflight_headers(origin=OTHER))
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_a_preflight_to_no_route_is_404(client: TestClient) -> None:
    response = await client.options("/fhir/Nothing/here/at/all", headers=preflight_headers())
    assert response.status == 404


async def test_an_options_without_origin_says_allow(client: TestClient) -> None:
    response = await client.options(STUDY)
    assert response.status == 204
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD"}


async def test_a_read_carries_allow_origin_and_exposed_headers(client: TestClient) -> None:
    response = await client.get(STUDY, headers={"Origin": APP, "Authorization": "Bearer patient:P1"})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP
    exposed = {name.strip() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Last-Modified", "Location", "X-Request-ID", "WWW-Authenticate", "Content-Type",
            "Retry-After", "X-Cache"} <= exposed  # fmt: skip
    assert "Origin" in response.headers.getall("Vary")
    # 304 too: a page revalidating with If-None-Match reads the answer.
    revalidated = await client.get(
        STUDY, headers={"Origin": APP, "Authorization": "Bearer patient:P1", "If-None-Match": response.headers["ETag"]}
    )
    assert revalidated.status == 304
    assert revalidated.headers["Access-Control-Allow-Origin"] == APP


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("nonsense", 401), ("patient:P2", 404)], ids=["none", "invalid", "other"]
)
async def test_errors_carry_cors_headers(client: TestClient, token: str | None, status: int) -> None:
    headers = {"Origin": APP} | ({"Authorization": f"Bearer {token}"} if token else {})
    response = await client.get(STUDY, headers=headers)
    assert response.status == status
    assert response.headers["Access-Control-Allow-Origin"] == APP
    if status == 401:
        assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["resourceType"] == "OperationOutcome"


async def test_an_unknown_path_carries_them_too(client: TestClient) -> None:
    unknown = await client.get("/fhir/Nothing", headers={"Origin": APP})
    assert unknown.status == 404
    assert unknown.headers["Access-Control-Allow-Origin"] == APP


async def test_another_origin_gets_no_cors_headers(client: TestClient) -> None:
    response = await client.get(STUDY, headers={"Origin": OTHER, "Authorization": "Bearer patient:P1"})
    assert response.status == 200  # served: only a browser withholds it from the page
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers
    assert "Origin" in response.headers.getall("Vary")


async def test_probes_are_not_for_pages(client: TestClient) -> None:
    response = await client.get("/healthz", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_preflight_is_not_audited(source: MemoryQidoSource, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await smart_client(source, Verifier(), BRIDGE_AUDIT_LOG=str(audit))
    try:
        assert (await client.options(STUDY, headers=preflight_headers())).status == 204
        assert (await client.get(STUDY, headers={"Authorization": "Bearer patient:P1"})).status == 200
    finally:
        await client.close()
    events = audit.read_text().splitlines()
    assert len(events) == 1  # the read alone


async def test_any_origin_is_star_without_vary_or_credentials(source: MemoryQidoSource) -> None:
    client = await smart_client(source, Verifier(), origins="*")
    try:
        response = await client.get(STUDY, headers={"Origin": OTHER, "Authorization": "Bearer patient:P1"})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
        preflight = await client.options(STUDY, headers=preflight_headers(origin=OTHER))
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        await client.close()


async def test_off_by_default_a_preflight_is_405_and_no_headers(source: MemoryQidoSource) -> None:
    client = await smart_client(source, Verifier(), origins="")
    try:
        preflight = await client.options(STUDY, headers=preflight_headers())
        assert preflight.status == 405
        assert "Access-Control-Allow-Origin" not in preflight.headers
        response = await client.get(STUDY, headers={"Origin": APP, "Authorization": "Bearer patient:P1"})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Vary" not in response.headers or "Origin" not in response.headers.getall("Vary")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://Viewer.Example.org", "https://viewer.example.org"),
        ("https://viewer.example.org/", "https://viewer.example.org"),
        ("https://viewer.example.org:443", "https://viewer.example.org"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("*", "*"),
    ],
)
def test_origins_are_normalized_as_browsers_send_them(given: str, origin: str) -> None:
    assert web_origin(given) == origin


@pytest.mark.parametrize(
    "given", ["null", "viewer.example.org", "ftp://viewer.example.org", "https://viewer.example.org/app",
              "https://user@viewer.example.org", "https://viewer.example.org:99999"],
)  # fmt: skip
def test_what_is_no_origin_is_refused(given: str) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_CORS_ORIGINS"):
        load_settings({"BRIDGE_CORS_ORIGINS": given, "BRIDGE_AUTH": "none"})


def test_star_needs_tokens() -> None:
    with pytest.raises(ConfigError, match=r"BRIDGE_CORS_ORIGINS=\* needs BRIDGE_AUTH=smart"):
        load_settings({"BRIDGE_CORS_ORIGINS": "*", "BRIDGE_AUTH": "none"})
    with pytest.raises(ConfigError, match="either"):
        load_settings({"BRIDGE_CORS_ORIGINS": f"*,{APP}", "BRIDGE_AUTH": "none"})
    assert load_settings({"BRIDGE_CORS_ORIGINS": f"{APP}, http://localhost:3000"}).cors_origins == (
        APP, "http://localhost:3000",
    )  # fmt: skip
