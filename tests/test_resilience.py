"""Resilience towards the PACS: breaker and backoff rules (pure), retries and deadlines in the client."""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from bridge.qido.http import HttpQidoSource
from bridge.qido.resilience import DEADLINE, CircuitBreaker, State, backoff
from bridge.settings import load_settings
from tests.conftest import start_client
from tests.support.mock_pacs import PacsMock

STUDIES = re.compile(r"^http://pacs\.test/dicom-web/studies.*")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# (events, the state after them, whether a request is let through next)
BREAKER = [
    ([], State.CLOSED, True),
    (["fail"] * 2, State.CLOSED, True),
    (["fail"] * 3, State.OPEN, False),
    (["fail", "fail", "ok", "fail", "fail"], State.CLOSED, True),  # consecutive failures only
    (["fail"] * 3 + ["wait"], State.HALF_OPEN, True),  # the cooldown passed: one probe
    (["fail"] * 3 + ["wait", "allow"], State.HALF_OPEN, False),  # a probe is out: the rest wait
    (["fail"] * 3 + ["wait", "allow", "ok"], State.CLOSED, True),
    (["fail"] * 3 + ["wait", "allow", "fail"], State.OPEN, False),  # the probe failed: open again
    (["fail"] * 3 + ["wait", "allow", "abandon"], State.HALF_OPEN, True),  # a cancelled probe frees the slot
]


@pytest.mark.parametrize(("events", "state", "allowed"), BREAKER)
def test_breaker(events: list[str], state: State, allowed: bool) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=30, clock=clock, max_probes=1)
    for event in events:
        {"fail": breaker.failed, "ok": breaker.succeeded, "abandon": breaker.abandoned,
         "allow": breaker.allow, "wait": lambda: setattr(clock, "now", clock.now + 30)}[event]()  # fmt: skip
    assert breaker.allow() is allowed
    assert breaker.state is state


def test_half_open_lets_a_few_probes_through_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=30, clock=clock, max_probes=2)
    breaker.failed()
    clock.now += 30
    assert [breaker.allow() for _ in range(3)] == [True, True, False]  # a study read asks two queries at once
    breaker.succeeded()
    assert breaker.allow()


def test_retry_after_counts_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=30, clock=clock)
    breaker.failed()
    assert breaker.retry_after() == 30
    clock.now += 20.5
    assert breaker.retry_after() == 10


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.1), (2, 0.2), (3, 0.4), (10, 2.0)])
def test_backoff_is_jittered_below_a_growing_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    waits = [backoff(attempt, 0.1, 2.0, rng) for _ in range(200)]
    assert all(0 <= w <= ceiling for w in waits)
    assert max(waits) > ceiling / 2  # spread, not fixed


@pytest.fixture
async def source() -> AsyncIterator[HttpQidoSource]:
    source = HttpQidoSource("http://pacs.test/dicom-web", retries=2, breaker=CircuitBreaker(threshold=3))
    source._retry_base = source._retry_cap = 0.001  # no real waiting in tests
    yield source
    await source.close()


async def test_connection_failures_and_503_are_retried_until_an_answer(source: HttpQidoSource) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, exception=aiohttp.ServerDisconnectedError())
        pacs.get(STUDIES, status=503)
        pacs.get(STUDIES, payload=[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}])
        pacs.get(STUDIES, payload=[])  # nothing past it
        rows = await source.search_studies({}, ())
    assert len(rows) == 1
    assert source.breaker.state is State.CLOSED


@pytest.mark.parametrize(
    ("answer", "error"),
    [({"exception": TimeoutError()}, UpstreamTimeout), ({"status": 500}, UpstreamBadResponse),
     ({"body": b"not json"}, UpstreamBadResponse)],
)  # fmt: skip
async def test_timeouts_and_bad_answers_are_not_retried(
    source: HttpQidoSource, answer: dict[str, object], error: type[Exception]
) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, **answer)  # type: ignore[arg-type]
        with pytest.raises(error):
            await source.search_studies({}, ())
        assert len(pacs.requests) == 1


async def test_retries_are_bounded(source: HttpQidoSource) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, status=503, repeat=True)
        with pytest.raises(UpstreamUnavailable, match="HTTP 503"):
            await source.search_studies({}, ())
        (calls,) = pacs.requests.values()
        assert len(calls) == 3  # one attempt and two retries


async def test_the_breaker_opens_and_answers_at_once(source: HttpQidoSource) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, status=503, repeat=True)
        with pytest.raises(UpstreamUnavailable):
            await source.search_studies({}, ())  # three failures: the breaker opens
        with pytest.raises(UpstreamUnavailable, match="circuit breaker open") as opened:
            await source.search_studies({}, ())
        assert opened.value.retry_after is not None
        (calls,) = pacs.requests.values()
        assert len(calls) == 3  # the open breaker did not ask the PACS


async def test_a_passed_deadline_stops_before_the_pacs(source: HttpQidoSource) -> None:
    token = DEADLINE.set(time.monotonic() - 1)
    try:
        with PacsMock() as pacs:
            pacs.get(STUDIES, payload=[])
            with pytest.raises(UpstreamTimeout, match="BRIDGE_REQUEST_DEADLINE"):
                await source.search_studies({}, ())
            assert pacs.requests == {}
    finally:
        DEADLINE.reset(token)


async def test_an_open_breaker_is_a_503_with_retry_after_over_http() -> None:
    settings = load_settings({"BRIDGE_QIDO_URL": "http://pacs.test/dicom-web", "BRIDGE_BREAKER_THRESHOLD": "1",
                              "BRIDGE_QIDO_RETRIES": "0"})  # fmt: skip
    client = await start_client(settings)
    try:
        with PacsMock(passthrough=["http://127.0.0.1"]) as pacs:
            pacs.get(STUDIES, exception=aiohttp.ClientConnectionError("refused"), repeat=True)
            pacs.get(re.compile(r"^http://pacs\.test/.*"), exception=aiohttp.ClientConnectionError("refused"),
                     repeat=True)  # fmt: skip
            first = await client.get("/fhir/ImagingStudy/1.2.3")
            assert first.status == 503
            second = await client.get("/fhir/ImagingStudy/1.2.3")
            assert second.status == 503
            assert int(second.headers["Retry-After"]) > 0
            assert "circuit breaker open" in (await second.json())["issue"][0]["diagnostics"]
    finally:
        await client.close()


async def test_the_clients_own_deadline_does_not_trip_the_breaker(source: HttpQidoSource) -> None:
    token = DEADLINE.set(time.monotonic() - 1)
    try:
        for _ in range(5):
            with pytest.raises(UpstreamTimeout):
                await source.search_studies({}, ())
    finally:
        DEADLINE.reset(token)
    assert source.breaker.state is State.CLOSED


async def test_a_pacs_answering_5xx_counts_towards_the_breaker(source: HttpQidoSource) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, status=500, repeat=True)
        for _ in range(3):
            with pytest.raises(UpstreamBadResponse):
                await source.search_studies({}, ())
        (calls,) = pacs.requests.values()
        assert len(calls) == 3  # not retried
    assert source.breaker.state is State.OPEN


async def test_the_pacs_retry_after_is_honoured_or_passed_on(source: HttpQidoSource) -> None:
    with PacsMock() as pacs:
        pacs.get(STUDIES, status=429, headers={"Retry-After": "0"})
        pacs.get(STUDIES, payload=[])
        assert await source.search_studies({}, ()) == []  # waited for, then answered
        pacs.get(STUDIES, status=503, headers={"Retry-After": "120"})
        with pytest.raises(UpstreamUnavailable) as refused:
            await source.search_studies({}, ())  # too long to wait inside a request: the client is told
        assert refused.value.retry_after == 120
