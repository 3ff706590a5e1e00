"""The request handlers. They raise ``BridgeError``s; ``bridge.web.outcomes`` renders them."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from bridge.auth.discovery import rest_security, smart_configuration
from bridge.auth.grant import AuditFacts, Patients
from bridge.bases import base_of
from bridge.cache.freshness import Entry
from bridge.cache.service import HIT
from bridge.errors import AuthServerUnavailable, Conflict, InvalidRequest, NotFound, RequestTimeout, UpstreamError
from bridge.fhirversion import DEFAULT, FhirVersion
from bridge.mapping.endpoint import with_origin
from bridge.search.bundle import needs_series, searchset
from bridge.search.confine import confine
from bridge.search.execute import run_search
from bridge.search.query import PatientRule, parse_search
from bridge.web.capability import capability_statement, versions_parameters
from bridge.web.contexts import DISCOVERY
from bridge.web.form import check_form_type, form_parameters
from bridge.web.keys import (
    AUDITED,
    CACHE,
    ENDPOINTS,
    GRANT,
    INTERACTIONS,
    MAPPING,
    SEARCH_LIMITS,
    SETTINGS,
    SOURCE,
)
from bridge.web.negotiation import CONTENT_TYPES, Format, body_format, fhir_bytes_response, response_type

log = logging.getLogger(__name__)


async def read_imaging_study(request: web.Request) -> web.StreamResponse:
    """GET [base]/ImagingStudy/{id}: from the cache, with ETag, Last-Modified and conditional reads."""
    answer = response_type(request)  # refuse an unserved format before asking the PACS anything
    cache, study_id, no_cache = request.app[CACHE], request.match_info["id"], _revalidate(request)
    grant = request.get(GRANT)
    try:
        fresh = None if no_cache else cache.fresh(study_id)
        entry, outcome = (fresh, HIT) if fresh is not None else await cache.read(study_id, no_cache=no_cache)
    except Conflict:
        if grant is not None and grant.patients is not None:
            # One UID under several patients: to a token confined to patients, as if it did not exist.
            raise unseen(request, study_id) from None
        raise
    if grant is not None and grant.patients is not None:
        admit_study(request, grant.patients, study_id, entry)
    # Each version's bytes have their own ETag (one URL on /fhir serves both), and Vary: Accept tells a cache that
    # /fhir's answer depends on the Accept that chose it.
    version = answer.version
    if _not_modified(request, entry, version):
        return web.Response(status=304, headers=_read_headers(entry, version, None, outcome.header))
    return web.Response(body=entry.body_of(version), headers=_read_headers(entry, version, answer, outcome.header))


def admit_study(request: web.Request, patients: Patients, study_id: str, entry: Entry) -> None:
    """A study served to a grant confined to ``patients`` is one of theirs, else ``unseen``. Checked on what is
    served, whichever path it came by (cache hit, shared cache, PACS read)."""
    if not patients.admits(served_subject(entry)):
        raise unseen(request, study_id)
    request[AUDITED].returned.append(study_id)


def unseen(request: web.Request, study_id: str) -> NotFound:
    """The answer to a request for a study the grant may not see: the one a study that does not exist gets."""
    request[AUDITED].refused.append(study_id)
    return NotFound(f"the PACS has no study with StudyInstanceUID {study_id}")


def served_subject(entry: Entry) -> dict[str, Any] | None:
    """A served study's ``subject``, parsed once per content version (the version hashes the whole resource)."""
    if entry.version in _SUBJECTS:
        return _SUBJECTS[entry.version]
    if len(_SUBJECTS) >= 4096:
        _SUBJECTS.clear()
    subject: dict[str, Any] | None = orjson.loads(entry.body).get("subject")
    _SUBJECTS[entry.version] = subject
    return subject


_SUBJECTS: dict[str, dict[str, Any] | None] = {}


def _read_headers(entry: Entry, version: FhirVersion, answer: Format | None, x_cache: str) -> CIMultiDict[str]:
    """The headers of a read in ``version`` (``answer`` None for a 304). The same for every read of an entry with
    the same format and cache outcome: built once (a few per study), as building them costs a cached read
    measurably."""
    key = (entry.version, entry.last_modified, version, answer, x_cache)
    headers = _HEADERS.get(key)
    if headers is None:
        if len(_HEADERS) >= 4096:
            _HEADERS.clear()
        headers = _HEADERS[key] = CIMultiDict({
            "ETag": entry.etag_of(version),
            "Last-Modified": entry.http_date,
            # Patient data: no shared cache may keep it; the client revalidates with If-None-Match.
            "Cache-Control": "private, no-cache",
            "X-Cache": x_cache,
            "Vary": "Accept",
        })  # fmt: skip
        if answer is not None:
            headers["Content-Type"] = CONTENT_TYPES[answer]
    return headers  # aiohttp copies it into the response


_HEADERS: dict[tuple[str, float, FhirVersion, Format | None, str], CIMultiDict[str]] = {}


def _revalidate(request: web.Request) -> bool:
    """Whether the client asks for a fresh read: ``Cache-Control: no-cache`` or ``max-age=0``, ``Pragma: no-cache``."""
    headers = request.headers
    control = headers.get(hdrs.CACHE_CONTROL)
    if control is not None:
        directives = {part.strip().lower().replace(" ", "") for part in control.split(",")}
        if directives & {"no-cache", "max-age=0"}:
            return True
    return "no-cache" in headers.get(hdrs.PRAGMA, "").lower()


def _not_modified(request: web.Request, entry: Entry, version: FhirVersion) -> bool:
    """RFC 9110 13.1: If-None-Match decides when present (weak comparison, against the ETag of the version
    served), else If-Modified-Since."""
    headers = request.headers
    if_none_match = headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or entry.etag_of(version).removeprefix("W/") in tags  # weak: the opaque tags alone
    if hdrs.IF_MODIFIED_SINCE not in headers:  # the common case: skip parsing a date that is not there
        return False
    since = request.if_modified_since
    return since is not None and int(entry.last_modified) <= since.timestamp()


async def search_imaging_study(request: web.Request) -> web.Response:
    """GET [base]/ImagingStudy?… and POST [base]/ImagingStudy/_search (form body): a searchset Bundle."""
    return await _search(request, [])


async def search_patient_compartment(request: web.Request) -> web.Response:
    """GET [base]/Patient/{id}/ImagingStudy?…: the patient compartment, as ``ImagingStudy?patient=Patient/{id}``."""
    patient = request.match_info["id"]
    if "," in patient:  # one Patient: as a search value, a comma would make a list of them
        raise InvalidRequest(f"{patient!r} is not a Patient id: a compartment is one Patient's")
    return await _search(request, [("patient", f"Patient/{patient}")])


async def _search(request: web.Request, params: list[tuple[str, str]]) -> web.Response:
    answer = response_type(request)
    app = request.app
    params += [(key, value) for key, value in request.query.items()]
    if request.method == "POST":
        check_form_type(request.content_type, request.charset)
        form = form_parameters(await _body(request))
        answer = body_format(request, form, answer)
        params += form
    # The _format that decided (the URL's, else the body's) stays in the page links, or page 2 is another version.
    kept = next(((key, value) for key, value in params if key == "_format"), None)
    settings, base = app[SETTINGS], _base(request)
    query = parse_search(
        params, strict=not _lenient(request), zone=settings.zone or dt.UTC,
        patients=PatientRule(settings.patient_reference), base=base, version=answer.version,
    )  # fmt: skip
    if query.ignored:
        log.info("search ignored unknown parameters: %s", ", ".join(query.ignored))
    facts = request.get(AUDITED)
    if facts is None:  # authorization off: nothing set it, and the audit log still says what was returned
        facts = request[AUDITED] = AuditFacts(action="search")
    facts.patients.extend(c.applied[1] for c in query.criteria if c.parameter.names_patient and c.applied)
    grant = request.get(GRANT)
    if grant is not None and grant.patients is not None:
        query = confine(query, grant.patients)
    result = await run_search(
        app[SOURCE], query, app[MAPPING], complete=needs_series(query), cache=app[CACHE], limits=app[SEARCH_LIMITS],
        version=answer.version,
    )  # fmt: skip
    if grant is not None and grant.patients is not None:
        # The confinement made the search ask for the grant's patients alone; what comes back is checked again.
        seen = [r for r in result.resources if grant.patients.admits(r.get("subject"))]
        facts.refused.extend(r["id"] for r in result.resources if r not in seen)
        result.resources = seen
    facts.returned.extend(r["id"] for r in result.resources)
    endpoint = endpoint_of_request(request, answer.version) or None
    bundle = searchset(
        base, query, result.total, result.resources, endpoint, result.warnings, has_next=result.has_next,
        kept=(kept,) if kept else (),
    )  # fmt: skip
    response = fhir_bytes_response(answer, orjson.dumps(bundle))
    # Patient data, and unlike a read no validator to revalidate with: no cache may keep it, the client's included.
    response.headers[hdrs.CACHE_CONTROL] = "private, no-store"
    return response


async def _body(request: web.Request) -> bytes:
    """The request's body, sent within BRIDGE_CLIENT_READ_TIMEOUT seconds or a 408: a client trickling a byte at
    a time would otherwise hold its connection and this handler for as long as it likes."""
    timeout = request.app[SETTINGS].client_read_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body was not received within {timeout:g} s (BRIDGE_CLIENT_READ_TIMEOUT)"
        ) from None


def _lenient(request: web.Request) -> bool:
    """``Prefer: handling=lenient`` (RFC 7240; FHIR search "handling"): unknown parameters are then ignored
    rather than refused, as they are by default."""
    preferences = request.headers.getall("Prefer", [])
    return any(
        part.strip().lower().replace(" ", "") == "handling=lenient"
        for header in preferences
        for part in header.replace(";", ",").split(",")
    )


def _base(request: web.Request) -> str:
    """The URL of the FHIR base the client used (``…/fhir``, ``…/fhir/r4``, ``…/fhir/r5``), for links: under
    BRIDGE_PUBLIC_URL, else this request's scheme and host."""
    root = request.app[SETTINGS].public_url or str(request.url.with_path("/fhir").with_query(None))
    return base_of(request.path).url(root)


async def read_endpoint(request: web.Request) -> web.Response:
    answer = response_type(request)
    endpoint = endpoint_of_request(request, answer.version)
    if not endpoint or request.match_info["id"] != endpoint["id"]:
        raise NotFound(f"no Endpoint with id {request.match_info['id']!r}")
    return fhir_bytes_response(answer, orjson.dumps(endpoint))


def endpoint_of_request(request: web.Request, version: FhirVersion = DEFAULT) -> dict[str, Any]:
    """The app's Endpoint, its address completed with this request's origin when it is this server's own
    gateway reached at no configured public URL (the Host is checked as for links, see ``bridge.web.hosts``)."""
    return with_origin(request.app[ENDPOINTS][version], str(request.url.origin()))


async def metadata(request: web.Request) -> web.Response:
    answer = response_type(request)
    security = None
    if (discovery := request.app.get(DISCOVERY)) is not None:
        try:
            configuration = await discovery.configuration()
        except AuthServerUnavailable:
            # The statement must not depend on the authorization server: said without its endpoints.
            configuration = smart_configuration(request.app[SETTINGS], None)
        security = rest_security(configuration)
    statement = capability_statement(request.app[INTERACTIONS], _base(request), security, answer.version)
    return fhir_bytes_response(answer, orjson.dumps(statement))


async def versions(request: web.Request) -> web.Response:
    """GET [base]/$versions: the versions the base serves and its default: every version and R5 on /fhir, the
    base's own alone on /fhir/r4 and /fhir/r5, which refuse any other with a 406 (FHIR's ``$versions``; answered
    as application/json too, which its definition requires)."""
    answer = response_type(request)
    fixed = base_of(request.path).version
    served = list(FhirVersion) if fixed is None else [fixed]
    return fhir_bytes_response(answer, orjson.dumps(versions_parameters(served, fixed or DEFAULT)))


async def smart_configuration_document(request: web.Request) -> web.Response:
    """GET [base]/.well-known/smart-configuration: how to get a token for this server (SMART App Launch 2)."""
    discovery = request.app.get(DISCOVERY)
    if discovery is None:
        raise NotFound("authorization is off (BRIDGE_AUTH=none): there is no SMART configuration")
    body = orjson.dumps(await discovery.configuration())
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "max-age=300"})


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Says nothing of the PACS (see /readyz)."""
    return web.json_response({"status": "ok"}, dumps=lambda v: orjson.dumps(v).decode())


def readiness(details: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /readyz: whether the PACS answers a trivial query. Why it does not (the PACS's host and port, the
    error) is said only with ``details``: on the admin listener, or with BRIDGE_HEALTH_DETAILS; else it is
    logged, for the operator, and not told to whoever asks."""

    async def readyz(request: web.Request) -> web.Response:
        try:
            await request.app[SOURCE].check()
        except UpstreamError as exc:
            body = {"status": "unavailable"}
            if details:
                body["reason"] = exc.diagnostics
            else:
                log.warning("not ready: %s", exc.diagnostics)
            return web.json_response(body, status=503, dumps=lambda v: orjson.dumps(v).decode())
        return web.json_response({"status": "ready"}, dumps=lambda v: orjson.dumps(v).decode())

    return readyz
