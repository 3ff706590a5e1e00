"""Concurrency helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise it (no PACS work for a lost answer)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(aw)) for aw in aws]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _as_coroutine(aw: Awaitable[T]) -> T:
    return await aw


async def periodically(interval: float, action: Callable[[], Awaitable[None]]) -> None:
    """``action`` every ``interval`` seconds until cancelled, then once more (what waits is not lost)."""
    try:
        while True:
            await asyncio.sleep(interval)
            await action()
    finally:
        await action()


@contextlib.asynccontextmanager
async def running(coroutine: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background task for the duration of the block: cancelled and awaited when it ends."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
