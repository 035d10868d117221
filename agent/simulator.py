"""The fleet simulator: N simulated nodes in one asyncio process, on the real protocol client.

    sentinel-cp simulate --url URL --project SLUG --registration-token T --nodes 1000 \\
        [--heartbeat-interval 10] [--duration 60] [--labels zone=a,zone=b] \\
        [--failure-rate 0.05] [--unhealthy-share 0.1] [--silent-share 0.1] \\
        [--apply-time 2] [--apply-failure-rate 0.05]

Each node is an `asyncio` task with its own `NodeClient`; all share one `httpx.AsyncClient`
over `agent.transport.AiohttpTransport` (httpx's own pool cost ~3.5x the CPU per request) whose
connection limit bounds the load, and starts are spread over `stagger_s` so a thousand
nodes do not register in the same instant. Node i gets, for each label key, the i-th of that
key's values (round robin). Knobs: `failure_rate` is the share of heartbeats that report an
error spike (`degraded`, high error rate and latency); `unhealthy_share` of the nodes report
`unhealthy` throughout; `silent_share` of the nodes stop heartbeating after `silent_after_s`
(so the staleness job marks them offline).

Bundles: each node runs the agent's own flow (`agent.apply`: poll, download, verify hash and
signature, unpack, report each state) with a `SimulatedDriver` in place of a proxy, so a rollout
against simulated nodes exercises everything but the real reload. Activation takes
`apply_time_s`; `apply_failure_rate` of the activations fail their health check and roll back.
Heartbeats carry the node's `active_bundle_id`.

While it runs, one progress line goes to stderr at most once a second; at the end the summary
goes to stdout as JSON (and is returned by `simulate`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random as random_module
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from agent.apply import ApplyResult, BundleApplier
from agent.client import (
    MIN_HEARTBEAT_GAP_S,
    ApiError,
    Backoff,
    ControlPlaneError,
    NodeClient,
    NodeHttpClient,
    SigningKey,
    Unreachable,
)
from agent.drivers import SimulatedDriver
from agent.proxy import SimulatedProxy
from agent.transport import AiohttpTransport

SIM_VERSION = "sim-0.1.0"
# The nodes' own log lines (a bundle failed, …) would drown the progress line; the summary
# counts them instead. A handler attached here by the caller still sees them.
node_log = logging.getLogger("sentinel_simulator.nodes")
node_log.addHandler(logging.NullHandler())
node_log.propagate = False
REGISTER_ATTEMPTS = 8


def parse_label_choices(items: list[str]) -> dict[str, list[str]]:
    """`["zone=a,zone=b", "env=prod"]` → `{"zone": ["a", "b"], "env": ["prod"]}`."""
    choices: dict[str, list[str]] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"label must be key=value, got {pair!r}")
            choices.setdefault(key, []).append(value)
    return choices


def labels_for(index: int, choices: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[index % len(values)] for key, values in choices.items()}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class SimulationConfig:
    url: str
    project: str
    nodes: int
    registration_token: str | None = None
    heartbeat_interval_s: float = 10.0
    duration_s: float | None = None
    labels: dict[str, list[str]] = field(default_factory=dict)
    failure_rate: float = 0.0
    unhealthy_share: float = 0.0
    silent_share: float = 0.0
    silent_after_s: float | None = None  # None: three heartbeat intervals
    name_prefix: str | None = None  # None: `sim-<random>`, so reruns never collide
    # One server rarely serves more than 16 requests at once; more connections only cost the
    # simulator (and, with httpx's own pool, a poll(2) per idle connection per request).
    max_connections: int = 16
    stagger_s: float | None = None  # None: min(interval, nodes / 100) seconds
    use_token: bool = True
    seed: int | None = None
    progress: bool = True
    apply_time_s: float = 0.0
    apply_failure_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        if self.heartbeat_interval_s < 1:
            raise ValueError("heartbeat interval must be at least 1 s (the server's limit)")
        if self.apply_time_s < 0:
            raise ValueError("apply time must not be negative")
        for name in ("failure_rate", "unhealthy_share", "silent_share", "apply_failure_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


@dataclass
class FleetStats:
    nodes: int
    started: float
    registered: int = 0
    registration_failed: int = 0
    heartbeats_ok: int = 0
    heartbeats_failed: int = 0
    went_silent: int = 0
    bundles_applied: int = 0
    bundles_failed: int = 0
    bundle_failures: Counter[str] = field(default_factory=Counter)  # reason → count
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    recent_ms: list[float] = field(default_factory=list)  # since the last progress line

    def record_ok(self, latency_ms: float) -> None:
        self.heartbeats_ok += 1
        self.latencies_ms.append(latency_ms)
        self.recent_ms.append(latency_ms)

    def record_failure(self, exc: ControlPlaneError) -> None:
        self.heartbeats_failed += 1
        self.errors[exc.code if isinstance(exc, ApiError) else "unreachable"] += 1

    def record_apply(self, result: ApplyResult) -> None:
        if result.outcome == "applied":
            self.bundles_applied += 1
        elif result.outcome == "failed":
            self.bundles_failed += 1
            self.bundle_failures[result.reason or "unknown"] += 1


class Simulation:
    """One run. `stop()` ends it early (signals); otherwise it ends after `duration_s`."""

    def __init__(
        self,
        config: SimulationConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.out = out if out is not None else sys.stderr
        self.random = random_module.Random(config.seed)
        self.prefix = config.name_prefix or f"sim-{secrets.token_hex(3)}"
        self.stopping = asyncio.Event()
        self.stats = FleetStats(config.nodes, clock())
        order = list(range(config.nodes))
        self.random.shuffle(order)
        n_silent = round(config.nodes * config.silent_share)
        n_unhealthy = round(config.nodes * config.unhealthy_share)
        self.silent = set(order[:n_silent])
        self.unhealthy = set(order[n_silent : n_silent + n_unhealthy])
        self.node_ids: dict[str, str] = {}
        self.active_bundles: dict[str, str | None] = {}  # node name → active bundle id
        self.limiter = asyncio.Semaphore(config.max_connections)
        self.staging_root: Path | None = None  # a temporary directory while running

    def stop(self) -> None:
        self.stopping.set()

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=max(seconds, 0.0))

    def node_name(self, index: int) -> str:
        width = max(4, len(str(self.config.nodes - 1)))
        return f"{self.prefix}-{index:0{width}d}"

    async def _register(self, index: int, client: NodeClient) -> BundleApplier | None:
        cfg = self.config
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        for attempt in range(REGISTER_ATTEMPTS):
            if self.stopping.is_set():
                return None
            try:
                registration = await client.register(
                    cfg.project,
                    name=self.node_name(index),
                    registration_token=cfg.registration_token,
                    labels=labels_for(index, cfg.labels),
                    capabilities=["heartbeat_v1", "metrics_v1"],
                    version=SIM_VERSION,
                    hostname=f"{self.node_name(index)}.sim.local",
                    metadata={"simulated": True},
                )
            except Unreachable:
                pass
            except ApiError as exc:
                if not exc.retryable:
                    self.stats.registration_failed += 1
                    self.stats.errors[f"register:{exc.code}"] += 1
                    return None
            else:
                self.node_ids[self.node_name(index)] = registration.node_id
                self.stats.registered += 1
                return self._applier(client, registration.signing_keys)
            await self.pause(backoff.delay(attempt, self.random.random))
        self.stats.registration_failed += 1
        self.stats.errors["register:unreachable"] += 1
        return None

    def _applier(self, client: NodeClient, keys: list[SigningKey]) -> BundleApplier:
        cfg = self.config
        assert self.staging_root is not None
        driver = SimulatedDriver(
            apply_time_s=cfg.apply_time_s,
            failure_rate=cfg.apply_failure_rate,
            random=random_module.Random(self.random.random()),
            sleep=self.pause,
        )
        # Simulated nodes talk to development servers over plain http: key look-ups allowed.
        return BundleApplier(
            client,
            driver,
            keys=keys,
            staging_root=self.staging_root,
            project=cfg.project,
            allow_key_refresh=True,
            logger=node_log,
        )

    async def run_node(self, index: int, http: httpx.AsyncClient, start_after: float) -> None:
        cfg = self.config
        await self.pause(start_after)
        if self.stopping.is_set():
            return
        client = NodeClient(
            cfg.url,
            http=http,
            use_token=cfg.use_token,
            max_attempts=2,
            random=self.random.random,
            sleep=self.pause,
            limiter=self.limiter,
        )
        applier = await self._register(index, client)
        if applier is None:
            return
        if cfg.use_token:
            with contextlib.suppress(ControlPlaneError):
                await client.refresh_token()  # outside the measured heartbeats
        proxy = SimulatedProxy(
            failure_rate=cfg.failure_rate,
            unhealthy=index in self.unhealthy,
            random=random_module.Random(self.random.random()),
        )
        interval = cfg.heartbeat_interval_s
        silent_after = cfg.silent_after_s if cfg.silent_after_s is not None else 3 * interval
        registered_at = self.clock()
        # The server counts registration as the first sign of life and allows one heartbeat a
        # second; the first one also lands at a random point of the interval, spreading load.
        next_at = registered_at + max(1.1, self.random.uniform(0, interval))
        while not self.stopping.is_set():
            await self.pause(next_at - self.clock())
            if self.stopping.is_set():
                return
            if index in self.silent and self.clock() - registered_at >= silent_after:
                self.stats.went_silent += 1
                return
            reading = await proxy.read()
            wait = interval
            started = time.perf_counter()
            try:
                ack = await client.heartbeat(
                    health=reading.health(),
                    metrics=reading.metrics,
                    version=SIM_VERSION,
                    active_bundle_id=applier.active_bundle_id,
                )
            except ControlPlaneError as exc:
                self.stats.record_failure(exc)
            else:
                self.stats.record_ok((time.perf_counter() - started) * 1000)
                wait = ack.next_heartbeat_s(interval)
                if ack.assigned_bundle_id not in (None, applier.active_bundle_id):
                    result = await applier.apply_assigned(ack.assigned_bundle_id)
                    self.stats.record_apply(result)
                    self.active_bundles[self.node_name(index)] = applier.active_bundle_id
                    if result.outcome == "applied":  # heartbeat at once, as the agent does
                        next_at = self.clock() + ack.after_apply_s(time.monotonic())
                        continue
            next_at = max(next_at + wait, self.clock() + MIN_HEARTBEAT_GAP_S)

    def progress_line(self, window_s: float, recent_ok: int) -> str:
        s = self.stats
        recent = sorted(s.recent_ms)
        p50, p99 = percentile(recent, 0.5), percentile(recent, 0.99)
        rate = recent_ok / window_s if window_s > 0 else 0.0
        lat = f"p50 {p50:.1f} ms p99 {p99:.1f} ms" if p50 is not None and p99 is not None else "-"
        return (
            f"[{self.clock() - s.started:6.1f}s] nodes {s.registered}/{s.nodes} registered"
            f" · heartbeats ok {s.heartbeats_ok} failed {s.heartbeats_failed}"
            f" · {rate:.1f}/s · {lat}"
            f" · bundles applied {s.bundles_applied} failed {s.bundles_failed}"
        )

    async def report_progress(self) -> None:
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        last_at, last_ok = self.clock(), 0
        while not self.stopping.is_set():
            await self.pause(1.0)
            now = self.clock()
            line = self.progress_line(now - last_at, self.stats.heartbeats_ok - last_ok)
            self.stats.recent_ms.clear()
            last_at, last_ok = now, self.stats.heartbeats_ok
            self.out.write(f"\r{line}\033[K" if tty else f"{line}\n")
            self.out.flush()
        if tty:
            self.out.write("\n")

    def summary(self) -> dict[str, Any]:
        s = self.stats
        elapsed = max(self.clock() - s.started, 1e-9)
        ordered = sorted(s.latencies_ms)

        def ms(value: float | None) -> float | None:
            return round(value, 2) if value is not None else None

        return {
            "nodes": s.nodes,
            "name_prefix": self.prefix,
            "registered": s.registered,
            "registration_failed": s.registration_failed,
            "heartbeats_ok": s.heartbeats_ok,
            "heartbeats_failed": s.heartbeats_failed,
            "errors": dict(s.errors),
            "silent_nodes": len(self.silent),
            "went_silent": s.went_silent,
            "unhealthy_nodes": len(self.unhealthy),
            "bundles_applied": s.bundles_applied,
            "bundles_failed": s.bundles_failed,
            "bundle_failures": dict(s.bundle_failures),
            "duration_s": round(elapsed, 2),
            "heartbeats_per_s": round(s.heartbeats_ok / elapsed, 1),
            "latency_ms": {
                "p50": ms(percentile(ordered, 0.5)),
                "p99": ms(percentile(ordered, 0.99)),
                "max": ms(ordered[-1] if ordered else None),
            },
        }

    async def run(self, http: httpx.AsyncClient | None = None) -> dict[str, Any]:
        cfg = self.config
        stagger = cfg.stagger_s
        if stagger is None:
            stagger = min(cfg.heartbeat_interval_s, cfg.nodes / 100)
        own = http is None
        http = http or NodeHttpClient(
            transport=AiohttpTransport(max_connections=cfg.max_connections, timeout_s=10.0)
        )
        self.staging_root = Path(tempfile.mkdtemp(prefix="sentinel-sim-"))
        tasks = [
            asyncio.create_task(self.run_node(i, http, stagger * i / cfg.nodes))
            for i in range(cfg.nodes)
        ]
        reporter = asyncio.create_task(self.report_progress()) if cfg.progress else None
        try:
            if cfg.duration_s is not None:
                await self.pause(cfg.duration_s)
                self.stop()
            else:
                await self.stopping.wait()
            await asyncio.gather(*tasks)
            if reporter is not None:
                await reporter
        finally:
            self.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own:
                await http.aclose()
            shutil.rmtree(self.staging_root, ignore_errors=True)
        return self.summary()


async def simulate(config: SimulationConfig, **kwargs: Any) -> dict[str, Any]:
    """Run a simulation to its end (duration or `stop()`); returns the summary."""
    return await Simulation(config, **kwargs).run()


# --- `sentinel-cp simulate` -----------------------------------------------------------------


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add `simulate` to a `sentinel-cp` subparsers object; the handler is `cli_main`."""
    parser = subparsers.add_parser(
        "simulate", help="run N simulated nodes against a control plane (load, demos)"
    )
    parser.add_argument("--url", required=True, help="control plane base URL")
    parser.add_argument("--project", required=True, help="project slug")
    parser.add_argument("--registration-token", help="omit for open registration")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--duration", type=float, help="seconds (default: until interrupted)")
    parser.add_argument("--labels", action="append", default=[], help="e.g. zone=a,zone=b")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="share of heartbeats")
    parser.add_argument("--unhealthy-share", type=float, default=0.0, help="share of nodes")
    parser.add_argument("--silent-share", type=float, default=0.0, help="share of nodes")
    parser.add_argument("--silent-after", type=float, help="seconds (default: 3 intervals)")
    parser.add_argument("--name-prefix", help="node names are <prefix>-0000… (default: random)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=SimulationConfig.max_connections,
        help="HTTP connections shared by all nodes (more costs the simulator CPU per request)",
    )
    parser.add_argument("--stagger", type=float, help="spread starts over this many seconds")
    parser.add_argument("--no-token", action="store_true", help="send node keys, not JWTs")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--apply-time", type=float, default=0.0, help="seconds a bundle activation takes"
    )
    parser.add_argument(
        "--apply-failure-rate", type=float, default=0.0, help="share of activations that fail"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        url=args.url,
        project=args.project,
        registration_token=args.registration_token,
        nodes=args.nodes,
        heartbeat_interval_s=args.heartbeat_interval,
        duration_s=args.duration,
        labels=parse_label_choices(args.labels),
        failure_rate=args.failure_rate,
        unhealthy_share=args.unhealthy_share,
        silent_share=args.silent_share,
        silent_after_s=args.silent_after,
        name_prefix=args.name_prefix,
        max_connections=args.max_connections,
        stagger_s=args.stagger,
        use_token=not args.no_token,
        seed=args.seed,
        apply_time_s=args.apply_time,
        apply_failure_rate=args.apply_failure_rate,
    )


def cli_main(args: argparse.Namespace) -> int:
    """Run, print the JSON summary; 0 when every node registered and no heartbeat failed."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"sentinel-cp simulate: {exc}", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        simulation = Simulation(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, simulation.stop)
        return await simulation.run()

    summary = asyncio.run(main())
    print(json.dumps(summary, indent=2))
    failed = summary["registration_failed"] or summary["heartbeats_failed"]
    return 1 if failed else 0
