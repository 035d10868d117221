"""How the agent learns the proxy's health and metrics for its heartbeat.

A driver answers one question, `await driver.read() -> ProxyReading`: the health status and the
gate metrics the heartbeat carries (spec/node-protocol.md: `error_rate` in percent,
`latency_p99_ms`, `requests_per_second`, `cpu_percent`, …).

- `PrometheusProxy` scrapes the proxy's Prometheus endpoint (`observability { metrics { … } }`
  in the proxy config). Counters only mean something as rates, so it keeps the previous scrape
  and reports deltas; the first scrape reports health alone. An unreachable endpoint is
  `unhealthy`, never an exception: the heartbeat still goes out.
- `SimulatedProxy` invents plausible numbers (the simulator's nodes, and demos).
- `NoProxy` is what `sentinel-agent` uses when no metrics URL is configured.
"""

from __future__ import annotations

import math
import random as random_module
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
METRIC_PREFIXES = ("sentinel_", "zentinel_", "")
STATUS_LABELS = ("status", "status_code", "code")


@dataclass(frozen=True)
class ProxyReading:
    status: HealthStatus
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str | None = None

    def health(self) -> dict[str, Any]:
        return {"status": self.status}


class ProxyDriver(Protocol):
    async def read(self) -> ProxyReading: ...


class NoProxy:
    """No metrics endpoint configured: the agent itself is alive, which is all it knows."""

    async def read(self) -> ProxyReading:
        return ProxyReading("healthy")


# --- Prometheus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """The totals one scrape yields (cumulative counters, as the proxy exposes them)."""

    at: float
    requests: float | None = None
    errors: float | None = None
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    cpu_seconds: float | None = None
    gauges: dict[str, float] = field(default_factory=dict)


def _base_name(name: str, suffixes: Iterable[str]) -> str | None:
    for prefix in METRIC_PREFIXES:
        for suffix in suffixes:
            if name == prefix + suffix:
                return suffix
    return None


def parse_exposition(text: str, *, at: float) -> Scrape:
    """Pick the few series the heartbeat needs out of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = cpu = None
    buckets: dict[float, float] = {}
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if math.isnan(value):
                continue
            if _base_name(name, ("requests_total", "http_requests_total")):
                requests = (requests or 0.0) + value
                status = next((labels[k] for k in STATUS_LABELS if k in labels), "")
                if status.startswith("5"):
                    errors = (errors or 0.0) + value
                elif errors is None:
                    errors = 0.0
            elif _base_name(
                name,
                ("request_duration_seconds_bucket", "http_request_duration_seconds_bucket"),
            ):
                le = float(labels.get("le", "inf").replace("+Inf", "inf"))
                buckets[le] = buckets.get(le, 0.0) + value
            elif name == "process_cpu_seconds_total":
                cpu = value
            elif suffix := _base_name(
                name, ("error_rate", "latency_p99_ms", "cpu_percent", "memory_percent")
            ):
                gauges[suffix] = value
    return Scrape(at, requests, errors, buckets, cpu, gauges)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding q."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bound, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def metrics_between(previous: Scrape | None, current: Scrape) -> dict[str, float]:
    """Gate metrics from two scrapes (rates need both; counters that went back mean a restart,
    so that interval is skipped)."""
    result: dict[str, float] = {}
    for name in ("cpu_percent", "memory_percent"):
        if name in current.gauges:
            result[name] = min(max(current.gauges[name], 0.0), 100.0)
    for name in ("error_rate",):
        if name in current.gauges:
            result[name] = min(max(current.gauges[name], 0.0), 100.0)
    if "latency_p99_ms" in current.gauges:
        result["latency_p99_ms"] = max(current.gauges["latency_p99_ms"], 0.0)
    if previous is None:
        return result
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return result
    if current.requests is not None and previous.requests is not None:
        served = current.requests - previous.requests
        if served >= 0:
            result["requests_per_second"] = round(served / elapsed, 3)
            if served > 0 and current.errors is not None and previous.errors is not None:
                failed = max(current.errors - previous.errors, 0.0)
                result["error_rate"] = round(min(100.0 * failed / served, 100.0), 3)
            elif served == 0:
                result.setdefault("error_rate", 0.0)
    if current.buckets:
        delta = {le: n - previous.buckets.get(le, 0.0) for le, n in current.buckets.items()}
        use = delta if all(v >= 0 for v in delta.values()) and max(delta.values()) > 0 else None
        p99 = histogram_quantile(0.99, use) if use else None
        if p99 is not None:
            result["latency_p99_ms"] = round(p99 * 1000, 3)
    if current.cpu_seconds is not None and previous.cpu_seconds is not None:
        used = current.cpu_seconds - previous.cpu_seconds
        if used >= 0:
            result["cpu_percent"] = round(min(100.0 * used / elapsed, 100.0), 3)
    return result


class PrometheusProxy:
    """Scrape `metrics_url`; `degraded` above `degraded_error_rate` percent of 5xx."""

    def __init__(
        self,
        metrics_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 3.0,
        degraded_error_rate: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics_url = metrics_url
        self.http = http or httpx.AsyncClient(timeout=timeout_s)
        self.degraded_error_rate = degraded_error_rate
        self.clock = clock
        self.previous: Scrape | None = None

    async def read(self) -> ProxyReading:
        try:
            response = await self.http.get(self.metrics_url)
        except httpx.HTTPError as exc:
            return ProxyReading("unhealthy", detail=f"metrics endpoint unreachable: {exc!r}")
        if response.status_code != 200:
            return ProxyReading(
                "unhealthy", detail=f"metrics endpoint answered {response.status_code}"
            )
        try:
            current = parse_exposition(response.text, at=self.clock())
        except ValueError as exc:
            return ProxyReading("degraded", detail=f"unparseable metrics: {exc}")
        metrics = metrics_between(self.previous, current)
        self.previous = current
        status: HealthStatus = "healthy"
        if metrics.get("error_rate", 0.0) > self.degraded_error_rate:
            status = "degraded"
        return ProxyReading(status, metrics)


# --- simulated ------------------------------------------------------------------------------


class SimulatedProxy:
    """A fake proxy: steady numbers with noise; an error spike on a share of readings.

    `unhealthy=True` reports `unhealthy` every time (a node whose proxy is down).
    """

    def __init__(
        self,
        *,
        failure_rate: float = 0.0,
        unhealthy: bool = False,
        random: random_module.Random | None = None,
    ) -> None:
        self.failure_rate = failure_rate
        self.unhealthy = unhealthy
        self.random = random or random_module.Random()
        self.base_rps = self.random.uniform(50, 2000)

    async def read(self) -> ProxyReading:
        rnd = self.random
        metrics = {
            "requests_per_second": round(self.base_rps * rnd.uniform(0.8, 1.2), 1),
            "error_rate": round(rnd.uniform(0.0, 0.5), 3),
            "latency_p99_ms": round(rnd.uniform(15, 45), 1),
            "cpu_percent": round(rnd.uniform(5, 45), 1),
            "memory_percent": round(rnd.uniform(20, 60), 1),
        }
        if self.unhealthy:
            metrics["requests_per_second"] = 0.0
            return ProxyReading("unhealthy", metrics, detail="simulated outage")
        if rnd.random() < self.failure_rate:
            metrics["error_rate"] = round(rnd.uniform(10, 60), 3)
            metrics["latency_p99_ms"] = round(rnd.uniform(250, 2000), 1)
            return ProxyReading("degraded", metrics, detail="simulated error spike")
        return ProxyReading("healthy", metrics)
