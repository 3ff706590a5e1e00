"""What the benchmark scripts share: a free port, waiting for a server, a process's CPU time, a proxy counting
what a bridge asks of the PACS."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, seconds: float = 30, headers: dict[str, str] | None = None) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counter:
    """Requests and rows that went through a ``counting_proxy``."""

    requests: int = 0
    rows: int = 0


def counting_proxy(upstream: str, counter: Counter) -> web.Application:
    """Forwards every GET under /dicom-web to ``upstream`` (a PACS's DICOMweb base) and counts the requests and
    the rows of each JSON answer: what a bridge in front of it asked of the PACS."""
    app = web.Application()

    async def forward(request: web.Request) -> web.Response:
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            "Accept": request.headers.get("Accept", "application/dicom+json"),
        }
        async with aiohttp.ClientSession() as session, session.get(
            upstream + request.path_qs.removeprefix("/dicom-web"), headers=headers
        ) as answer:  # fmt: skip
            body = await answer.read()
            counter.requests += 1
            if answer.status == 200 and body.strip() and "json" in answer.content_type:
                counter.rows += len(orjson.loads(body))
            return web.Response(body=body, status=answer.status, content_type=answer.content_type)

    app.router.add_get("/dicom-web/{path:.*}", forward)
    return app
