"""A TCP proxy in front of a real PACS that can be told to misbehave, as a failing network or PACS would.

Modes: ``pass`` (forward as is), ``down`` (accept and close at once), ``stall`` (accept, read, never answer),
``garbage`` (answer 200 with a body that is not JSON), ``cut`` (forward, then send only half the body the
headers announce), ``drop`` (read the request, close without a word).
"""

from __future__ import annotations

import asyncio
import contextlib


class ToxicProxy:
    """Every connection is served by a task registered as it is accepted; ``close`` stops accepting, cancels
    them and waits for them, so no task or socket outlives the proxy. ``connections`` counts what reached the
    PACS: every connection a client opened, in every mode."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> ToxicProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        while self._tasks:  # a task's own cleanup may not add one, but a last accept may have
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called as a connection is accepted: its task is registered before it can run (a coroutine callback's
        task would be made by asyncio, out of sight until its first step, and escape a ``close`` before it)."""
        if self._closing:
            writer.close()
            return
        self.connections += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._one(reader, writer, self.mode)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await _closed(writer)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
        if mode == "down":
            return
        request = await reader.readuntil(b"\r\n\r\n")
        if mode == "stall":
            await asyncio.get_running_loop().create_future()  # never answered; cancelled by close
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
    """Close a connection and wait until its socket is closed. The socket closes even if this wait is cancelled
    (``close`` schedules it); the cancellation is not swallowed: a cancelled task ends cancelled, and no shielded
    waiter is left behind, pending, when the loop closes."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):  # a reset connection is closed too
        await writer.wait_closed()
