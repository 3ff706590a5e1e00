"""``QidoSource`` over HTTP: a DICOMweb server reached with one pooled aiohttp ``ClientSession``.

Each request is bounded by ``timeout`` seconds and by a semaphore shared by all requests of the process
(``concurrency``), so a burst of clients cannot flood the PACS. Failures become the typed ``UpstreamError``s
of ``bridge.errors``; their messages name the PACS by scheme, host and path only, never by its credentials.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from bridge.errors import (
    DeadlineExceeded,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.mapping import tags
from bridge.mapping.dicomjson import DicomJson
from bridge.qido.budget import current as current_budget
from bridge.qido.paging import MAX_PAGES, MAX_REPEATS, RowMerger, RowTrimmer, has_more
from bridge.qido.resilience import CircuitBreaker, State, backoff, remaining
from bridge.qido.source import NO_FILTERS, Filters
from bridge.telemetry import BREAKER_OPEN, PACS_REQUESTS, REQUEST_ID

log = logging.getLogger(__name__)

ACCEPT = "application/dicom+json, application/json;q=0.9"
#: Seconds an attempt needs at least: no retry is started with less left before the deadline.
MIN_ATTEMPT = 0.5
#: The longest wait before a retry: a PACS asking for more gets its Retry-After passed to the client instead.
MAX_WAIT = 5.0


def query_string(filters: Filters, fields: Sequence[str], limit: int | None = None, offset: int = 0) -> str:
    """The QIDO query string, parameters in sorted order and every value percent-encoded.

    Everything but ``*`` and ``,`` is percent-encoded (``&`` ``=`` ``#`` ``[`` ``]`` and spaces included), so each
    value stays one value. ``*`` (a wildcard) and ``,`` (a UID list) are sent as they are because only the
    bridge's own planner puts them there (client values holding them are refused) and some PACSes do not
    percent-decode query values.
    """
    pairs = sorted(filters.items())
    pairs += [("includefield", field) for field in sorted(set(fields))]
    if limit:
        pairs.append(("limit", str(limit)))
    if offset:
        pairs.append(("offset", str(offset)))
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='*,')}" for key, value in pairs)


def pacs_credentials(username: str | None, password: str | None, token: str | None) -> dict[str, str]:
    """The ``Authorization`` header the bridge's own PACS credentials make (bearer, or basic), if any."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    if username is not None:
        # RFC 7617 with UTF-8; built here because aiohttp's BasicAuth is deprecated.
        pair = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}


class HttpQidoSource:
    """A DICOMweb server's QIDO-RS service."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        concurrency: int = 8,
        page_size: int = 0,
        max_bytes: int = 256 * 1024 * 1024,
        retries: int = 2,
        breaker: CircuitBreaker | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        url = URL(base_url)
        if url.user is not None and username is None:
            # Credentials written into the URL are honoured, then removed from it so no message shows them.
            username, password = url.user, url.password or ""
        self._base = url.with_user(None).with_password(None)
        self._base_path = self._base.path.rstrip("/")
        self.description = str(self._base)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_seconds = timeout
        self._page_size = page_size or None
        self._max_bytes = max_bytes
        self._retries = retries
        self._retry_base, self._retry_cap = 0.1, 2.0
        self.breaker = breaker or CircuitBreaker()
        BREAKER_OPEN.set_function(lambda: float(self.breaker.state is State.OPEN))
        self._semaphore = asyncio.Semaphore(concurrency)
        headers = {"Accept": ACCEPT, **pacs_credentials(username, password, token)}
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        )

    async def close(self) -> None:
        await self._session.close()

    async def search_studies(
        self,
        filters: Filters,
        fields: Sequence[str],
        *,
        limit: int | None = None,
        offset: int = 0,
        as_listed: bool = False,
    ) -> list[DicomJson]:
        # A StudyInstanceUID may be registered under two patients: keep one row each so that stays visible.
        key = (tags.STUDY_INSTANCE_UID, *tags.OWNER)
        # Rows asked for by UID (one per patient holding each) need no proof of their end: a list holds at most
        # fifty UIDs (the planner's chunks), no PACS caps an answer below that, and every series and instance
        # row of a study read is checked against them anyway.
        keyed = set(filters) == {"StudyInstanceUID"}
        return await self._query(
            "/studies", filters, fields, key, prove=not keyed, window=(offset, limit), as_listed=as_listed
        )

    async def search_series(
        self,
        study_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
        *,
        prove: bool = True,
    ) -> list[DicomJson]:
        path = f"/studies/{study_uid}/series" if study_uid else "/series"
        # One series may be listed once per patient sharing its study UID: keep those apart, as for studies.
        key = (tags.SERIES_INSTANCE_UID, *tags.OWNER)
        return await self._query(path, filters, fields, key, expected, missing_is_empty=True, prove=prove)

    async def search_instances(
        self,
        study_uid: str | None,
        series_uid: str | None,
        fields: Sequence[str],
        expected: int | None = None,
        filters: Filters = NO_FILTERS,
    ) -> list[DicomJson]:
        path = "/instances"
        if study_uid:
            path = f"/studies/{study_uid}{f'/series/{series_uid}' if series_uid else ''}/instances"
        key = (tags.SOP_INSTANCE_UID, *tags.OWNER)
        return await self._query(path, filters, fields, key, expected, missing_is_empty=True)

    async def series_metadata(self, study_uid: str, series_uid: str) -> list[DicomJson]:
        rows, _ = await self._page(f"/studies/{study_uid}/series/{series_uid}/metadata", "", missing_is_empty=True)
        return rows

    async def study_metadata(self, study_uid: str) -> list[DicomJson]:
        rows, _ = await self._page(f"/studies/{study_uid}/metadata", "", missing_is_empty=True)
        return rows

    async def check(self) -> None:
        await self._page("/studies", query_string({}, (), limit=1), missing_is_empty=False)

    async def _query(
        self,
        path: str,
        filters: Filters,
        fields: Sequence[str],
        key_tags: Sequence[str],
        expected: int | None = None,
        *,
        missing_is_empty: bool = False,
        prove: bool = True,
        window: tuple[int, int | None] = (0, None),
        as_listed: bool = False,
    ) -> list[DicomJson]:
        """Every row of a query (from the ``window``'s offset, at most its limit of them), following pages until
        the PACS has nothing more, within the request's budget (``bridge.qido.budget``); merged by ``key_tags``,
        or with ``as_listed`` every row as the PACS listed it.

        Some PACSes cap an answer silently, without the ``Warning`` PS3.18 asks for. Where the PACS gave no count
        for the level (``expected``), an answer that ended with rows is proved complete by one more request at
        ``offset`` = rows so far, which must come back empty; a PACS that answers it with rows already read
        ignores ``offset``, and what it sent cannot be proved complete: a 502, never a shorter list."""
        merged = RowMerger(key_tags)  # with ``as_listed`` too: a repeat is still told by a page bringing no new key
        listed: list[DicomJson] | None = [] if as_listed else None

        def answer() -> list[DicomJson]:
            return listed if listed is not None else merged.rows

        # Only what was asked for is kept, and attributes the rows repeat are held once (``RowTrimmer``): a
        # 10,000-instance study's rows are most of a read's memory.
        trimmer = RowTrimmer(tuple(dict.fromkeys([*fields, *key_tags])), unique=key_tags[:1]) if fields else None
        start, most = window
        offset = start
        repeats = 0
        proving = False
        budget = current_budget()
        ignores_offset = UpstreamBadResponse(
            f"the PACS answered QIDO {path} with rows and no count of them, and answered the request for the rows "
            "after those with the same rows again (it ignores offset): the bridge cannot tell whether it capped its "
            "answer, and refuses to present part of it as complete"
        )
        for _ in range(MAX_PAGES):
            # A window is rows [start, start + most) of the PACS's answer, however many of them merge. A proof
            # asks for one row past the end.
            limit = 1 if proving else _smallest(self._page_size, most - (offset - start) if most is not None else None)
            if budget is not None:
                limit = budget.reserve(limit)
            query = query_string(filters, fields, limit, offset=offset)
            try:
                page, warning = await self._page(path, query, missing_is_empty=missing_is_empty)
            finally:
                if budget is not None:
                    budget.release(limit or 0)
            if budget is not None:
                budget.spend_rows(len(page), f"QIDO {path}")
            if trimmer is not None:
                page = trimmer.trim(page)
            offset += len(page)
            before = len(merged)
            merged.add(page)
            if listed is not None:
                listed.extend(page)
            new = len(merged) - before
            if most is not None and offset - start >= most:
                return answer()[:most]  # also when the PACS ignored the limit
            if proving and new:
                proving = False
                continue  # rows past what looked like the end: a silent cap; read on, page by page
            if proving and page:
                raise ignores_offset
            repeats = repeats + 1 if page and not new else 0
            if repeats >= MAX_REPEATS:
                if prove and expected is None:
                    raise ignores_offset  # a Warning or a full page said there was more, and nothing says how much
                log.warning("PACS sends the same rows again and again for QIDO %s (ignores offset?)", path)
                return answer()
            more = has_more(
                page_rows=len(page), limit=limit, warning=warning, total_rows=len(merged), expected=expected
            )
            if more:
                continue
            if not (prove and expected is None and page):
                return answer()
            proving = True  # the answer ended with rows, and nothing says they were all: ask past them
        raise UpstreamBadResponse(f"PACS kept paging past {MAX_PAGES} pages for QIDO {path}")

    async def _page(self, path: str, query: str, *, missing_is_empty: bool) -> tuple[list[DicomJson], str | None]:
        """One PACS request, behind the circuit breaker, retried (connection failures, 502, 503) with jittered
        backoff while the client request's deadline leaves room."""
        url = self._base.with_path(self._base_path + path, encoded=False).with_query(None)
        url = URL(f"{url}?{query}", encoded=True) if query else url
        where = f"{'WADO-RS' if path.endswith('/metadata') else 'QIDO'} {path}"
        attempt = 0
        budget = current_budget()
        while True:
            if budget is not None:
                budget.spend_query(where)  # every attempt is a request; before the breaker hands out a probe
            if not self.breaker.allow():
                wait = self.breaker.retry_after()
                raise UpstreamUnavailable(
                    f"the PACS has failed {self.breaker.threshold} times in a row; it is given {wait} s before the "
                    "bridge asks it again (circuit breaker open)",
                    retry_after=wait,
                )
            try:
                result = await self._request(url, where, missing_is_empty)
            except DeadlineExceeded:
                self.breaker.abandoned()  # our own deadline: it says nothing about the PACS
                raise
            except UpstreamError as exc:
                PACS_REQUESTS.labels(type(exc).__name__.removeprefix("Upstream").lower()).inc()
                if isinstance(exc, UpstreamBadResponse) and not exc.server_error:
                    self.breaker.succeeded()  # it answered: alive, if unhelpful
                    raise
                self.breaker.failed()
                attempt += 1
                # The PACS's own Retry-After, when it gave one, is waited for (or passed on to the client).
                delay = max(backoff(attempt, self._retry_base, self._retry_cap), exc.retry_after or 0)
                left = remaining()
                if (
                    not isinstance(exc, UpstreamUnavailable)
                    or attempt > self._retries
                    or delay > MAX_WAIT
                    or (left is not None and left < delay + MIN_ATTEMPT)
                ):
                    raise
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.breaker.abandoned()  # cancelled, or a bug: neither may hold the half-open probe
                raise
            self.breaker.succeeded()
            PACS_REQUESTS.labels("ok").inc()
            return result

    async def _request(self, url: URL, where: str, missing_is_empty: bool) -> tuple[list[DicomJson], str | None]:
        left = remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"the request's deadline passed before {where} (BRIDGE_REQUEST_DEADLINE)")
        try:
            # The deadline bounds the wait for a PACS slot as well as the request itself.
            async with asyncio.timeout(left):
                return await self._send(url, where, missing_is_empty, left)
        except TimeoutError:
            raise DeadlineExceeded(f"the request's deadline passed during {where} (BRIDGE_REQUEST_DEADLINE)") from None

    async def _send(
        self, url: URL, where: str, missing_is_empty: bool, left: float | None
    ) -> tuple[list[DicomJson], str | None]:
        # The client's request id travels to the PACS, so one request can be followed across both logs.
        headers = {"X-Request-ID": request_id} if (request_id := REQUEST_ID.get()) else None
        timeout = self._timeout if left is None or left >= self._timeout_seconds else aiohttp.ClientTimeout(left)
        async with self._semaphore:
            try:
                async with self._session.get(url, timeout=timeout, headers=headers) as response:
                    if response.status == 204 or (response.status == 404 and missing_is_empty):
                        return [], None
                    if response.status != 200:
                        raise _status_error(response.status, where, _retry_after(response.headers.get("Retry-After")))
                    body = await self._read(response, where)
                    warning = ", ".join(response.headers.getall("Warning", [])) or None
            except UpstreamError:
                raise
            except TimeoutError:
                raise UpstreamTimeout(
                    f"PACS did not answer {where} within {self._timeout_seconds:g} s (BRIDGE_QIDO_TIMEOUT)"
                ) from None
            except aiohttp.ClientPayloadError as exc:
                raise UpstreamBadResponse(f"PACS sent a truncated or corrupt body for {where}: {exc}") from None
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamUnavailable(f"cannot connect to the PACS for {where}: {exc.os_error}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                raise UpstreamUnavailable(f"the PACS dropped the connection during {where}: {exc}") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(f"request to the PACS failed for {where}: {type(exc).__name__}") from None
        return _parse(body, where), warning

    async def _read(self, response: aiohttp.ClientResponse, where: str) -> bytes:
        """The body, refused (502) beyond ``max_bytes``: a PACS must not be able to exhaust our memory."""
        too_big = UpstreamBadResponse(
            f"PACS answer to {where} exceeds {self._max_bytes} bytes (BRIDGE_QIDO_MAX_BYTES); narrow the query"
        )
        if response.content_length is not None and response.content_length > self._max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)


def _smallest(*limits: int | None) -> int | None:
    """The smallest of the limits that are set (0 and None: unset)."""
    return min((limit for limit in limits if limit), default=None)


def _retry_after(value: str | None) -> int | None:
    """A Retry-After in seconds (the HTTP-date form is rare from a PACS, and ignored)."""
    return int(value) if value and value.strip().isdigit() else None


def _status_error(status: int, where: str, retry_after: int | None = None) -> UpstreamError:
    if status in (502, 503, 429):
        return UpstreamUnavailable(f"PACS is unavailable (HTTP {status}) for {where}", retry_after=retry_after)
    if status == 504:
        return UpstreamTimeout(f"PACS timed out (HTTP {status}) for {where}")
    if status in (401, 403):
        return UpstreamBadResponse(f"PACS refused the bridge's credentials (HTTP {status}) for {where}")
    if status == 413:
        return UpstreamBadResponse(f"PACS found {where} too broad (HTTP 413)")
    failing = UpstreamBadResponse(f"PACS answered HTTP {status} to {where}")
    failing.server_error = status >= 500  # a PACS answering 5xx is failing, not merely unhelpful
    return failing


def _parse(body: bytes, where: str) -> list[DicomJson]:
    if not body.strip():
        return []  # some PACSes send 200 with an empty body for no match
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponse(f"PACS sent malformed JSON for {where}: {exc}") from None
    if not isinstance(parsed, list) or not all(isinstance(row, dict) for row in parsed):
        raise UpstreamBadResponse(f"PACS sent JSON that is not a list of DICOM datasets for {where}")
    return parsed
