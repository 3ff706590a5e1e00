"""A value a remote server gives (its metadata, its key set, an access token), fetched by one task at a time.

Concurrent askers share the fetch under way (single flight), so a burst of requests with a new key id, or the
first requests after a start, cost the server one request. A fetch that fails is not tried again for
``failure_backoff`` seconds: a server that is down is not asked once per client request, each then waiting for
its timeout. A value may be kept past its time when a refetch fails (``keep_stale``: a key set does not become
wrong because its server is down a minute), never an access token past its expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bridge.errors import AuthServerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a failed fetch is not tried again (its error is raised again meanwhile, when there is no value).
FAILURE_BACKOFF = 5.0


class Fetched(Generic[T]):
    """``fetch`` gives a value and the seconds it may be kept; ``get`` gives it, fetching when it is too old."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[T, float]]],
        *,
        clock: Callable[[], float] = time.time,
        failure_backoff: float = FAILURE_BACKOFF,
        keep_stale: bool = True,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._failure_backoff = failure_backoff
        self._keep_stale = keep_stale
        self._value: T | None = None
        self._has_value = False
        self._expires = -math.inf
        self._attempted = -math.inf
        self._error: str | None = None  # the last fetch's failure, None once one succeeds
        self._task: asyncio.Task[None] | None = None
        #: Fetches started (for tests and metrics).
        self.fetches = 0

    async def get(self) -> T:
        """The value, fetched first if there is none or it is too old."""
        if self._has_value and self._clock() < self._expires:
            return self._value  # type: ignore[return-value]  # set together with _has_value
        if self._has_value and not self._keep_stale:
            self.invalidate()
        return await self._shared(min_interval=0.0)

    async def refetch(self, *, unless_within: float) -> T:
        """The value fetched again (the server may have a new one), unless a fetch started less than
        ``unless_within`` seconds ago: then the value as it is."""
        return await self._shared(min_interval=unless_within)

    def invalidate(self) -> None:
        """Forget the value (an access token the server no longer takes): the next ``get`` fetches."""
        self._value, self._has_value, self._expires = None, False, -math.inf

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _shared(self, min_interval: float) -> T:
        task = self._task
        if task is None:
            since = self._clock() - self._attempted
            if since >= (self._failure_backoff if self._error is not None else min_interval):
                self._attempted = self._clock()
                self.fetches += 1
                task = self._task = asyncio.create_task(self._run())
                task.add_done_callback(self._done)
        if task is not None:
            # Shielded: a client that goes away does not cancel the fetch the others wait for.
            await asyncio.shield(task)
        if self._has_value:
            return self._value  # type: ignore[return-value]  # set together with _has_value
        raise AuthServerUnavailable(self._error or "the authorization server is unavailable; retry later")

    async def _run(self) -> None:
        try:
            value, keep = await self._fetch()
        except AuthServerUnavailable as exc:
            self._error = exc.diagnostics
            if self._has_value:
                log.warning("keeping what was fetched before: %s", exc.diagnostics)
            return
        self._value, self._has_value, self._error = value, True, None
        self._expires = self._clock() + keep

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone
