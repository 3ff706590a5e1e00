"""What an operator sees: Prometheus metrics, one JSON access-log line per request, a request id.

The access log is off the hot path: a request appends one pre-serialized line to a buffer, and a background task
hands the buffer to a writer thread a few times a second. Formatting a record through the ``logging`` module per
request (handlers, formatters, locks, a write per line) halves a cached read's rate; this costs a few
microseconds. The request id (``X-Request-ID``, taken from the client when sane, made otherwise) is returned in
the response, written in the log line, and sent to the PACS with every query made for the request.
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

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.qido.resilience import DEADLINE
from bridge.telemetry import REGISTRY, REQUEST_ID, REQUEST_STATS
from bridge.web.middleware import guarded

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessLog:
    """JSON lines, buffered in memory and written by one thread in batches."""

    def __init__(self, stream: IO[bytes] | None = None, interval: float = 0.2) -> None:
        self._stream = stream
        self._interval = interval
        self._lines: list[bytes] = []
        self.dropped = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")

    #: Lines held at most while standard output is slow; beyond, lines are dropped (and counted), not memory.
    MAX_LINES = 100_000

    def record(self, line: dict[str, object]) -> None:
        if len(self._lines) >= self.MAX_LINES:
            self.dropped += 1
            return
        self._lines.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    async def run(self) -> None:
        """Flush every ``interval`` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            await self.flush()
            self._writer.shutdown(wait=True)

    async def flush(self) -> None:
        if not self._lines:
            return
        batch, self._lines = self._lines, []
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, b"".join(batch))

    def _write(self, data: bytes) -> None:
        stream = self._stream or sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout: the log is lost, the service goes on
            self.dropped += data.count(b"\n")


ACCESS_LOG = web.AppKey("access_log", AccessLog)


class RequestIds:
    """Ids unique in this process and across processes: a random prefix and a counter (no uuid per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._count):x}"


def observe(log_requests: bool, deadline: float = 60.0) -> Middleware:
    """The one middleware: request id, metrics, errors rendered (``guarded``) and, if asked, the access log."""
    new_id = RequestIds()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = request.headers.get("X-Request-ID")
        request_id = offered if offered and _SANE_ID.match(offered) else new_id()
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        # Everything asked of the PACS for this request shares one deadline (BRIDGE_REQUEST_DEADLINE).
        deadline_token = DEADLINE.set(time.monotonic() + deadline)
        status = 500
        try:
            response = await guarded(request, handler)
            status = response.status
            response.headers["X-Request-ID"] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            REQUEST_ID.reset(token)
            DEADLINE.reset(deadline_token)
            elapsed = time.perf_counter() - started
            info = request.match_info.route.resource
            REQUEST_STATS.record(info.canonical if info is not None else "unmatched", request.method, status, elapsed)
            if log_requests:
                request.app[ACCESS_LOG].record({
                    "time": round(time.time(), 3), "id": request_id, "method": request.method,
                    "path": request.raw_path, "status": status, "ms": round(elapsed * 1000, 2),
                })  # fmt: skip

    return middleware


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def access_log_context(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[ACCESS_LOG].run(), name="access-log")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
