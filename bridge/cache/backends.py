"""Where cache entries live: in this process (bounded by bytes, least recently used first out) or in Redis,
shared by every replica. Both behind ``CacheBackend``; both provide the refresh lock.

A cache is an optimization: a backend that fails (Redis down) is logged and treated as empty, never as an
error for the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from bridge.cache.freshness import Entry

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def study_key(study_uid: str, partition: str = "") -> str:
    """The key of a study's entry. ``partition`` is room for an authorization scope: entries of different
    partitions never mix."""
    return f"study:{partition}:{study_uid}"


def study_uid_of(key: str) -> str:
    return key.rsplit(":", 1)[-1]


class CacheBackend(Protocol):
    description: str

    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, retention: float) -> bool:
        """Store ``entry`` (it may be dropped after ``retention`` seconds); False if it could not be stored."""
        ...

    async def keys(self) -> list[str]:
        """Every study key held (for the scheduled refresh)."""
        ...

    def lock(self, name: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        """Try to take a named lock for at most ``ttl`` seconds; yields whether it was taken."""
        ...

    async def close(self) -> None: ...


class MemoryBackend:
    """Entries in this process, least recently used dropped first once ``max_bytes`` are held."""

    description = "memory"

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, clock: Clock = time.time) -> None:
        self._entries: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def size(self) -> int:
        return self._bytes

    async def get(self, key: str) -> Entry | None:
        held = self._entries.get(key)
        if held is None:
            return None
        entry, expires = held
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: Entry, retention: float) -> bool:
        if key in self._entries:
            self._drop(key)
        if len(entry.body) > self._max_bytes:
            return False  # larger than the whole cache: not worth evicting everything else for
        self._entries[key] = (entry, self._clock() + retention)
        self._bytes += len(entry.body)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    async def keys(self) -> list[str]:
        return list(self._entries)

    @asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            yield True

    def lock(self, name: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(name)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        entry, _ = self._entries.pop(key)
        self._bytes -= len(entry.body)


class RedisBackend:
    """Entries in Redis, shared by every replica; Redis's own expiry drops them after their retention."""

    def __init__(self, url: str, prefix: str = "imaging-bridge:") -> None:
        from redis.asyncio import Redis

        # Short timeouts: a stalled Redis must cost a read little, and it is then a miss (the PACS answers).
        self._redis = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix
        self.description = "redis"

    async def get(self, key: str) -> Entry | None:
        try:
            packed = await self._redis.get(self._prefix + key)
            return Entry.unpack(packed) if isinstance(packed, bytes) and packed else None
        except Exception as exc:  # Redis down, or an entry it cannot read (another version's): a miss
            log.warning("cache read failed (%s): reading from the PACS", type(exc).__name__)
            return None

    async def put(self, key: str, entry: Entry, retention: float) -> bool:
        try:
            await self._redis.set(self._prefix + key, entry.pack(), px=max(1, int(retention * 1000)))
        except Exception as exc:
            log.warning("cache write failed (%s)", type(exc).__name__)
            return False
        return True

    async def keys(self) -> list[str]:
        found = []
        try:
            async for key in self._redis.scan_iter(match=f"{self._prefix}study:*", count=1000):
                found.append(key.decode().removeprefix(self._prefix))
        except Exception as exc:
            log.warning("cache listing failed (%s)", type(exc).__name__)
        return found

    @asynccontextmanager
    async def _lock(self, name: str, ttl: float) -> AsyncIterator[bool]:
        from redis.exceptions import LockError

        # The lock expires by itself: a refresher that crashed holding it does not block the others for long.
        lock = self._redis.lock(self._prefix + "lock:" + name, timeout=ttl, blocking=False)
        try:
            taken = await lock.acquire()
        except Exception as exc:  # no Redis, no lock: nobody refreshes rather than everybody
            log.warning("refresh lock unavailable (%s)", type(exc).__name__)
            taken = False
        try:
            yield bool(taken)
        finally:
            if taken:
                try:
                    await lock.release()
                except LockError:
                    log.warning("refresh lock %s expired before the refresh ended", name)

    def lock(self, name: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(name, ttl)

    async def close(self) -> None:
        await self._redis.aclose()
