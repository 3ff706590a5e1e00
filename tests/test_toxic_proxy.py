"""The chaos tests' toxic proxy itself, in front of a tiny in-process upstream: it counts what reaches the PACS,
and closing it ends every connection and task it has, whatever each was doing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.support.toxic_proxy import ToxicProxy
from tests.support.waiting import eventually

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWER)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def ask(proxy: ToxicProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /dicom-web/studies HTTP/1.1\r\nHost: pacs\r\n\r\n")
    await writer.drain()
    return reader, writer


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    """What came back before the connection ended; a reset (closed with our request unread) is nothing."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def test_it_forwards_and_counts_connections(upstream: int) -> None:
    proxy = await ToxicProxy("127.0.0.1", upstream).start()
    try:
        for mode in ("pass", "down"):
            proxy.mode = mode
            reader, writer = await ask(proxy)
            answer = await answer_of(reader)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            assert answer == (ANSWER if mode == "pass" else b"")
        assert proxy.connections == 2
    finally:
        await proxy.close()


async def test_closing_ends_every_connection_and_task(upstream: int) -> None:
    proxy = await ToxicProxy("127.0.0.1", upstream).start()
    proxy.mode = "stall"
    clients = [await ask(proxy) for _ in range(5)]
    ends = [asyncio.ensure_future(answer_of(reader)) for reader, _ in clients]
    await eventually(lambda: proxy.connections == 5, what="five connections accepted")
    await asyncio.wait_for(proxy.close(), timeout=5)
    assert await asyncio.wait_for(asyncio.gather(*ends), timeout=5) == [b""] * 5  # each closed by the proxy
    for _, writer in clients:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # conftest's no_task_left_running then finds none of the proxy's tasks
