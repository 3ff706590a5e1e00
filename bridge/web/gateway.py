"""The DICOMweb gateway under ``/dicom-web``: WADO-RS retrieve forwarded to the PACS, streamed.

A viewer holds the app's bearer token, not the PACS's credentials, and the PACS is not opened to browsers: the
gateway checks the token as the FHIR side does (a ``patient/`` token reaches only its patient's studies, decided
through the study cache before any byte is asked of the PACS), then forwards the request with the bridge's own
PACS credentials and copies the answer through chunk by chunk, so a 2 GB series never sits in memory.

``Accept`` (media type and ``transfer-syntax``) goes to the PACS as the client sent it; the PACS's status and
``Content-Type`` (multipart boundary included) come back. Failures: a PACS 404 is a 404; a PACS 5xx a 502; no
connection a 503; no answer in time a 504; after the first byte has been sent a failure can only cut the
connection (the client sees a truncated body, never a complete-looking one).

``metadata`` is the one answer not streamed: the PACS's own ``BulkDataURI`` values point past the gateway (at the
PACS, which a browser cannot reach with its token), so the JSON is read whole (bounded by BRIDGE_QIDO_MAX_BYTES),
every ``BulkDataURI`` under the PACS's WADO-RS base rewritten to the gateway's public URL, and sent re-serialized.
The bulkdata those URIs name is served under ``…/instances/{instance}/bulk/{tag path}``, streamed.

With a folder (the embedded samples, ``file://``) and no BRIDGE_WADO_URL, the same routes are served from its files
(``bridge.web.gateway_folder``), after the same authorization.

``rendered`` and ``thumbnail`` (of a study, series, instance or frame) are streamed like the others, where the PACS
has them (Orthanc's plugin renders at every level and has no thumbnails: those are its 404). Their query
parameters are passed on only when PS3.18 defines them for the resource, with plain values; anything else is a
400, and so is any query of the other retrieve routes (passed on raw, it would reach the PACS unread) and a frame
list naming a frame twice. QIDO-RS searches are ``bridge.web.gateway_qido``'s.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import hdrs, web
from yarl import URL

from bridge.datatypes import is_uid
from bridge.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.qido.folder import FolderQidoSource
from bridge.qido.http import pacs_credentials
from bridge.telemetry import REQUEST_ID
from bridge.web import gateway_folder, observe
from bridge.web.handlers import admit_study, unseen
from bridge.web.keys import CACHE, GRANT, SETTINGS, SOURCE

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
#: The WADO-RS retrieve routes (each also serves HEAD); ``{study}`` is what authorization decides on.
ROUTES = (
    "/studies/{study}",
    "/studies/{study}/metadata",
    "/studies/{study}/series/{series}",
    "/studies/{study}/series/{series}/metadata",
    "/studies/{study}/series/{series}/instances/{instance}",
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    "/studies/{study}/series/{series}/instances/{instance}/bulk/{bulk:.+}",
    *(
        f"{resource}/{kind}"
        for kind in ("rendered", "thumbnail")
        for resource in (
            "/studies/{study}",
            "/studies/{study}/series/{series}",
            "/studies/{study}/series/{series}/instances/{instance}",
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        )
    ),
)
#: The query parameters PS3.18 defines for rendered (8.3.5.1: annotation, quality, viewport, window,
#: iccprofile) and thumbnail (8.3.5.1.3: viewport) resources; the only query a client may send them.
RENDERING = {
    "rendered": frozenset({"annotation", "quality", "viewport", "window", "iccprofile"}),
    "thumbnail": frozenset({"viewport"}),
}
#: Their values: numbers, words and commas (``viewport=512,512``, ``window=40,400,linear``, ``annotation=patient``).
_RENDERING_VALUE = re.compile(r"^[A-Za-z0-9.,-]{1,64}$")
_FRAMES = re.compile(r"^[1-9][0-9]*(,[1-9][0-9]*)*$")
#: A bulkdata path as PACSes write it: a tag, or tags and item numbers down a sequence (``00081111/0/7fe00010``).
_BULK = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]+/[0-9A-Fa-f]{8})*$")
#: Said with a PACS's 4xx to a frames request: the two usual causes (Orthanc's 400 names neither).
_FRAMES_HINT = (
    "; check that every frame number is at most the instance's NumberOfFrames, and ask with "
    'Accept: multipart/related; type="application/octet-stream" (a PACS may serve frames in no other form)'
)
#: Bytes copied at a time: large enough to keep the copy cheap, small enough to keep memory flat.
CHUNK = 256 * 1024
#: Request headers passed to the PACS (``Authorization`` is the bridge's own, never the client's).
_FORWARDED = (hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.ACCEPT_CHARSET)
#: Response headers passed back.
_RETURNED = (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.ETAG, hdrs.LAST_MODIFIED)


class Gateway:
    """The PACS's WADO-RS base, reached through one pooled session with the bridge's PACS credentials."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        concurrency: int,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._base = URL(base_url)
        self._base_path = self._base.path.rstrip("/")
        self.description = str(self._base)
        #: How the PACS's own URLs begin (BulkDataURI values in metadata), to be rewritten to the gateway's.
        self.pacs_prefix = str(self._base).rstrip("/")
        self.max_bytes = max_bytes
        headers = pacs_credentials(username, password, token)
        # No total timeout: a large series takes as long as it takes; a PACS that stops sending is cut after
        # ``timeout`` seconds of silence. Bodies pass through as sent (no decompression): Content-Length and
        # Content-Encoding stay true.
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            auto_decompress=False,
            skip_auto_headers=(hdrs.ACCEPT_ENCODING,),
        )

    def url(self, path: str, query: str) -> URL:
        url = self._base.with_path(self._base_path + path, encoded=True)
        return URL(f"{url}?{query}", encoded=True) if query else url

    @contextlib.asynccontextmanager
    async def request(self, url: URL, headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self._session.get(url, headers=headers, allow_redirects=False) as response:
            yield response

    async def close(self) -> None:
        await self._session.close()


GATEWAY = web.AppKey("gateway", Gateway)


async def gateway_context(app: web.Application) -> AsyncIterator[None]:
    """The gateway's session to the PACS, when the PACS is reached over HTTP."""
    settings = app[SETTINGS]
    base = settings.public_wado_url  # BRIDGE_WADO_URL, else the QIDO URL; None for a folder
    if base is None:
        yield
        return
    gateway = Gateway(
        base,
        timeout=settings.qido_timeout,
        concurrency=max(settings.qido_concurrency, 16),  # a viewer fetches many frames at once
        username=settings.pacs_username,
        password=settings.pacs_password.get_secret_value() if settings.pacs_password else None,
        token=settings.pacs_token.get_secret_value() if settings.pacs_token else None,
        max_bytes=settings.qido_max_bytes,
    )
    app[GATEWAY] = gateway
    try:
        yield
    finally:
        await gateway.close()


async def retrieve(request: web.Request) -> web.StreamResponse:
    """GET /dicom-web/studies/…: authorized, then streamed from the PACS."""
    study = _checked_path(request)
    gateway = request.app.get(GATEWAY)
    if gateway is None:
        # A folder (the embedded default, file://): served from its files, after the same authorization.
        source = request.app[SOURCE]
        if not isinstance(source, FolderQidoSource):
            raise web.HTTPNotImplemented(text="the DICOMweb gateway has no WADO-RS source to serve")
        await authorize_study(request, study)
        return await gateway_folder.retrieve(request, source)
    await authorize_study(request, study)
    url = gateway.url(request.rel_url.raw_path.removeprefix(PREFIX), request.rel_url.raw_query_string)
    metadata = request.path.endswith("/metadata")
    # Metadata is read and rewritten here: asked for uncompressed (no Accept-Encoding passed on).
    forwarded = (hdrs.ACCEPT,) if metadata else _FORWARDED
    headers: dict[str, str] = {name: value for name in forwarded if (value := request.headers.get(name)) is not None}
    if request_id := REQUEST_ID.get():
        headers["X-Request-ID"] = request_id
    where = f"WADO-RS {request.path.removeprefix(PREFIX)}"
    try:
        async with gateway.request(url, headers) as upstream:
            if metadata and upstream.status == 200:
                return await _rewritten(request, gateway, upstream, where)
            return await _relay(request, upstream, where)
    except TimeoutError:
        raise UpstreamTimeout(f"the PACS did not answer {where} in time (BRIDGE_QIDO_TIMEOUT)") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"the PACS could not be reached for {where}: {type(exc).__name__}") from None


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, where: str) -> web.StreamResponse:
    if upstream.status == 404:
        raise NotFound(f"the PACS has no such resource: {where}")
    if upstream.status >= 500 or upstream.status in (401, 403, 407) or 300 <= upstream.status < 400:
        # The PACS's own refusal of the bridge's credentials is the bridge's problem, not the client's.
        raise UpstreamBadResponse(f"the PACS answered {where} with HTTP {upstream.status}")
    if upstream.status >= 400:
        # 400, 406 (a transfer syntax it cannot give) …: the client's request, said back in plain text, with what
        # to check where PACSes are known to answer no more than a status (Orthanc's bare 400s to frames).
        hint = _FRAMES_HINT if "frames" in request.match_info else ""
        return web.Response(status=upstream.status, text=f"the PACS answered {where} with HTTP {upstream.status}{hint}")
    response = web.StreamResponse(status=upstream.status)
    for name in _RETURNED:
        if (value := upstream.headers.get(name)) is not None:
            response.headers[name] = value
    await observe.prepare(request, response)
    if request.method == hdrs.METH_HEAD:
        return response
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Headers are sent: no status can say it now. Cut the connection so the client cannot take the
        # truncated body for a whole one.
        log.warning("%s: the PACS stopped sending (%s); connection to the client cut", where, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def _rewritten(
    request: web.Request, gateway: Gateway, upstream: aiohttp.ClientResponse, where: str
) -> web.StreamResponse:
    """A metadata answer with every BulkDataURI that points at the PACS pointing at the gateway instead."""
    headers = {name: value for name in (hdrs.CONTENT_TYPE, hdrs.LAST_MODIFIED) if (value := upstream.headers.get(name))}
    if request.method == hdrs.METH_HEAD:
        return web.Response(status=200, headers=headers)  # the length of a rewritten body is not the PACS's
    if upstream.headers.get(hdrs.CONTENT_ENCODING, "identity") != "identity":
        raise UpstreamBadResponse(f"the PACS answered {where} compressed, which was not asked for")
    body = bytearray()
    async for chunk in upstream.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > gateway.max_bytes:
            raise UpstreamBadResponse(f"the PACS's answer to {where} exceeds BRIDGE_QIDO_MAX_BYTES")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse(f"the PACS answered {where} with a body that is not JSON") from None
    public = request.app[SETTINGS].gateway_url or f"{request.url.origin()}{PREFIX}"
    _rewrite_bulkdata(document, gateway.pacs_prefix, public)
    try:
        serialized = orjson.dumps(document)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels): no dataset is
        raise UpstreamBadResponse(f"the PACS answered {where} with JSON nested too deep to be DICOM JSON") from None
    return web.Response(status=200, body=serialized, headers=headers)


def _rewrite_bulkdata(document: object, prefix: str, public: str) -> None:
    """In place, through every dataset and sequence item: ``BulkDataURI`` values under ``prefix`` (the PACS's
    WADO-RS base) re-rooted at ``public`` (the gateway's). Others (another server's, relative ones) are left.
    Walked with a stack, not recursion: a PACS's JSON may nest deeper than Python's recursion limit."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            uri = node.get("BulkDataURI")
            if isinstance(uri, str) and (uri == prefix or uri.startswith(prefix + "/")):
                node["BulkDataURI"] = public + uri[len(prefix) :]
            stack.extend(value for value in node.values() if isinstance(value, (dict, list)))


def _checked_path(request: web.Request) -> str:
    """The study UID; every UID and the frame list checked to be what they claim, before anything is asked."""
    info = request.match_info
    for key in ("study", "series", "instance"):
        # PS3.5 9.1: digits and dots, at most 64 characters; so no path segment (``..``) reaches the PACS.
        if key in info and not is_uid(info[key]):
            raise InvalidRequest(f"{info[key]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    if "frames" in info:
        if not _FRAMES.match(info["frames"]):
            raise InvalidRequest(f"{info['frames']!r} is not a list of frame numbers (1,2,3)")
        numbers = info["frames"].split(",")
        if len(set(numbers)) < len(numbers):
            # PS3.18 names each frame once; repeats (1,1,1,… ten thousand times) would multiply the work asked
            # of the PACS, and a folder's answer would hold each repeat.
            raise InvalidRequest("the frame list names a frame more than once")
    if "bulk" in info and not _BULK.match(info["bulk"]):
        raise InvalidRequest(
            f"{info['bulk']!r} is not a bulkdata path (a tag such as 7fe00010, or tags down a sequence)"
        )
    if (kind := request.path.rsplit("/", 1)[-1]) in RENDERING:
        _check_rendering(request, kind)
    elif request.rel_url.raw_query_string:
        # Passed on raw, a query would reach the PACS unread: what it makes of it the gateway cannot vouch for.
        raise InvalidRequest("a WADO-RS retrieve through the gateway takes no query parameters")
    return info["study"]


def _check_rendering(request: web.Request, kind: str) -> None:
    """A rendered or thumbnail resource's query: PS3.18's parameters of it, once each, with plain values."""
    for name in request.query:
        if name not in RENDERING[kind]:
            known = ", ".join(sorted(RENDERING[kind]))
            raise InvalidRequest(f"{name!r} is not a query parameter of a {kind} resource (PS3.18: {known})")
        values = request.query.getall(name)
        if len(values) > 1:
            raise InvalidRequest(f"{name} is given more than once")
        if not _RENDERING_VALUE.match(values[0]):
            raise InvalidRequest(f"{name}={values[0][:64]!r} is not a {name} value (numbers, words and commas)")


async def authorize_study(request: web.Request, study: str) -> None:
    """For a grant confined to patients: the study must be one of theirs, else 404 as for a study not held."""
    grant = request.get(GRANT)
    if grant is None or grant.patients is None:
        return
    cache = request.app[CACHE]
    try:
        entry = cache.fresh(study) or (await cache.read(study)).entry
    except Conflict:
        raise unseen(request, study) from None  # one UID under several patients: refused, as a read refuses it
    except NotFound:
        raise NotFound(f"the PACS has no study with StudyInstanceUID {study}") from None
    admit_study(request, grant.patients, study, entry)
