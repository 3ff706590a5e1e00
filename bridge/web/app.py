"""The aiohttp application: the route table and the factory.

``FHIR_ROUTES`` is the single list of FHIR interactions; the router and the CapabilityStatement are both built
from it, so the statement cannot claim what is not served. Each is served under every base of
``bridge.bases.BASES`` (``/fhir``, ``/fhir/r4``, ``/fhir/r5``): the base is a dimension of the table, not a copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import web

from bridge.auth.scopes import Interaction
from bridge.auth.tokens import TokenVerifier
from bridge.bases import BASES
from bridge.errors import NotFound
from bridge.fhirversion import FhirVersion
from bridge.mapping.endpoint import wado_endpoint
from bridge.mapping.imagingstudy import MappingOptions
from bridge.qido.source import QidoSource
from bridge.search.execute import Limits
from bridge.settings import Settings
from bridge.web import contexts, cors, gateway, gateway_qido, observe
from bridge.web.audit import AUDIT_LOG, audit_context, audit_log
from bridge.web.authz import step
from bridge.web.handlers import (
    metadata,
    read_endpoint,
    read_imaging_study,
    search_imaging_study,
    search_patient_compartment,
    smart_configuration_document,
    versions,
)
from bridge.web.hosts import HostCheck
from bridge.web.keys import ENDPOINT, ENDPOINTS, INTERACTIONS, MAPPING, SEARCH_LIMITS, SETTINGS, SOURCE
from bridge.web.ratelimit import RATE_LIMITER, rate_limit_context, rate_limiter
from bridge.web.server import admin_listener, probe_routes

#: A POST _search form is a few kilobytes; nothing else has a body.
MAX_BODY = 64 * 1024


log = logging.getLogger(__name__)


class FhirRoute(NamedTuple):
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    resource_type: str
    interaction: str
    #: What a token needs: an interaction on ImagingStudy (an Endpoint is read by whoever may read studies).
    needs: Interaction
    #: Whether it serves patient data: then every request to it is written to the audit log.
    audited: bool = True


# The read first: aiohttp tries the routes under one path prefix in the order they were added. Paths are
# relative to a base.
FHIR_ROUTES = (
    FhirRoute("GET", "/ImagingStudy/{id}", read_imaging_study, "ImagingStudy", "read", Interaction.READ),
    FhirRoute("GET", "/ImagingStudy", search_imaging_study, "ImagingStudy", "search-type", Interaction.SEARCH),
    FhirRoute(
        "POST", "/ImagingStudy/_search", search_imaging_study, "ImagingStudy", "search-type", Interaction.SEARCH
    ),
    FhirRoute(
        "GET", "/Patient/{id}/ImagingStudy", search_patient_compartment, "ImagingStudy", "search-type",
        Interaction.SEARCH,
    ),
    FhirRoute("GET", "/Endpoint/{id}", read_endpoint, "Endpoint", "read", Interaction.READ, audited=False),
)  # fmt: skip

#: What each base serves besides the interactions: open to anyone, no patient data.
BASE_ROUTES = (
    ("/metadata", metadata),
    ("/.well-known/smart-configuration", smart_configuration_document),
    ("/$versions", versions),
)


def endpoint_of(settings: Settings, version: FhirVersion = FhirVersion.R5) -> dict[str, Any]:
    """The WADO-RS Endpoint the studies reference (the gateway's public URL, see ``Settings.endpoint_address``;
    the path ``/dicom-web`` alone when each request's origin completes it) in ``version``, or {} when no address
    is known."""
    address = settings.endpoint_address or (gateway.PREFIX if settings.endpoint_per_request else None)
    return wado_endpoint(address, requires_token=settings.auth_mode == "smart", version=version) if address else {}


def mapping_options(settings: Settings) -> MappingOptions:
    return MappingOptions(
        endpoint_id=endpoint_of(settings).get("id"),
        patient_id_system=settings.patient_id_system,
        issuer_systems=dict(settings.issuer_systems),
        zone=settings.zone,
    )


def create_app(
    settings: Settings, source: QidoSource | None = None, verifier: TokenVerifier | None = None
) -> web.Application:
    """The application; with ``source`` given the caller owns it, else it is opened and closed with the app.
    ``verifier`` checks bearer tokens (BRIDGE_AUTH=smart) in place of the one made from the settings."""
    app = web.Application(client_max_size=MAX_BODY)
    access_log = None
    if settings.access_log:
        app[observe.ACCESS_LOG] = access_log = observe.AccessLog()
        app.cleanup_ctx.append(observe.access_log_context)
    # Audit and rate limits: opened before the other resources, closed after them (the last events written).
    audit = audit_log(settings)
    if audit is not None:
        app[AUDIT_LOG] = audit
        app.cleanup_ctx.append(audit_context)
    limiter = rate_limiter(settings)
    if limiter is not None:
        app[RATE_LIMITER] = limiter
        app.cleanup_ctx.append(rate_limit_context)
    app[SETTINGS] = settings
    app[ENDPOINT] = endpoint_of(settings)
    app[ENDPOINTS] = {version: endpoint_of(settings, version) for version in FhirVersion}
    if settings.dicomweb_gateway and settings.public_wado_url and settings.gateway_url is None:
        # Only without authorization (BRIDGE_AUTH=smart refuses this at start): the Endpoint is one per app, and
        # without BRIDGE_PUBLIC_URL the gateway's public origin is known per request only.
        log.warning(
            "BRIDGE_PUBLIC_URL is unset: the Endpoint gives viewers the PACS's own address (%s), not the DICOMweb "
            "gateway's; set BRIDGE_PUBLIC_URL to send them through /dicom-web",
            settings.public_wado_url,
        )
    app[MAPPING] = mapping_options(settings)
    app[SEARCH_LIMITS] = Limits(settings.search_max_queries, settings.search_max_rows)
    if source is None:
        app.cleanup_ctx.append(contexts.pacs_source)
    else:
        app[SOURCE] = source
    app.cleanup_ctx.append(contexts.study_cache)
    if settings.dicomweb_gateway:
        app.cleanup_ctx.append(gateway.gateway_context)
    smart = settings.auth_mode == "smart"
    if smart:
        if verifier is not None:
            app[contexts.TOKEN_VERIFIER] = verifier
        app.cleanup_ctx.append(contexts.authorization)
    app.cleanup_ctx.append(contexts.refresher)
    if settings.admin_port is not None:
        app.cleanup_ctx.append(admin_listener)  # the probes and metrics are served there, not here

    hosts = settings.link_hosts
    envelope = observe.Envelope(
        access_log, settings.request_deadline, HostCheck(hosts) if hosts is not None else None,
        audit=audit, limiter=limiter,
    )  # fmt: skip
    routes: list[tuple[str, str, Any, Any, str | None]] = []
    for base in BASES:
        routes += [("GET", base.path + path, handler, None, None) for path, handler in BASE_ROUTES]
        for route in FHIR_ROUTES:
            authorize = step("ImagingStudy", route.needs, route.interaction) if smart else None
            audited = route.interaction if route.audited else None
            routes.append((route.method, base.path + route.path, route.handler, authorize, audited))
    # The DICOMweb gateway: a retrieve needs what an ImagingStudy read does, and is audited as one.
    for path in gateway.ROUTES if settings.dicomweb_gateway else ():
        authorize = step("ImagingStudy", Interaction.READ, "read") if smart else None
        routes.append(("GET", gateway.PREFIX + path, gateway.retrieve, authorize, "read"))
    # Its QIDO-RS searches need what an ImagingStudy search does, and are audited as one.
    for path, level in gateway_qido.ROUTES if settings.dicomweb_gateway else ():
        authorize = step("ImagingStudy", Interaction.SEARCH, "search-type") if smart else None
        routes.append(("GET", gateway.PREFIX + path, gateway_qido.searcher(level), authorize, "search-type"))
    if settings.admin_port is None:
        routes += [("GET", path, handler, None, None) for path, handler in probe_routes(settings.health_details)]
    for method, path, handler, authorize, audited in routes:
        observed = envelope(handler, path, authorize, audited)
        if method == "GET":
            app.router.add_get(path, observed)  # and HEAD, with the same handler
        else:
            app.router.add_route(method, path, observed)
    if settings.cors_origins:
        cors.install(app, settings.cors_origins)
        for path, name in cors.routes():  # no token asked, no audit, no PACS: see bridge.web.cors
            app.router.add_route("OPTIONS", path, envelope(cors.preflight, name))
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
    allowed.discard("OPTIONS")  # the CORS preflight routes catch OPTIONS under a prefix: they serve no path
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    # Said, not a bare 404: a trailing slash or a WADO-URI viewer's /wado are a new user's usual first tries.
    hint = " (no route ends with a slash)" if request.path.endswith("/") and request.path != "/" else ""
    raise NotFound(f"nothing is served at {request.path[:200]}{hint}")
