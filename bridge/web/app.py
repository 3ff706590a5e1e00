"""The aiohttp application: the route table and the factory.

``FHIR_ROUTES`` is the single list of FHIR interactions; the router and the CapabilityStatement are both built
from it, so the statement cannot claim what is not served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web

from bridge.mapping.endpoint import wado_endpoint
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.source import QidoSource
from bridge.settings import Settings
from bridge.web import contexts, observe
from bridge.web.handlers import (
    healthz,
    metadata,
    read_endpoint,
    read_imaging_study,
    readyz,
    search_imaging_study,
)
from bridge.web.hosts import HostCheck
from bridge.web.keys import ENDPOINT, INTERACTIONS, MAPPING, SETTINGS, SOURCE
from bridge.web.outcomes import SERVER_LIMITS

#: A POST _search form is a few kilobytes; nothing else has a body.
MAX_BODY = 64 * 1024


class FhirRoute(NamedTuple):
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    resource_type: str
    interaction: str


# The read first: aiohttp tries the routes under one path prefix in the order they were added.
FHIR_ROUTES = (
    FhirRoute("GET", "/fhir/ImagingStudy/{id}", read_imaging_study, "ImagingStudy", "read"),
    FhirRoute("GET", "/fhir/ImagingStudy", search_imaging_study, "ImagingStudy", "search-type"),
    FhirRoute("POST", "/fhir/ImagingStudy/_search", search_imaging_study, "ImagingStudy", "search-type"),
    FhirRoute("GET", "/fhir/Endpoint/{id}", read_endpoint, "Endpoint", "read"),
)


def endpoint_of(settings: Settings) -> dict[str, Any]:
    """The WADO-RS Endpoint the studies reference, or {} when no address is known."""
    address = settings.public_wado_url
    return wado_endpoint(address) if address else {}


def mapping_options(settings: Settings) -> MappingOptions:
    return MappingOptions(
        endpoint_id=endpoint_of(settings).get("id"),
        patient_id_system=settings.patient_id_system,
        issuer_systems=dict(settings.issuer_systems),
        zone=settings.zone,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """What the HTTP server is run with, by ``imaging-bridge serve`` and by the tests alike.

    aiohttp has no bound of its own on the time to send headers; its keep-alive timer runs from a connection's
    start (and from each response) until the next request's headers are in, and closes the connection if it is
    still waiting then: set to BRIDGE_CLIENT_READ_TIMEOUT, it bounds the header phase, a byte every 10 s no longer
    holds a connection. (An idle keep-alive connection is closed after as long: a reverse proxy that keeps
    connections to the bridge must drop idle ones sooner.) The body is bounded where it is read (POST _search);
    an unread body is drained, then the connection closed, within the same bound (``lingering_time``)."""
    return {
        **SERVER_LIMITS,
        "keepalive_timeout": settings.client_read_timeout,
        "lingering_time": min(settings.client_read_timeout, 10.0),  # aiohttp's default is 10 s
    }


def create_app(settings: Settings, source: QidoSource | None = None) -> web.Application:
    """The application; with ``source`` given the caller owns it, else it is opened and closed with the app."""
    app = web.Application(client_max_size=MAX_BODY)
    access_log = None
    if settings.access_log:
        app[observe.ACCESS_LOG] = access_log = observe.AccessLog()
        app.cleanup_ctx.append(observe.access_log_context)
    app[SETTINGS] = settings
    app[ENDPOINT] = endpoint_of(settings)
    app[MAPPING] = mapping_options(settings)
    if source is None:
        app.cleanup_ctx.append(contexts.pacs_source)
    else:
        app[SOURCE] = source
    app.cleanup_ctx.append(contexts.study_cache)
    app.cleanup_ctx.append(contexts.refresher)

    hosts = settings.link_hosts
    envelope = observe.Envelope(access_log, settings.request_deadline, HostCheck(hosts) if hosts is not None else None)
    routes = [
        ("GET", "/fhir/metadata", metadata),
        *((route.method, route.path, route.handler) for route in FHIR_ROUTES),
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", observe.metrics),
    ]
    for method, path, handler in routes:
        observed = envelope(handler, path)
        if method == "GET":
            app.router.add_get(path, observed)  # and HEAD, with the same handler
        else:
            app.router.add_route(method, path, observed)
    # Last, so it matches only what nothing else does: answered through the envelope too (counted, logged, and
    # an OperationOutcome under /fhir).
    app.router.add_route("*", "/{path:.*}", envelope(unmatched, "unmatched"))

    interactions: dict[str, list[str]] = {}
    for route in FHIR_ROUTES:
        codes = interactions.setdefault(route.resource_type, [])
        if route.interaction not in codes:
            codes.append(route.interaction)
    app[INTERACTIONS] = interactions
    return app


async def unmatched(request: web.Request) -> web.StreamResponse:
    """No route serves this request: 405 if one serves its path with another method, else 404."""
    catch_all = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not catch_all:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()
