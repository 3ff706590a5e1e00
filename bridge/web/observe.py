"""What an operator sees: Prometheus metrics, one JSON access-log line per request, a request id.

The access log is off the hot path: a request appends one tuple to a buffer, and a background task hands the
buffer to a writer thread a few times a second, which formats the lines and writes them. Formatting a record
through the ``logging`` module per request (handlers, formatters, locks, a write per line) halves a cached
read's rate; building and serializing the line on the request's path cost a tenth of it.

Query strings name patients (``patient=…``, ``identifier=…``), and an access log is kept and shipped widely: its
lines keep the parameters' names (the shape of what was asked) and the values of those that say nothing of a
patient (``_count``, ``modality``…); every other value is written ``***`` and a name the bridge does not know is
left out whole. The audit log, not this one, is where identifiers belong. The writer thread does this, not the
request.

The request id (``X-Request-ID``, taken from the client when sane, made otherwise) is returned in the response,
written in the log line, and sent to the PACS with every query made for the request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO
from urllib.parse import unquote_plus

import orjson
from aiohttp import hdrs, web
from multidict import istr
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.aio import periodically, running
from bridge.bases import BASES
from bridge.fhirversion import FhirVersion
from bridge.logs import json_line_safe
from bridge.qido.resilience import DEADLINE
from bridge.search.parameters import CHAINS, FORMAT_PARAMETERS, RESULT_PARAMETERS, SEARCH_PARAMETERS
from bridge.telemetry import REGISTRY, REQUEST_ID, STATS
from bridge.web.audit import AuditLog
from bridge.web.hosts import HostCheck
from bridge.web.outcomes import check_size, error_response
from bridge.web.ratelimit import RateLimiter, client_key

#: Case-insensitive once, not on every lookup (as aiohttp's ``hdrs`` names are).
X_REQUEST_ID = istr("X-Request-ID")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Start a streamed answer (one its handler sends before returning), with its request's id: the envelope
    writes the id into answers returned whole, but a streamed one's headers are gone by then. (Not an
    ``on_response_prepare`` signal: that would cost every cached read a coroutine call for the few that stream.)
    The id is the one the envelope set in the request's context (its handler runs in the same task), not a
    request key: storing one would cost every request for the few that stream."""
    if (request_id := REQUEST_ID.get()) is not None:
        response.headers[X_REQUEST_ID] = request_id
    await response.prepare(request)


class AccessLog:
    """JSON lines, one per request: recorded as a tuple on the request's path, formatted and written by one
    thread in batches."""

    def __init__(self, stream: IO[bytes] | None = None, interval: float = 0.2) -> None:
        self._stream = stream
        self._interval = interval
        self._records: list[Record] = []
        self.dropped = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")

    #: Lines held at most while standard output is slow; beyond, lines are dropped (and counted), not memory.
    MAX_LINES = 100_000

    def record(self, when: float, request_id: str, method: str, path: str, status: int, seconds: float) -> None:
        """One request: its start (epoch seconds), id, method, path, status and duration."""
        if len(self._records) >= self.MAX_LINES:
            self.dropped += 1
            return
        self._records.append((when, request_id, method, path, status, seconds))

    async def run(self) -> None:
        """Flush every ``interval`` seconds until cancelled, then once more."""
        try:
            await periodically(self._interval, self.flush)
        finally:
            self._writer.shutdown(wait=True)

    async def flush(self) -> None:
        if not self._records:
            return
        batch, self._records = self._records, []
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, batch)

    def _write(self, batch: list[Record]) -> None:
        data = json_line_safe(b"".join(map(_json_line, batch)))
        stream = self._stream or sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout: the log is lost, the service goes on
            self.dropped += len(batch)


Record = tuple[float, str, str, str, int, float]


def _json_line(record: Record) -> bytes:
    when, request_id, method, path, status, seconds = record
    line = {"time": round(when, 3), "id": request_id, "method": method, "path": redacted(path), "status": status,
            "ms": round(seconds * 1000, 2)}  # fmt: skip
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


#: Parameters whose values identify no one: kept, so that the log shows what was asked.
_KEPT = frozenset([*RESULT_PARAMETERS, *FORMAT_PARAMETERS, *(p.name for p in SEARCH_PARAMETERS if p.public)])
#: Every name the bridge knows (with its modifiers): shown, with its value as ``***``.
_KNOWN = frozenset(
    [*CHAINS]
    + [
        f"{p.name_in(version)}{m}"
        for p in SEARCH_PARAMETERS
        for version in FhirVersion
        for m in ("", *(f":{modifier}" for modifier in p.modifiers))
    ]
)
REDACTED = "***"


#: The patient compartment's path names the patient: ``/fhir/Patient/PAT-123/ImagingStudy`` (or under ``/fhir/r4``…).
_COMPARTMENT = re.compile(rf"^((?:{'|'.join(re.escape(base.path) for base in BASES)})/Patient/)[^/?]*")


def redacted(path: str) -> str:
    """The raw path with the patient of a compartment search and its query's values redacted, but for ``_KEPT``
    parameters; unknown names, which may be anything (``?PAT-123``), are left out whole."""
    path = _COMPARTMENT.sub(rf"\g<1>{REDACTED}", path)
    head, mark, query = path.partition("?")
    if not mark:
        return path
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        name = unquote_plus(key)
        if name in _KEPT:
            pairs.append(pair)
        elif name in _KNOWN:
            pairs.append(f"{key}={REDACTED}" if equals else key)
        elif pair:
            pairs.append(REDACTED)
    return f"{head}?{'&'.join(pairs)}"


ACCESS_LOG = web.AppKey("access_log", AccessLog)


class RequestIds:
    """Ids unique in this process and across processes: a random prefix and a counter (no uuid per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex() + "-"
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return self._prefix + format(next(self._count), "x")


class Envelope:
    """What every request goes through: its id, its deadline, the Host check of FHIR and DICOMweb routes
    (``hosts``, when links are built from the Host), error rendering (``bridge.web.outcomes``), metrics and, if
    asked, the access log, the audit log of routes to patient data (``audit``) and the rate limit of FHIR and
    DICOMweb routes (``limiter``).

    Applied to each route's handler when it is registered, rather than as an aiohttp middleware: the middleware
    chain adds two coroutine layers and a lookup to every request, which measurably slows a cached read."""

    def __init__(
        self,
        access_log: AccessLog | None,
        deadline: float = 60.0,
        hosts: HostCheck | None = None,
        *,
        audit: AuditLog | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._access_log = access_log
        self._deadline = deadline
        self._hosts = hosts
        self._audit = audit
        self._limiter = limiter
        self._new_id = RequestIds()

    def __call__(
        self,
        handler: Handler,
        route: str,
        authorize: Callable[[web.Request], Awaitable[None]] | None = None,
        audited: str | None = None,
    ) -> Handler:
        """``handler`` wrapped; ``route`` names it in the metrics (its pattern, e.g. ``/fhir/ImagingStudy/{id}``);
        ``authorize``, when authorization is on, runs first and sets the request's grant (or raises 401/403);
        ``audited``, for a route to patient data, is its FHIR interaction (``read``, ``search-type`` …): each of
        its requests is then written to the audit log, refused ones too."""
        stats = STATS.route(route)
        access_log, deadline, new_id = self._access_log, self._deadline, self._new_id
        # The Host shapes the links of FHIR answers and of the gateway's (BulkDataURIs), and both serve patient data a
        # rebound name must not reach (bridge.web.hosts); probes and metrics answer whatever name they are asked by.
        served = route.startswith(("/fhir", "/dicom-web"))
        check_host = self._hosts if served else None
        limiter = self._limiter if served else None
        audit = self._audit if audited else None
        interaction = audited or ""

        async def observed(request: web.Request) -> web.StreamResponse:
            offered = request.headers.get(X_REQUEST_ID)
            request_id = offered if offered and _SANE_ID.match(offered) else new_id()
            started = time.monotonic()
            # aiohttp runs each request in a task of its own, with its own copy of the context: these two die
            # with the request, so they need no reset. Everything asked of the PACS for this request carries
            # its id and shares one deadline (BRIDGE_REQUEST_DEADLINE).
            REQUEST_ID.set(request_id)  # also what ``prepare`` writes into a streamed answer
            DEADLINE.set(started + deadline)
            status = 500
            admitted = False  # to the audit log: recorded, whatever the answer
            try:
                try:
                    if audit is not None:
                        audit.admit()  # a 503 while the audit log cannot keep up: nothing is served unaudited
                        admitted = True
                    check_size(request)
                    if check_host is not None:
                        check_host(request.headers.get(hdrs.HOST))
                    if authorize is not None:
                        await authorize(request)
                    # After authorization: the bucket is the token's client's (verifying a new token is limited per
                    # address in the authorization step).
                    if limiter is not None:
                        await limiter.check(client_key(request))
                    response = await handler(request)
                except Exception as exc:
                    response = error_response(request, exc)  # raises again what is not ours to answer
                status = response.status
                # A streamed answer's headers are sent already, with the id (``prepare``): writing it again changes
                # nothing, and costs less than asking every answer whether it was streamed.
                response.headers[X_REQUEST_ID] = request_id
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                elapsed = time.monotonic() - started
                stats.record(request.method, status, elapsed)
                if access_log is not None:
                    access_log.record(
                        time.time() - elapsed, request_id, request.method, request.raw_path, status, elapsed
                    )
                if admitted and audit is not None:
                    audit.record(request, request_id, interaction, status, time.time(), elapsed)

        return observed


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def access_log_context(app: web.Application) -> AsyncIterator[None]:
    async with running(app[ACCESS_LOG].run(), "access-log"):
        yield
