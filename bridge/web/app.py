"""The aiohttp application: routes, typed state, and the PACS source's lifecycle.

``FHIR_ROUTES`` is the single list of FHIR interactions; the router and the CapabilityStatement are both built
from it, so the statement cannot claim what is not served.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from bridge.errors import NotFound, UnsupportedMediaType, UpstreamError
from bridge.mapping import tags
from bridge.mapping.dicomjson import uid, unsigned
from bridge.mapping.endpoint import wado_endpoint
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.factory import open_source
from bridge.qido.folder import FolderQidoSource
from bridge.qido.source import QidoSource
from bridge.search.bundle import needs_series, searchset
from bridge.search.execute import run_search
from bridge.search.query import PatientRule, parse_search
from bridge.settings import Settings
from bridge.studies import read_study
from bridge.web.capability import capability_statement
from bridge.web.middleware import errors
from bridge.web.negotiation import fhir_bytes_response, response_type

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024

SETTINGS = web.AppKey("settings", Settings)
SOURCE = web.AppKey("source", QidoSource)
MAPPING = web.AppKey("mapping", MappingOptions)
ENDPOINT = web.AppKey("endpoint", dict[str, Any])  # empty when no WADO-RS address is known


async def read_imaging_study(request: web.Request) -> web.Response:
    media = response_type(request)  # refuse an unserved format before asking the PACS anything
    app = request.app
    resource = await read_study(app[SOURCE], request.match_info["id"], app[MAPPING])
    return fhir_bytes_response(media, orjson.dumps(resource))


async def search_imaging_study(request: web.Request) -> web.Response:
    """GET [base]/ImagingStudy?… and POST [base]/ImagingStudy/_search (form body): a searchset Bundle."""
    media = response_type(request)
    app = request.app
    params = [(key, value) for key, value in request.query.items()]
    if request.method == "POST":
        if request.content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType(
                f"POST _search takes application/x-www-form-urlencoded, not {request.content_type or 'no body type'}"
            )
        form = await request.post()
        params += [(key, value) for key, value in form.items() if isinstance(value, str)]
    settings = app[SETTINGS]
    query = parse_search(
        params, strict=_strict(request), zone=settings.zone or dt.UTC, patients=PatientRule(settings.patient_reference)
    )
    if query.ignored:
        log.info("search ignored unknown parameters: %s", ", ".join(query.ignored))
    result = await run_search(app[SOURCE], query, app[MAPPING], complete=needs_series(query))
    endpoint = app[ENDPOINT] or None
    bundle = searchset(_base(request), query, result.total, result.resources, endpoint, result.warnings)
    return fhir_bytes_response(media, orjson.dumps(bundle))


def _strict(request: web.Request) -> bool:
    """``Prefer: handling=strict`` (RFC 7240; lenient is the default)."""
    preferences = request.headers.getall("Prefer", [])
    return any(
        part.strip().lower().replace(" ", "") == "handling=strict"
        for header in preferences
        for part in header.replace(";", ",").split(",")
    )


def _base(request: web.Request) -> str:
    """The FHIR base URL for links: BRIDGE_PUBLIC_URL, else this request's scheme and host."""
    return request.app[SETTINGS].public_url or str(request.url.with_path("/fhir").with_query(None))


async def read_endpoint(request: web.Request) -> web.Response:
    media = response_type(request)
    endpoint = request.app[ENDPOINT]
    if not endpoint or request.match_info["id"] != endpoint["id"]:
        raise NotFound(f"no Endpoint with id {request.match_info['id']!r}")
    return fhir_bytes_response(media, orjson.dumps(endpoint))


async def metadata(request: web.Request) -> web.Response:
    media = response_type(request)
    interactions: dict[str, list[str]] = {}
    for route in FHIR_ROUTES:
        codes = interactions.setdefault(route.resource_type, [])
        if route.interaction not in codes:
            codes.append(route.interaction)
    return fhir_bytes_response(media, orjson.dumps(capability_statement(interactions, _base(request))))


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing of the PACS (see /readyz)."""
    return web.json_response({"status": "ok"}, dumps=lambda v: orjson.dumps(v).decode())


async def readyz(request: web.Request) -> web.Response:
    """Ready: the PACS answers a trivial query."""
    try:
        await request.app[SOURCE].check()
    except UpstreamError as exc:
        body = {"status": "unavailable", "reason": exc.diagnostics}
        return web.json_response(body, status=503, dumps=lambda v: orjson.dumps(v).decode())
    return web.json_response({"status": "ready"}, dumps=lambda v: orjson.dumps(v).decode())


class FhirRoute(NamedTuple):
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    resource_type: str
    interaction: str


FHIR_ROUTES = (
    FhirRoute("GET", "/fhir/ImagingStudy", search_imaging_study, "ImagingStudy", "search-type"),
    FhirRoute("POST", "/fhir/ImagingStudy/_search", search_imaging_study, "ImagingStudy", "search-type"),
    FhirRoute("GET", "/fhir/ImagingStudy/{id}", read_imaging_study, "ImagingStudy", "read"),
    FhirRoute("GET", "/fhir/Endpoint/{id}", read_endpoint, "Endpoint", "read"),
)


def create_app(settings: Settings, source: QidoSource | None = None) -> web.Application:
    """The application; with ``source`` given the caller owns it, else it is opened and closed with the app."""
    # A POST _search form is a few kilobytes; nothing else has a body.
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    address = settings.public_wado_url
    endpoint = wado_endpoint(address) if address else {}
    app[ENDPOINT] = endpoint
    app[MAPPING] = MappingOptions(
        endpoint_id=endpoint.get("id"),
        patient_id_system=settings.patient_id_system,
        issuer_systems=dict(settings.issuer_systems),
        zone=settings.zone,
    )
    if source is None:
        app.cleanup_ctx.append(_pacs_source)
    else:
        app[SOURCE] = source
    app.router.add_get("/fhir/metadata", metadata)
    for route in FHIR_ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _pacs_source(app: web.Application) -> AsyncIterator[None]:
    source = await open_source(app[SETTINGS])
    log.info("PACS: %s", source.description)
    if not app[ENDPOINT]:
        log.warning("no WADO-RS address known (set BRIDGE_WADO_URL): studies are served without an Endpoint")
    app[SOURCE] = source
    try:
        if isinstance(source, FolderQidoSource):
            await _suggest_a_study(source)
        yield
    finally:
        await source.close()


async def _suggest_a_study(source: FolderQidoSource) -> None:
    """A folder's index is in memory already: tell a newcomer what there is to read."""
    studies = await source.search_studies({}, ())
    biggest = max(studies, key=lambda s: unsigned(s, tags.NUMBER_OF_STUDY_RELATED_INSTANCES) or 0, default={})
    if example := uid(biggest, tags.STUDY_INSTANCE_UID):
        log.info("%d studies in %s; try GET /fhir/ImagingStudy/%s", len(studies), source.folder, example)
