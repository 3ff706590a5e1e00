"""The process's metrics (Prometheus, one registry) and the request id, shared by the web layer and the PACS
client without either importing the other."""

from __future__ import annotations

import bisect
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


class RequestStats(Collector):
    """Requests by route and status, and latency by route, kept as plain numbers and exposed as Prometheus
    metrics when scraped. Only the event loop writes them, so no locks; a request costs a dict lookup and two
    additions instead of prometheus-client's locked, labelled updates, which cost a cached read measurably."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        #: route -> (bucket counts, sum of seconds)
        self.latency: dict[str, tuple[list[int], list[float]]] = {}

    def record(self, route: str, method: str, status: int, elapsed: float) -> None:
        # Clients choose the method: an unbounded label set would be a memory leak they can drive.
        key = (route, method if method in METHODS else "OTHER", status)
        self.requests[key] = self.requests.get(key, 0) + 1
        held = self.latency.get(route)
        if held is None:
            held = self.latency[route] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        held[0][bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        held[1][0] += elapsed

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bridge_http_requests", "HTTP requests served, by route and status.", labels=["route", "method", "status"]
        )
        for (route, method, status), count in sorted(self.requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "bridge_http_request_duration_seconds", "Time to answer a request, by route.", labels=["route"]
        )
        for route, (counts, total) in sorted(self.latency.items()):
            cumulative = list(itertools.accumulate(counts))
            bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), total[0])
        yield latency


REQUEST_STATS = RequestStats()
REGISTRY.register(REQUEST_STATS)
PACS_REQUESTS = Counter(
    "bridge_pacs_requests_total", "Requests made to the PACS, by outcome.", ["outcome"], registry=REGISTRY
)
CACHE_READS = Counter(
    "bridge_cache_reads_total", "Study reads, by cache outcome (hit, miss, stale, stale-if-error).", ["outcome"],
    registry=REGISTRY,
)  # fmt: skip
REFRESH_RUNS = Counter("bridge_refresh_runs_total", "Scheduled refresh runs, by result.", ["result"], registry=REGISTRY)
BREAKER_OPEN = Gauge("bridge_pacs_breaker_open", "1 while the PACS circuit breaker is open.", registry=REGISTRY)
