"""A TCP proxy in front of a real PACS that can be told to misbehave, as a failing network or PACS would.

Modes: ``pass`` (forward as is), ``down`` (accept and close at once), ``stall`` (accept, read, never answer),
``garbage`` (answer 200 with a body that is not JSON), ``cut`` (forward, then send only half the body the
headers announce), ``drop`` (read the request, close without a word).
"""

from __future__ import annotations

import asyncio
import contextlib


class ToxicProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ToxicProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer, self.mode)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            await _closed(writer)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
        if mode == "down":
            return
        request = await reader.readuntil(b"\r\n\r\n")
        if mode == "stall":
            await asyncio.sleep(3600)
        if mode == "drop":
            return
        if mode == "garbage":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 11\r\n"
                         b"Connection: close\r\n\r\nnot json!!!")  # fmt: skip
            await writer.drain()
            return
        # pass and cut: one request per connection, so the upstream's answer ends with its connection.
        head, _, _ = request.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        try:
            upstream_writer.write(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n")
            await upstream_writer.drain()
            answer = await upstream_reader.read()
        finally:
            await _closed(upstream_writer)  # also when cancelled mid-read: no socket outlives the test
        if mode == "cut":
            headers, _, body = answer.partition(b"\r\n\r\n")
            answer = headers + b"\r\n\r\n" + body[: len(body) // 2]
        writer.write(answer)
        await writer.drain()


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Close a connection and wait until its socket is closed, even in a task being cancelled."""
    writer.close()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(writer.wait_closed())
