"""The process's lifecycle: on SIGTERM it stops accepting, finishes what is in flight, and exits cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.process import bridge_env
from tests.support.waiting import eventually

STUDY = "2.25.55"


def held_pacs(asked: asyncio.Event, answer: asyncio.Event) -> web.Application:
    """A DICOMweb server whose study query is held (``asked`` set) until the test lets it ``answer``."""

    async def studies(request: web.Request) -> web.Response:
        asked.set()
        await answer.wait()
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


async def refuses(port: int) -> bool:
    """Whether nothing listens on the port any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection was taken into the backlog as the listener closed, and dropped with it.
        return True
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return False


async def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    asked, answer = asyncio.Event(), asyncio.Event()
    pacs = TestServer(held_pacs(asked, answer))
    await pacs.start_server()
    port = free_port()
    env = bridge_env(BRIDGE_QIDO_URL=str(pacs.make_url("/dicom-web")), BRIDGE_PORT=str(port),
                     BRIDGE_SHUTDOWN_TIMEOUT="10")  # fmt: skip
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as client:

            async def alive() -> bool:
                try:
                    async with client.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(alive, within=30, what="the bridge listening")
            in_flight = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy/{STUDY}"))
            await asyncio.wait_for(asked.wait(), timeout=10)  # the request is at the PACS
            bridge.send_signal(signal.SIGTERM)
            await eventually(lambda: refuses(port), what="the bridge no longer accepting")
            # Not a wait for anything: the PACS keeps the request a while into the shutdown, which a bridge that
            # cancels what is in flight (or stops at once) does not outlast.
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            assert bridge.returncode is None
            answer.set()
            response = await asyncio.wait_for(in_flight, timeout=10)
            assert response.status == 200
            assert (await response.json())["id"] == STUDY
        code = await asyncio.wait_for(bridge.wait(), timeout=15)
        assert code == 0
        stderr = (await bridge.stderr.read()).decode() if bridge.stderr else ""
        assert "Traceback" not in stderr
    finally:
        answer.set()
        if bridge.returncode is None:
            bridge.kill()
            await bridge.wait()
        await pacs.close()
