"""Per-client rate limits (``BRIDGE_RATE_LIMIT`` requests a second, bursts of ``BRIDGE_RATE_LIMIT_BURST``): a token
bucket per client, in this process or, with ``BRIDGE_CACHE_URL``, in Redis, shared by every replica.

A client is its token's client id; without one (no token, a token refused, or authorization off), its network
address. ``X-Forwarded-For`` is not read: any client can write it, so trusting it would let each request pick
its own bucket. Behind a reverse proxy, requests without a client id therefore share the proxy's bucket.

Beyond its rate a client is answered 429 with ``Retry-After`` (whole seconds, at least 1), counted in
``bridge_rate_limited_requests_total``, before anything is asked of the PACS.

The buckets of this process are bounded (``MAX_CLIENTS``, least recently seen forgotten first: a forgotten
client starts again with a full bucket, as one not seen for a while would have anyway). Redis's expire each
once it would be full again.

If Redis cannot be reached the limit fails open to this replica's own buckets (a client then gets up to the
rate at each replica), with a warning and ``bridge_rate_limit_store_errors_total``, and Redis is tried again
after ``RETRY_REDIS`` seconds. The limit protects the PACS and the bridge from a runaway client; it is not an
access control, so a cache outage must not become an outage of the service, and a stalled Redis must not cost
every request a timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple, Protocol

from aiohttp import web
from prometheus_client import Counter

from bridge.auth.grant import Grant
from bridge.errors import TooManyRequests
from bridge.settings import Settings
from bridge.telemetry import REGISTRY
from bridge.web.keys import GRANT, SETTINGS

log = logging.getLogger(__name__)

LIMITED = Counter(
    "bridge_rate_limited_requests", "Requests refused (429) because their client's rate was spent.", registry=REGISTRY
)
STORE_ERRORS = Counter(
    "bridge_rate_limit_store_errors",
    "Rate limit checks Redis could not answer (this replica's own buckets decided them).",
    registry=REGISTRY,
)

Clock = Callable[[], float]


class Bucket(NamedTuple):
    tokens: float
    #: When ``tokens`` was counted (epoch seconds).
    updated: float


def take(bucket: Bucket | None, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
    """Spend one token of ``bucket`` (None: a client not seen, whose bucket is full), refilled at ``rate`` a
    second up to ``burst``. The bucket after, and 0 if the request may go, else the seconds until it could.

    A clock that went back (another replica's, through Redis) refills nothing rather than drains."""
    if bucket is None:
        tokens, updated = burst, now
    else:
        tokens = min(burst, bucket.tokens + max(0.0, now - bucket.updated) * rate)
        updated = max(now, bucket.updated)
    if tokens >= 1:
        return Bucket(tokens - 1, updated), 0.0
    return Bucket(tokens, updated), (1 - tokens) / rate


def retry_after(wait: float) -> int:
    """Retry-After: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def burst_of(rate: float, burst: int) -> int:
    """BRIDGE_RATE_LIMIT_BURST, or for 0 one second's worth (at least one request)."""
    return burst or max(1, math.ceil(rate))


class BucketStore(Protocol):
    description: str

    async def take(self, key: str, now: float) -> float:
        """Spend a token of ``key``'s bucket: 0 if the request may go, else the seconds until it could."""
        ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """The buckets of this process, at most ``max_clients``."""

    description = "this process"

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        self._rate, self._burst, self._max = rate, burst, max_clients
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, now: float) -> float:
        buckets = self._buckets
        bucket, wait = take(buckets.pop(key, None), now, self._rate, self._burst)
        buckets[key] = bucket  # last: the most recently seen
        if len(buckets) > self._max:
            buckets.popitem(last=False)
        return wait

    async def close(self) -> None:
        pass


#: ``take`` in Redis, atomically: KEYS[1] the bucket (a hash of tokens and time); ARGV rate, burst, now, and the
#: expiry in ms (once it would be full again, the bucket is no different from none). Returns the wait as a
#: string (a Lua number would be truncated to an integer).
_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(held[1]), tonumber(held[2])
if tokens == nil or updated == nil then
  tokens, updated = burst, now
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
  updated = math.max(now, updated)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'updated', string.format('%.17g', updated))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return string.format('%.17g', wait)
"""


class RedisBuckets:
    """Buckets in Redis, shared by every replica; ``fallback`` decides while Redis cannot be reached."""

    description = "redis"

    #: Seconds after a Redis failure before Redis is asked again (``fallback`` decides meanwhile).
    RETRY_REDIS = 5.0

    def __init__(self, url: str, rate: float, burst: int, fallback: BucketStore, prefix: str = "imaging-bridge:"):
        from redis.asyncio import Redis

        # Short timeouts: every limited request waits for this answer.
        self._redis = Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._script = self._redis.register_script(_TAKE)
        self._prefix = prefix + "rate:"
        self._args = (repr(float(rate)), str(burst))
        self._expiry_ms = str(math.ceil(burst / rate * 1000) + 1000)
        self._fallback = fallback
        self._redis_again = 0.0  # when Redis may be asked again after a failure

    async def take(self, key: str, now: float) -> float:
        if now < self._redis_again:
            return await self._fallback.take(key, now)
        try:
            answer = await self._script(keys=[self._prefix + key], args=[*self._args, repr(now), self._expiry_ms])
        except Exception as exc:  # unreachable, stalled, or refusing: see the module's docstring
            STORE_ERRORS.inc()
            log.warning("rate limits: Redis did not answer (%s); each replica limits on its own for %g s",
                        exc or type(exc).__name__, self.RETRY_REDIS)  # fmt: skip
            self._redis_again = now + self.RETRY_REDIS
            return await self._fallback.take(key, now)
        return float(answer)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    """``check`` each request's client before answering it."""

    #: Clients whose buckets this process keeps at most.
    MAX_CLIENTS = 65_536

    def __init__(self, rate: float, burst: int = 0, *, clock: Clock = time.time, max_clients: int = MAX_CLIENTS):
        if rate <= 0:
            raise ValueError("a rate limit needs a rate above 0")
        self.rate, self.burst = rate, burst_of(rate, burst)
        self.clock = clock
        self._memory = MemoryBuckets(rate, self.burst, max_clients)
        self.store: BucketStore = self._memory

    def share(self, redis_url: str) -> None:
        """Keep the buckets in Redis, shared with every replica (this process's own while it is unreachable)."""
        self.store = RedisBuckets(redis_url, self.rate, self.burst, fallback=self._memory)

    async def check(self, key: str) -> None:
        """``TooManyRequests`` (429 with Retry-After) if ``key``'s client has spent its rate."""
        wait = await self.store.take(key, self.clock())
        if wait > 0:
            LIMITED.inc()
            seconds = retry_after(wait)
            raise TooManyRequests(
                f"this client made more than {self.rate:g} requests a second (bursts of {self.burst}; "
                f"BRIDGE_RATE_LIMIT): retry after {seconds} s",
                retry_after=seconds,
            )

    async def close(self) -> None:
        await self.store.close()


def client_key(request: web.Request) -> str:
    """Whose bucket a request spends: its token's client id, else its peer's address."""
    grant: Grant | None = request.get(GRANT)
    if grant is not None and grant.client_id:
        return "client:" + grant.client_id
    return "address:" + (request.remote or "unknown")


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter BRIDGE_RATE_LIMIT asks for, or None (0: no limit)."""
    return RateLimiter(settings.rate_limit, settings.rate_limit_burst) if settings.rate_limit > 0 else None


async def rate_limit_context(app: web.Application) -> AsyncIterator[None]:
    """With BRIDGE_CACHE_URL the buckets are shared through Redis: its connection is closed at shutdown."""
    limiter, cache_url = app[RATE_LIMITER], app[SETTINGS].cache_url
    if cache_url is not None:
        limiter.share(cache_url.get_secret_value())
        log.info("rate limits: %g requests a second per client, shared through Redis", limiter.rate)
    try:
        yield
    finally:
        await limiter.close()
