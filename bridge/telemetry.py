"""The process's metrics (Prometheus, one registry) and the request id, shared by the web layer and the PACS
client without either importing the other."""

from __future__ import annotations

import bisect
import collections
import contextvars
import itertools
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: The id of the request being served, for whatever it asks of the PACS.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

REGISTRY = CollectorRegistry()
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Upper bounds of the request latency histogram, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouteStats:
    """One route's requests by method and status, and its latency histogram."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0

    def record(self, method: str, status: int, elapsed: float) -> None:
        # Clients choose the method: an unbounded label set would be a memory leak they can drive.
        key = (method if method in METHODS else "OTHER", status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self.seconds += elapsed


class HotPathStats(Collector):
    """The metrics a cached read updates (requests, latency, cache outcomes), kept as plain numbers and exposed
    as Prometheus metrics when scraped. Only the event loop writes them, so no locks: a request costs a few
    additions instead of prometheus-client's locked, labelled updates, which cost a cached read measurably."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteStats] = {}
        #: Study reads by cache outcome (hit, miss, stale, stale-if-error).
        self.cache_reads: collections.Counter[str] = collections.Counter()

    def route(self, route: str) -> RouteStats:
        """The stats of a route (its pattern, e.g. ``/fhir/ImagingStudy/{id}``), looked up once per route."""
        return self._routes.setdefault(route, RouteStats())

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bridge_http_requests", "HTTP requests served, by route and status.", labels=["route", "method", "status"]
        )
        latency = HistogramMetricFamily(
            "bridge_http_request_duration_seconds", "Time to answer a request, by route.", labels=["route"]
        )
        bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for route, stats in sorted(self._routes.items()):
            if not stats.requests:
                continue
            for (method, status), count in sorted(stats.requests.items()):
                requests.add_metric([route, method, str(status)], count)
            cumulative = itertools.accumulate(stats.buckets)
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), stats.seconds)
        reads = CounterMetricFamily(
            "bridge_cache_reads",
            "Study reads, by cache outcome (hit, miss, stale, stale-if-error).",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.cache_reads.items()):
            reads.add_metric([outcome], count)
        yield requests
        yield latency
        yield reads


STATS = HotPathStats()
REGISTRY.register(STATS)
PACS_REQUESTS = Counter(
    "bridge_pacs_requests_total", "Requests made to the PACS, by outcome.", ["outcome"], registry=REGISTRY
)
REFRESH_RUNS = Counter("bridge_refresh_runs_total", "Scheduled refresh runs, by result.", ["result"], registry=REGISTRY)
BREAKER_OPEN = Gauge("bridge_pacs_breaker_open", "1 while the PACS circuit breaker is open.", registry=REGISTRY)
