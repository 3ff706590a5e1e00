"""Waiting in tests without guessing durations: poll a condition until it holds or a deadline passes.

A fixed ``sleep`` before an assertion is either too short on a loaded machine (a flaky failure) or longer than
needed everywhere else; polling waits exactly as long as the thing takes, and a deadline turns a hang into a
failure that says what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Generous: a deadline only matters when the awaited thing never happens.
DEFAULT_WITHIN = 10.0


async def eventually(condition: Callable[[], T | Awaitable[T]], *, within: float = DEFAULT_WITHIN, what: str = "") -> T:
    """The first truthy value of ``condition()`` (a function or coroutine function), asked again after each pass
    of the event loop; an ``AssertionError`` naming ``what`` (or the condition) once ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # a truthy T, not an awaitable, once awaited
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what or getattr(condition, '__qualname__', condition)}")
        await asyncio.sleep(0.005)  # the poll interval: lets the awaited tasks run, then asks again
