"""Sustained heartbeats/s and p50/p99 latency for N simulated nodes, over real HTTP.

Two servers, each measured against a trivial endpoint (`GET /health`) on the same server in the
same run, with the same load generator (the agent's own `NodeClient` on one shared
`httpx.AsyncClient`, `CONCURRENCY` requests in flight):

- `web`: `python app.py`, the embedded system (SQLite + the in-process Redis stand-in).
- `api`: `gunicorn -w 2 'app:create_app()'` on PostgreSQL (a database this bench creates and
  drops) and Redis db 14 (flushed before and after).

Nodes are registered first (not measured) and hold a JWT. The heartbeat loop is closed: each
worker takes the next node round robin, and a node is never sent two heartbeats less than
`MIN_GAP_S` apart (the server allows one a second), so N bounds the offered rate at N/MIN_GAP_S.
The load generator shares the machine with the server, as in a single-box deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-123"
CONCURRENCY = 16
MIN_GAP_S = 1.05
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY_BASE", "SENTINEL_ENV")
    }
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        SENTINEL_DATA_DIR=str(data_dir),
        SENTINEL_ADMIN_PASSWORD=PASSWORD,
        PYTHONPATH=str(ROOT),
    )
    return env


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def web_server(tmp: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp / "web.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=_base_env(tmp / "data", port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process)
        yield url
    finally:
        _stop(process)


@contextlib.contextmanager
def api_server(tmp: Path) -> Iterator[str]:
    import psycopg
    import redis

    name = f"sentinel_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = _free_port()
    env = _base_env(tmp / "data", port)
    env.update(DATABASE_URL=f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}", REDIS_URL=REDIS_URL)
    bin_dir = Path(sys.executable).parent
    log = (tmp / "api.log").open("wb")
    process = None
    try:
        for command in (
            [str(bin_dir / "flask"), "--app", "app", "db", "upgrade"],
            [sys.executable, "-m", "sentinel_cp.cli", "setup"],  # the first admin and project
        ):
            subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=log, stderr=log)
        process = subprocess.Popen(
            [str(bin_dir / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "app:create_app()"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process)
        yield url
    finally:
        if process is not None:
            _stop(process)
        redis.Redis.from_url(REDIS_URL).flushdb()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _registration_token(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        login = client.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
        )
        login.raise_for_status()
        response = client.post("/api/v1/projects/default/registration-token", json={})
        response.raise_for_status()
        return str(response.json()["token"])


async def _closed_loop(
    seconds: float, request: Callable[[int], Awaitable[None]]
) -> tuple[int, list[float], int, float]:
    """`CONCURRENCY` workers call `request(i)` until time is up; (done, latencies, failed, s)."""
    latencies: list[float] = []
    failed = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failed, counter
        while time.perf_counter() < deadline:
            index = counter
            counter += 1
            started = time.perf_counter()
            try:
                await request(index)
            except Exception:
                failed += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(latencies), latencies, failed, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float | None:
    from agent.simulator import percentile

    result = percentile(sorted(values), q)
    return round(result, 2) if result is not None else None


async def _measure(url: str, nodes: int, seconds: float) -> dict[str, Any]:
    from agent.client import NodeClient

    token = _registration_token(url)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    limiter = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=None)) as http:
        clients = [
            NodeClient(url, http=http, use_token=True, max_attempts=3, limiter=limiter)
            for _ in range(nodes)
        ]
        prefix = f"bench-{uuid.uuid4().hex[:6]}"

        async def register(i: int) -> None:
            await clients[i].register("default", name=f"{prefix}-{i:05d}", registration_token=token)
            await clients[i].refresh_token()

        setup_started = time.perf_counter()
        await asyncio.gather(*(register(i) for i in range(nodes)))
        setup_s = time.perf_counter() - setup_started
        await asyncio.sleep(MIN_GAP_S)  # registration counts as the first sign of life

        async def health(_i: int) -> None:
            async with limiter:
                response = await http.get(f"{url}/health")
            response.raise_for_status()

        await _closed_loop(1.0, health)  # warm the connections and the workers
        trivial = await _closed_loop(seconds, health)

        last_sent = [0.0] * nodes
        metrics = {"error_rate": 0.2, "latency_p99_ms": 31.0, "requests_per_second": 1200.0}

        async def heartbeat(i: int) -> None:
            node = i % nodes
            wait = last_sent[node] + MIN_GAP_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_sent[node] = time.monotonic()
            await clients[node].heartbeat(health={"status": "healthy"}, metrics=metrics)

        beats = await _closed_loop(seconds, heartbeat)
    trivial_rate = trivial[0] / trivial[3]
    beat_rate = beats[0] / beats[3]
    return {
        "value": round(beat_rate, 1),
        "unit": "heartbeats/s",
        "baseline": round(trivial_rate, 1),
        "baseline_name": "GET /health, same server, same run, same load generator",
        "ratio": round(beat_rate / trivial_rate, 3) if trivial_rate else None,
        "nodes": nodes,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "heartbeats": beats[0],
        "heartbeats_failed": beats[2],
        "latency_ms": {"p50": _pct(beats[1], 0.5), "p99": _pct(beats[1], 0.99)},
        "baseline_latency_ms": {"p50": _pct(trivial[1], 0.5), "p99": _pct(trivial[1], 0.99)},
        "node_setup_s": round(setup_s, 1),
        "offered_limit_per_s": round(nodes / MIN_GAP_S, 1),
    }


def run(*, quick: bool) -> dict[str, Any]:
    seconds = 10.0 if quick else 60.0
    figures: dict[str, Any] = {}
    for name, server, nodes in (
        ("web", web_server, 300 if quick else 1000),
        ("api", api_server, 1100 if quick else 3000),
    ):
        with (
            tempfile.TemporaryDirectory(prefix=f"sentinel-bench-{name}-") as tmp,
            server(Path(tmp)) as url,
        ):
            figures[f"heartbeats_per_s_{name}"] = asyncio.run(_measure(url, nodes, seconds))
    return figures


if __name__ == "__main__":
    import json

    sys.path.insert(0, str(ROOT))
    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
