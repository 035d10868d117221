"""Prometheus metrics, defined once per process (module level, as prometheus_client expects)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "sentinel_http_requests_total",
    "HTTP requests served by the API",
    ["method", "endpoint", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "sentinel_http_request_duration_seconds",
    "API request latency",
    ["endpoint"],
    registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOGIN_FAILURES = Counter(
    "sentinel_login_failures_total",
    "Failed operator logins",
    registry=REGISTRY,
)
READY = Gauge(
    "sentinel_dependency_up",
    "1 when the dependency answered the last readiness check",
    ["dependency"],
    registry=REGISTRY,
)
NODE_HEARTBEATS = Counter(
    "sentinel_node_heartbeats_total",
    "Node heartbeats accepted by this process",
    registry=REGISTRY,
)
NODES = Gauge(
    "sentinel_nodes",
    "Registered nodes by status (all projects), read at scrape time",
    ["status"],
    registry=REGISTRY,
)
NODE_POLLS = Counter(
    "sentinel_node_polls_total",
    "Bundle polls answered by this process, by status (200 or 304)",
    ["status"],
    registry=REGISTRY,
)
POLL_CACHE_HITS = Counter(
    "sentinel_poll_cache_hits_total",
    "Polls answered 304 from this process's poll cache, without the database",
    registry=REGISTRY,
)
HEARTBEATS_BUFFERED = Counter(
    "sentinel_heartbeats_buffered_total",
    "Steady heartbeats answered from memory, their writes batched (of sentinel_node_heartbeats)",
    registry=REGISTRY,
)
HEARTBEAT_FLUSH_FAILURES = Counter(
    "sentinel_heartbeat_flush_failures_total",
    "Batched heartbeat writes that failed and were kept for the next flush",
    registry=REGISTRY,
)
BUNDLE_COMPILES = Counter(
    "sentinel_bundle_compiles_total",
    "Compile jobs finished by this process, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
COMPILE_SECONDS = Histogram(
    "sentinel_bundle_compile_seconds",
    "Wall time of compile jobs",
    registry=REGISTRY,
)
