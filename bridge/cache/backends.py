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
from typing import TYPE_CHECKING, Protocol

from bridge.cache.freshness import Entry

if TYPE_CHECKING:
    from redis.asyncio.lock import Lock as AsyncRedisLock

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def study_key(study_uid: str, partition: str = "") -> str:
    """The key of a study's entry. ``partition`` is room for an authorization scope: entries of different
    partitions never mix."""
    return f"study:{partition}:{study_uid}"


#: How long a study's version record is kept after it was last asked for.
SEEN_RETENTION = 90 * 86_400.0

#: Atomically: the record's time if it names this version (and it is kept longer), else a new record from now.
_VERSION_SINCE = """
local held = redis.call('GET', KEYS[1])
if held then
  local space = string.find(held, ' ', 1, true)
  if space and string.sub(held, 1, space - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return string.sub(held, space + 1)
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return ARGV[2]
"""


def study_uid_of(key: str) -> str:
    return key.rsplit(":", 1)[-1]


class CacheBackend(Protocol):
    description: str

    async def get(self, key: str) -> Entry | None: ...

    def held(self, key: str) -> Entry | None:
        """The entry if this process holds it, found without I/O; None if not (a shared store's: then ``get``)."""
        ...

    async def put(self, key: str, entry: Entry, retention: float) -> bool:
        """Store ``entry`` (it may be dropped after ``retention`` seconds); False if it could not be stored."""
        ...

    async def keys(self) -> list[str]:
        """Every study key held (for the scheduled refresh)."""
        ...

    async def checked_at(self, key: str) -> float | None:
        """When the PACS last confirmed the entry (``Entry.checked_at``), read without its body; None if absent or
        a remembered 404/409 (nothing to re-validate: it expires soon by itself)."""
        ...

    async def version_since(self, key: str, version: str, now: float) -> float:
        """Since when the entry's content has been ``version``: the time on record if the record names this
        version, else ``now``, which the record then holds (a content that changes back to an earlier version
        gets a new time). The record is the study's, apart from its entry, and kept for ``SEEN_RETENTION``
        after it was last asked: an evicted or expired study read again with the same content, or a study
        read by two replicas at once, keeps its ``meta.lastUpdated``."""
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
        #: key -> (version, since); small records, bounded by count, least recently asked dropped first.
        self._versions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    #: Studies whose version record is kept in memory.
    MAX_VERSIONS = 100_000

    @property
    def size(self) -> int:
        return self._bytes

    async def get(self, key: str) -> Entry | None:
        return self.held(key)

    def held(self, key: str) -> Entry | None:
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
        if entry.size > self._max_bytes:
            return False  # larger than the whole cache: not worth evicting everything else for
        self._entries[key] = (entry, self._clock() + retention)
        self._bytes += entry.size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    async def keys(self) -> list[str]:
        return list(self._entries)

    async def checked_at(self, key: str) -> float | None:
        held = self._entries.get(key)
        if held is None or self._clock() >= held[1] or held[0].status != 200:
            return None  # an expired entry is not held, as for ``get``
        return held[0].checked_at

    async def version_since(self, key: str, version: str, now: float) -> float:
        held = self._versions.get(key)
        since = held[1] if held is not None and held[0] == version else now
        self._versions[key] = (version, since)
        self._versions.move_to_end(key)
        if len(self._versions) > self.MAX_VERSIONS:
            self._versions.popitem(last=False)
        return since

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
        self._bytes -= entry.size


async def _keep_renewing(lock: AsyncRedisLock, ttl: float, name: str) -> None:
    """Reset the lock's expiry to ``ttl`` three times per ``ttl`` until cancelled, or until it is found lost."""
    from redis.exceptions import LockError

    while True:
        await asyncio.sleep(ttl / 3)
        try:
            await lock.reacquire()
        except LockError:
            log.warning("refresh lock %s was lost (it expired while Redis could not be reached)", name)
            return
        except Exception as exc:  # Redis briefly away: try again at the next beat, the lock may still hold
            log.warning("refresh lock %s not renewed (%s)", name, type(exc).__name__)


class RedisBackend:
    """Entries in Redis, shared by every replica; Redis's own expiry drops them after their retention."""

    def __init__(self, url: str, prefix: str = "imaging-bridge:") -> None:
        from redis.asyncio import Redis

        # Short timeouts: a stalled Redis must cost a read little, and it is then a miss (the PACS answers).
        self._redis = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix
        self._version_since = self._redis.register_script(_VERSION_SINCE)
        self.description = "redis"

    def held(self, key: str) -> Entry | None:
        return None  # every entry is in Redis

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

    async def checked_at(self, key: str) -> float | None:
        try:
            # The entry's header is at its start: a range read, not the whole body (megabytes for a large study).
            head = await self._redis.getrange(self._prefix + key, 0, Entry.HEAD_READ - 1)
            if not isinstance(head, bytes) or not head:
                return None
            if len(head) >= 4 and Entry.head_size(head) <= len(head):
                entry: Entry | None = Entry.unpack(head)  # the header, and whatever part of the body came with it
            else:
                entry = await self.get(key)  # a header longer than the range: read it all
            return entry.checked_at if entry is not None and entry.status == 200 else None
        except Exception as exc:  # as for ``get``: an entry that cannot be read is not there
            log.warning("cache read failed (%s)", type(exc).__name__)
            return None

    async def version_since(self, key: str, version: str, now: float) -> float:
        try:
            since = await self._version_since(
                keys=[f"{self._prefix}version:{key}"], args=[version, repr(now), int(SEEN_RETENTION * 1000)]
            )
            return float(since)
        except Exception as exc:  # no Redis: the time is this replica's own
            log.warning("cache version record failed (%s)", type(exc).__name__)
            return now

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
        # While its holder lives, it is renewed, however long the refresh takes.
        lock = self._redis.lock(self._prefix + "lock:" + name, timeout=ttl, blocking=False)
        try:
            taken = await lock.acquire()
        except Exception as exc:  # no Redis, no lock: nobody refreshes rather than everybody
            log.warning("refresh lock unavailable (%s)", type(exc).__name__)
            taken = False
        renewal = asyncio.create_task(_keep_renewing(lock, ttl, name)) if taken else None
        try:
            yield bool(taken)
        finally:
            if renewal is not None:
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
            if taken:
                try:
                    await lock.release()
                except LockError:
                    log.warning("refresh lock %s expired before the refresh ended", name)
                except Exception as exc:  # Redis gone meanwhile: the lock expires by itself
                    log.warning("refresh lock %s not released (%s)", name, type(exc).__name__)

    def lock(self, name: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(name, ttl)

    async def close(self) -> None:
        await self._redis.aclose()
