"""Per-client rate limits: the token bucket as a table (injected clock), the 429 a client sees, buckets bounded
in memory, and shared by replicas through a real Redis (failing open to each replica's own when it is gone)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from bridge.auth.grant import Claims, Grant
from bridge.errors import TooManyRequests
from bridge.settings import Settings, load_settings
from bridge.web.app import create_app
from bridge.web.keys import GRANT
from bridge.web.ratelimit import (
    RATE_LIMITER,
    Bucket,
    MemoryBuckets,
    RateLimiter,
    RedisBuckets,
    burst_of,
    retry_after,
    take,
)
from bridge.web.server import server_options
from tests.support.fhircheck import validate
from tests.support.standin_tokens import Verifier, claims
from tests.test_cache import STUDY, pacs
from tests.test_observe import samples


class Clock:
    def __init__(self, now: float = 1_764_255_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# (seconds since the first request of each request, rate, burst) -> whether each went, and the wait of each refused
TAKES = [
    # A full bucket lets a burst through at once, then one request per 1/rate.
    ([0, 0, 0], 1.0, 2, [0, 0, 1.0]),
    ([0, 0, 0.5, 1.0, 1.0], 1.0, 2, [0, 0, 0.5, 0, 1.0]),
    ([0, 0, 0, 0], 10.0, 3, [0, 0, 0, 0.1]),
    # Refill stops at the burst: a long pause does not bank more than it.
    ([0, 0, 100, 100, 100], 1.0, 2, [0, 0, 0, 0, 1.0]),
    # Slow rates: one request every two seconds.
    ([0, 1, 2, 2], 0.5, 1, [0, 1.0, 0, 2.0]),
    # A clock that goes back (another replica's) refills nothing, and drains nothing.
    ([10, 5, 5], 1.0, 2, [0, 0, 1.0]),
]


@pytest.mark.parametrize(("times", "rate", "burst", "waits"), TAKES)
def test_the_token_bucket(times: list[float], rate: float, burst: int, waits: list[float]) -> None:
    bucket: Bucket | None = None
    got = []
    for now in times:
        bucket, wait = take(bucket, now, rate, burst)
        got.append(round(wait, 9))
    assert got == waits


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.0001, 2), (7.3, 8)])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


@pytest.mark.parametrize(("rate", "burst", "effective"), [(10, 0, 10), (2.5, 0, 3), (0.2, 0, 1), (10, 50, 50)])
def test_the_burst_is_one_seconds_worth_unless_set(rate: float, burst: int, effective: int) -> None:
    assert burst_of(rate, burst) == effective


async def test_a_limiter_refuses_beyond_the_burst_until_its_clients_bucket_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    for _ in range(3):
        await limiter.check("client:a")
    with pytest.raises(TooManyRequests) as refused:
        await limiter.check("client:a")
    assert refused.value.retry_after == 1
    assert "BRIDGE_RATE_LIMIT" in refused.value.diagnostics
    await limiter.check("client:b")  # another client's bucket is its own
    clock.now += 0.5  # one token back at 2 a second
    await limiter.check("client:a")
    with pytest.raises(TooManyRequests):
        await limiter.check("client:a")


async def test_the_buckets_of_a_process_are_bounded_least_recently_seen_forgotten() -> None:
    buckets = MemoryBuckets(rate=1.0, burst=1, max_clients=3)
    for client in ("a", "b", "c"):
        assert await buckets.take(client, 0.0) == 0
    assert await buckets.take("a", 0.0) > 0  # "a" is now the most recently seen
    for churn in range(100):
        await buckets.take(f"churn-{churn}", 0.0)
    assert len(buckets) == 3
    buckets = MemoryBuckets(rate=1.0, burst=1, max_clients=2)
    await buckets.take("a", 0.0)
    await buckets.take("b", 0.0)
    assert await buckets.take("a", 0.0) > 0  # seen again: kept, and still spent
    await buckets.take("c", 0.0)  # forgets "b", the least recently seen
    assert await buckets.take("a", 0.0) > 0
    assert await buckets.take("b", 0.0) == 0  # forgotten: a full bucket again


# End to end ----------------------------------------------------------------------------------------------------


def limited(**environ: str) -> Settings:
    return load_settings({"BRIDGE_QIDO_URL": "http://pacs/dicom-web", "BRIDGE_AUDIT_LOG": "off",
                          "BRIDGE_ACCESS_LOG": "false", **environ})  # fmt: skip


async def start(settings: Settings, client_of: Callable[[web.Request], str | None] | None = None) -> TestClient:
    """The bridge on the in-memory PACS, its limiter on a test clock; ``client_of`` stands in for the
    authorization step (the client id of each request's grant)."""
    app = create_app(settings, pacs())
    if RATE_LIMITER in app:
        app[RATE_LIMITER].clock = Clock()
    if client_of is not None:

        @web.middleware
        async def authorized(request: web.Request, handler: Any) -> web.StreamResponse:
            client_id = client_of(request)
            if client_id is not None:
                request[GRANT] = Grant(Claims(client_id, None, "user/*.rs", None, None))
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(authorized)
    server = TestServer(app)
    await server.start_server(**server_options(settings))
    client = TestClient(server)
    await client.start_server()
    return client


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    client = await start(limited(BRIDGE_RATE_LIMIT="0.001", BRIDGE_RATE_LIMIT_BURST="2"))
    yield client
    await client.close()


async def test_beyond_its_rate_a_client_gets_a_429_outcome_with_retry_after(client: TestClient) -> None:
    before = samples(await (await client.get("/metrics")).text())
    answers = [await client.get(f"/fhir/ImagingStudy/{STUDY}") for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1000"  # a token per 1000 s
    body = await refused.json()
    validate(body)
    assert body["issue"][0]["code"] == "throttled"
    assert refused.headers["X-Request-ID"]
    # Searches and metadata spend the same bucket; probes and metrics spend none.
    assert (await client.get("/fhir/metadata")).status == 429
    assert (await client.get("/healthz")).status == 200
    after = samples(await (await client.get("/metrics")).text())
    key = ("bridge_rate_limited_requests_total", frozenset())
    assert after[key] - before.get(key, 0.0) == 2
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 429
    client.app[RATE_LIMITER].clock.now += 1000  # the test clock
    assert (await client.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200


async def test_off_by_default() -> None:
    client = await start(limited())
    try:
        assert RATE_LIMITER not in client.app
        assert {(await client.get(f"/fhir/ImagingStudy/{STUDY}")).status for _ in range(50)} == {200}
    finally:
        await client.close()


async def test_each_client_id_has_its_own_bucket_and_requests_without_one_share_their_address() -> None:
    settings = limited(BRIDGE_RATE_LIMIT="0.001", BRIDGE_RATE_LIMIT_BURST="1")
    client = await start(settings, lambda request: request.headers.get("X-Test-Client"))
    try:

        async def status(client_id: str | None) -> int:
            headers = {"X-Test-Client": client_id} if client_id else {}
            return (await client.get(f"/fhir/ImagingStudy/{STUDY}", headers=headers)).status

        assert [await status("app-a"), await status("app-a")] == [200, 429]
        assert [await status("app-b"), await status("app-b")] == [200, 429]
        assert [await status(None), await status(None)] == [200, 429]  # by address: 127.0.0.1
    finally:
        await client.close()


def dead_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_without_redis_each_replica_limits_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.web.ratelimit")
    client = await start(
        limited(BRIDGE_RATE_LIMIT="0.001", BRIDGE_RATE_LIMIT_BURST="2", BRIDGE_CACHE_URL=dead_redis_url())
    )
    try:
        before = samples(await (await client.get("/metrics")).text())
        answers = [(await client.get(f"/fhir/ImagingStudy/{STUDY}")).status for _ in range(3)]
        after = samples(await (await client.get("/metrics")).text())
    finally:
        await client.close()
    assert answers == [200, 200, 429]  # served, and still limited, by this replica's buckets
    key = ("bridge_rate_limit_store_errors_total", frozenset())
    assert after[key] - before.get(key, 0.0) == 1  # Redis asked once, then left alone for a while
    warnings = [r.getMessage() for r in caplog.records if r.name == "bridge.web.ratelimit"]
    assert len(warnings) == 1
    assert "Redis did not answer" in warnings[0]


async def test_redis_is_asked_again_after_a_while() -> None:
    fallback = MemoryBuckets(1.0, 1, 10)
    store = RedisBuckets(dead_redis_url(), 1.0, 1, fallback=fallback)
    try:
        calls = []
        real = store._script

        async def script(**kwargs: Any) -> Any:
            calls.append(kwargs["args"][2])
            return await real(**kwargs)

        store._script = script  # counts the attempts
        for now in (100.0, 101.0, 100.0 + RedisBuckets.RETRY_REDIS - 0.1, 100.0 + RedisBuckets.RETRY_REDIS):
            await store.take("a", now)
        assert [float(at) for at in calls] == [100.0, 100.0 + RedisBuckets.RETRY_REDIS]
    finally:
        await store.close()


# Shared through a real Redis --------------------------------------------------------------------------------------


async def test_replicas_share_each_clients_bucket_through_redis(redis_url: str) -> None:
    settings = limited(BRIDGE_RATE_LIMIT="0.5", BRIDGE_RATE_LIMIT_BURST="2", BRIDGE_CACHE_URL=redis_url)
    one, two = await start(settings), await start(settings)
    clock = Clock()
    one.app[RATE_LIMITER].clock = two.app[RATE_LIMITER].clock = clock
    try:
        assert (await one.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200
        assert (await two.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200
        refused = await one.get(f"/fhir/ImagingStudy/{STUDY}")
        assert (refused.status, refused.headers["Retry-After"]) == (429, "2")
        assert (await two.get(f"/fhir/ImagingStudy/{STUDY}")).status == 429
        clock.now += 2.0  # one token back, for both
        assert (await two.get(f"/fhir/ImagingStudy/{STUDY}")).status == 200
        assert (await one.get(f"/fhir/ImagingStudy/{STUDY}")).status == 429
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize(("times", "rate", "burst", "waits"), TAKES)
async def test_the_redis_script_is_the_same_bucket(
    redis_url: str, times: list[float], rate: float, burst: int, waits: list[float]
) -> None:
    store = RedisBuckets(redis_url, rate, burst, fallback=MemoryBuckets(rate, burst, 1))
    try:
        got = [round(await store.take("client:a", 1_764_255_600.0 + now), 9) for now in times]
    finally:
        await store.close()
    assert got == waits


async def test_a_bucket_in_redis_expires_once_it_would_be_full_again(redis_url: str) -> None:
    store = RedisBuckets(redis_url, 0.5, 3, fallback=MemoryBuckets(0.5, 3, 1))
    redis = Redis.from_url(redis_url)
    try:
        await store.take("client:a", 1_764_255_600.0)
        ttl = await redis.pttl("imaging-bridge:rate:client:a")
    finally:
        await store.close()
        await redis.aclose()
    assert 3 / 0.5 * 1000 < ttl <= 3 / 0.5 * 1000 + 1000  # full after 6 s; then gone, and memory with it


async def test_with_tokens_the_bucket_is_the_token_clients_and_verifying_is_limited_per_address() -> None:
    verifier = Verifier()
    verifier.extra["a"] = claims("user/ImagingStudy.rs", client="app-a")
    verifier.extra["b"] = claims("user/ImagingStudy.rs", client="app-b")
    settings = limited(BRIDGE_RATE_LIMIT="0.001", BRIDGE_RATE_LIMIT_BURST="2", BRIDGE_AUTH="smart",
                       BRIDGE_AUTH_JWKS_URL="https://auth.example.org/jwks",
                       BRIDGE_PUBLIC_URL="https://fhir.example.org/fhir")  # fmt: skip
    app = create_app(settings, pacs(), verifier)
    app[RATE_LIMITER].clock = Clock()
    client = TestClient(TestServer(app))
    await client.start_server()
    try:

        async def status(token: str) -> int:
            return (
                await client.get(f"/fhir/ImagingStudy/{STUDY}", headers={"Authorization": f"Bearer {token}"})
            ).status

        assert [await status("a"), await status("a"), await status("a")] == [200, 200, 429]
        assert [await status("b"), await status("b"), await status("b")] == [200, 200, 429]  # two clients, two buckets
        # Verifying a token not seen lately is limited per address (each may cost an introspection): the two
        # verifications of this address are spent, so a made-up token is refused before it is verified.
        assert await status("forged") == 429
        assert "forged" not in verifier.verified
    finally:
        await client.close()
