"""Concurrency helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
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


class running:
    """A background task for the duration of a block: cancelled and awaited when it ends, however it ends.

    A class rather than a generator-based context manager: a cleanup context closed while the start-up fails
    (its generator thrown into, or finalized) must not have a second generator to stop."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._coroutine, self._name = coroutine, name
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._coroutine, name=self._name)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
