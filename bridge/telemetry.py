"""The process's metrics (Prometheus, one registry) and the request id, shared by the web layer and the PACS
client without either importing the other."""

from __future__ import annotations

import contextvars

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The id of the request being served, for whatever it asks of the PACS.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "bridge_http_requests_total", "HTTP requests served, by route and status.", ["route", "method", "status"],
    registry=REGISTRY,
)  # fmt: skip
LATENCY = Histogram(
    "bridge_http_request_duration_seconds", "Time to answer a request, by route.", ["route"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
PACS_REQUESTS = Counter(
    "bridge_pacs_requests_total", "Requests made to the PACS, by outcome.", ["outcome"], registry=REGISTRY
)
CACHE_READS = Counter(
    "bridge_cache_reads_total", "Study reads, by cache outcome (hit, miss, stale, stale-if-error).", ["outcome"],
    registry=REGISTRY,
)  # fmt: skip
REFRESH_RUNS = Counter("bridge_refresh_runs_total", "Scheduled refresh runs, by result.", ["result"], registry=REGISTRY)
