"""The DICOMweb gateway under ``/dicom-web``: WADO-RS retrieve forwarded to the PACS, streamed.

A viewer holds the app's bearer token, not the PACS's credentials, and the PACS is not opened to browsers: the
gateway checks the token as the FHIR side does (a ``patient/`` token reaches only its patient's studies, decided
through the study cache before any byte is asked of the PACS), then forwards the request with the bridge's own
PACS credentials and copies the answer through chunk by chunk, so a 2 GB series never sits in memory.

``Accept`` (media type and ``transfer-syntax``) goes to the PACS as the client sent it; the PACS's status and
``Content-Type`` (multipart boundary included) come back. Failures: a PACS 404 is a 404; a PACS 5xx a 502; no
connection a 503; no answer in time a 504; after the first byte has been sent a failure can only cut the
connection (the client sees a truncated body, never a complete-looking one).

Only a PACS over HTTP is served for now; with a folder (or the embedded samples) every retrieve answers 501.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from bridge.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.qido.http import pacs_credentials
from bridge.settings import Settings
from bridge.telemetry import REQUEST_ID
from bridge.web.handlers import served_subject
from bridge.web.keys import AUDITED, CACHE, GRANT, SETTINGS

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
)
#: PS3.5 9.1: digits and dots, at most 64 characters. Checked so no path segment (``..``) reaches the PACS.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_FRAMES = re.compile(r"^[1-9][0-9]*(,[1-9][0-9]*)*$")
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
    ) -> None:
        self._base = URL(base_url)
        self._base_path = self._base.path.rstrip("/")
        self.description = str(self._base)
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


def wado_base(settings: Settings) -> str | None:
    """The PACS WADO-RS base the gateway forwards to: BRIDGE_WADO_URL, else the QIDO URL; None for a folder."""
    return settings.public_wado_url


async def gateway_context(app: web.Application) -> AsyncIterator[None]:
    """The gateway's session to the PACS, when the PACS is reached over HTTP."""
    settings = app[SETTINGS]
    base = wado_base(settings)
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
        raise web.HTTPNotImplemented(
            text="the DICOMweb gateway serves a PACS reached over HTTP (BRIDGE_QIDO_URL or BRIDGE_WADO_URL); "
            "it does not yet serve the sample folder or a file:// source"
        )
    await _authorize_study(request, study)
    url = gateway.url(request.rel_url.raw_path.removeprefix(PREFIX), request.rel_url.raw_query_string)
    headers: dict[str, str] = {name: value for name in _FORWARDED if (value := request.headers.get(name)) is not None}
    if request_id := REQUEST_ID.get():
        headers["X-Request-ID"] = request_id
    where = f"WADO-RS {request.path.removeprefix(PREFIX)}"
    try:
        async with gateway.request(url, headers) as upstream:
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
        # 400, 406 (a transfer syntax it cannot give) …: the client's request, said back in plain text.
        return web.Response(status=upstream.status, text=f"the PACS answered {where} with HTTP {upstream.status}")
    response = web.StreamResponse(status=upstream.status)
    for name in _RETURNED:
        if (value := upstream.headers.get(name)) is not None:
            response.headers[name] = value
    await response.prepare(request)
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


def _checked_path(request: web.Request) -> str:
    """The study UID; every UID and the frame list checked to be what they claim, before anything is asked."""
    info = request.match_info
    for key in ("study", "series", "instance"):
        if key in info and (len(info[key]) > 64 or not _UID.match(info[key])):
            raise InvalidRequest(f"{info[key]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    if "frames" in info and not _FRAMES.match(info["frames"]):
        raise InvalidRequest(f"{info['frames']!r} is not a list of frame numbers (1,2,3)")
    return info["study"]


async def _authorize_study(request: web.Request, study: str) -> None:
    """For a grant confined to patients: the study must be one of theirs, else 404 as for a study not held."""
    grant = request.get(GRANT)
    if grant is None or grant.patients is None:
        return
    unseen = NotFound(f"the PACS has no study with StudyInstanceUID {study}")
    facts = request.get(AUDITED)
    try:
        cache = request.app[CACHE]
        entry = cache.fresh(study) or (await cache.read(study)).entry
    except Conflict:
        if facts is not None:
            facts.refused.append(study)
        raise unseen from None
    except NotFound:
        raise unseen from None
    if not grant.patients.admits(served_subject(entry)):
        if facts is not None:
            facts.refused.append(study)
        raise unseen
    if facts is not None:
        facts.returned.append(study)
