"""The process's lifecycle: on SIGTERM it stops accepting, finishes what is in flight, and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

STUDY = "2.25.55"


def slow_pacs(delay: float) -> web.Application:
    """A DICOMweb server that takes ``delay`` seconds over the study query."""

    async def studies(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response(
            [{"0020000D": {"vr": "UI", "Value": [STUDY]}, "00100020": {"vr": "LO", "Value": ["P"]}}]
        )

    async def series(request: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/dicom-web/studies", studies)
    app.router.add_get("/dicom-web/studies/{study}/series", series)
    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    pacs = TestServer(slow_pacs(1.5))
    await pacs.start_server()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_QIDO_URL=str(pacs.make_url("/dicom-web")), BRIDGE_PORT=str(port), BRIDGE_SHUTDOWN_TIMEOUT="10")
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(100):  # wait until it listens
                try:
                    async with client.get(f"http://127.0.0.1:{port}/healthz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            in_flight = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy/{STUDY}"))
            await asyncio.sleep(0.5)
            bridge.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status == 200
            assert (await response.json())["id"] == STUDY
        code = await asyncio.wait_for(bridge.wait(), timeout=15)
        assert code == 0
        stderr = (await bridge.stderr.read()).decode() if bridge.stderr else ""
        assert "Traceback" not in stderr
    finally:
        if bridge.returncode is None:
            bridge.kill()
            await bridge.wait()
        await pacs.close()
