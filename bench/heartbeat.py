"""Sustained heartbeats/s and p50/p99 latency for N simulated nodes, over real HTTP.

Two servers, each measured against a trivial endpoint (`GET /health`) on the same server in the
same run, with the same load generator: `wrk` (Debian package `wrk`), one thread, `CONCURRENCY`
connections, keep-alive. A Python load generator saturates long before the server does here.

- `web`: `python app.py`, the embedded system (SQLite + the in-process Redis stand-in).
- `api`: `gunicorn -w 2 -k gthread --threads 8 'app:create_app()'` (as in the Procfile) on
  PostgreSQL (a database this bench creates and drops) and Redis db 14 (flushed before and after).

Nodes are registered first (`SEED`: the domain's `register_node` in a process of its own on the
server's database, then one heartbeat each over HTTP; not measured). wrk then sends heartbeats
with their node keys, round robin over all nodes; a node sent two heartbeats within a second gets
429, which counts as a failure (so N must exceed the rate: `max_rate_without_429_per_s`).
The load generator shares the machine with the server, as in a single-box deployment.

Both servers run as deployed, with the heartbeat buffer on (`sentinel_cp/heartbeat_buffer.py`):
a node's first heartbeat in each worker reads and writes the database and is remembered; its
steady heartbeats after that are answered from memory and written in batches every 0.5 s, so
the figure is a steady fleet's (a fleet coming online or changing bundles takes the database
path, measured by `bench/propagation.py`). A worker reads a node again every 60-90 s. Before
the measured runs, `WARM_UP_S` (QUICK: 3 s) of heartbeats lets each worker meet the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-123"
CONCURRENCY = 16
# The Procfile's `api` process: 2 workers with threads (sync workers close every connection).
API_WORKER_ARGS = ("-w", "2", "-k", "gthread", "--threads", "8")
BALANCE_ATTEMPTS = 8
QUICK_SECONDS = 5.0  # per wrk run (QUICK); a full run takes 60 s
PROBE_S = 1.5
WARM_UP_S = 5.0
QUICK_WARM_UP_S = 3.0
_GUNICORN_MASTERS: dict[str, int] = {}  # host:port -> pid of a running api_server's master
_SERVER_ENVS: dict[str, dict[str, str]] = {}  # url -> environment of a running server
# Registers nodes with the domain's own `register_node` (audited, hashed keys, a batch per
# transaction) in a process of its own on the server's database: over HTTP one at a time,
# 3,600 nodes took a minute of a QUICK run (session 8), and registration is not the figure.
SEED = """
import json, sys, uuid
from app import create_app
from sentinel_cp import nodes, projects
from sentinel_cp.db import db
count, token, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app, prefix, seeded = create_app(), f"bench-{uuid.uuid4().hex[:6]}", []
with app.app_context():
    project = projects.get_project("default")
    for start in range(0, count, 500):
        for i in range(start, min(count, start + 500)):
            node, key, _ = nodes.register_node(
                project, presented_token=token, name=f"{prefix}-{i:05d}", labels={},
                capabilities=[], version=None, ip=None, hostname=None, metadata={},
            )
            seeded.append((str(node.id), key))
        db.session.commit()
with open(out, "w") as f:
    json.dump(seeded, f)
"""
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
        _SERVER_ENVS[url] = _base_env(tmp / "data", port)
        yield url
    finally:
        _SERVER_ENVS.pop(f"http://127.0.0.1:{port}", None)
        _stop(process)


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A PostgreSQL database of our own (dropped afterwards) and Redis db 14 (flushed before
    and after); yields the database URL."""
    import psycopg
    import redis

    name = f"sentinel_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def api_server(tmp: Path, database_url: str | None = None) -> Iterator[str]:
    """gunicorn on `database_url` (a fresh `bench_database` when None), migrated and set up;
    its data directory is `tmp / "data"`."""
    with contextlib.ExitStack() as stack:
        if database_url is None:
            database_url = stack.enter_context(bench_database())
        port = _free_port()
        env = _base_env(tmp / "data", port)
        env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL)
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
                [
                    str(bin_dir / "gunicorn"),
                    *API_WORKER_ARGS,
                    "-b",
                    f"127.0.0.1:{port}",
                    "app:create_app()",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process)
            _GUNICORN_MASTERS[f"127.0.0.1:{port}"] = process.pid
            _SERVER_ENVS[url] = env
            yield url
        finally:
            _GUNICORN_MASTERS.pop(f"127.0.0.1:{port}", None)
            _SERVER_ENVS.pop(f"http://127.0.0.1:{port}", None)
            if process is not None:
                _stop(process)


def _registration_token(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        login = client.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
        )
        login.raise_for_status()
        response = client.post("/api/v1/projects/default/registration-token", json={})
        response.raise_for_status()
        return str(response.json()["token"])


WRK_HEARTBEAT = """
local nodes = {%s}
local body = '{"health":{"status":"healthy"},"metrics":{"error_rate":0.2,"latency_p99_ms":31,' ..
             '"requests_per_second":1200}}'
local i = 0
request = function()
  i = i %% #nodes + 1
  local n = nodes[i]
  return wrk.format("POST", "/api/v1/nodes/" .. n[1] .. "/heartbeat",
    {["Content-Type"] = "application/json", ["X-Sentinel-Node-Key"] = n[2]}, body)
end
"""


def _worker_cpu_s(master: int) -> dict[int, float]:
    """CPU seconds used so far by each worker of a gunicorn master."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in map(int, children):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return used


def _wrk(url: str, seconds: float, script: Path | None = None) -> dict[str, Any]:
    """One wrk thread (one Lua state, so the node rotation is global), CONCURRENCY connections.

    `output` is wrk's report as printed, for whatever a script's `done` adds to it.

    Against an `api_server`, a run counts only if both gunicorn workers served it. wrk opens
    its connections all at once and keeps them; a gthread worker that wakes first often
    accepts every one of them, and the other worker idles for the whole run (measured: 2,200
    vs 6,700 `/health`/s, a coin toss per run). A real fleet's thousands of connections arrive
    over time and spread. So each run is looked at after PROBE_S: if one worker has used less
    than a quarter of the other's CPU, wrk is stopped and started again (`attempts`, up to
    BALANCE_ATTEMPTS; a one-sided probe costs PROBE_S, not the whole run); the run that goes
    on is judged again over its whole length (`balanced`).
    """
    master = _GUNICORN_MASTERS.get(urlsplit(url).netloc)
    command = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{int(seconds)}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    for attempt in range(1, BALANCE_ATTEMPTS + 1):
        before = _worker_cpu_s(master) if master else {}
        process = subprocess.Popen([*command, url], stdout=subprocess.PIPE, text=True)
        if master and attempt < BALANCE_ATTEMPTS and seconds > PROBE_S:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=PROBE_S)  # the probe window (wrk runs `seconds`)
            if process.poll() is None and not _balanced(before, _worker_cpu_s(master)):
                process.kill()
                process.communicate()
                continue
        output, _ = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, command, output)
        result = _parse_wrk(output)
        if not master:
            return result
        after = _worker_cpu_s(master)
        used = sorted(after[pid] - before.get(pid, 0.0) for pid in after)
        return {
            **result,
            "attempts": attempt,
            "balanced": _balanced(before, after),
            "worker_cpu_s": [round(u, 2) for u in used],
        }
    raise AssertionError("unreachable")


def _balanced(before: dict[int, float], after: dict[int, float]) -> bool:
    used = sorted(after[pid] - before.get(pid, 0.0) for pid in after)
    return len(used) < 2 or used[0] >= used[-1] / 4


def _parse_wrk(output: str) -> dict[str, Any]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0

    def percentile(label: str) -> float | None:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if found is None:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return round(float(found.group(1)) * scale, 2)

    return {
        "rate": rate * (1 - errors / total) if total else 0.0,
        "requests": total,
        "failed": errors,
        "p50": percentile("50"),
        "p99": percentile("99"),
        "output": output,
    }


async def _register(url: str, nodes: int) -> tuple[list[tuple[str, str]], float]:
    """`nodes` registered nodes of a server this module started (`SEED`), each with one first
    heartbeat over HTTP; returns their (id, key) and the seconds it took."""
    started = time.perf_counter()
    credentials = _seed(url, nodes)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    limiter = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=None)) as http:
        # One first heartbeat each (takes each node's first history sample): the figure is
        # the steady state of a running fleet, not a fleet coming online.
        await asyncio.gather(*(_first_heartbeat(url, http, c, limiter) for c in credentials))
    return credentials, time.perf_counter() - started


def _seed(url: str, nodes: int) -> list[tuple[str, str]]:
    env = {k: v for k, v in _SERVER_ENVS[url].items() if k not in ("PORT", "HOST")}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        seeded = subprocess.run(
            [sys.executable, "-c", SEED, str(nodes), _registration_token(url), out.name],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if seeded.returncode != 0:
            raise RuntimeError(f"seeding {nodes} nodes failed: {seeded.stderr[-2000:]}")
        return [(node_id, key) for node_id, key in json.loads(Path(out.name).read_text())]


async def _first_heartbeat(
    url: str, http: httpx.AsyncClient, credential: tuple[str, str], limiter: asyncio.Semaphore
) -> None:
    node_id, node_key = credential
    async with limiter:
        response = await http.post(
            f"{url}/api/v1/nodes/{node_id}/heartbeat",
            json={"health": {"status": "healthy"}},
            headers={"X-Sentinel-Node-Key": node_key},
        )
        response.raise_for_status()


def _measure(
    url: str, nodes: int, seconds: float, tmp: Path, warm_up_s: float = WARM_UP_S
) -> dict[str, Any]:
    """Heartbeats from `nodes` registered nodes, round robin, next to GET /health."""
    credentials, setup_s = asyncio.run(_register(url, nodes))
    time.sleep(MIN_GAP_S)  # the protocol's 1/s per-node limit, not synchronisation
    script = tmp / "heartbeat.lua"
    script.write_text(WRK_HEARTBEAT % ",".join(f'{{"{n}","{k}"}}' for n, k in credentials))
    # Warm up: the workers' connections, and each worker's memory of the nodes (a steady
    # fleet's state; a node heartbeats again only after the /health run, well over a second).
    _wrk(url, warm_up_s, script)
    trivial = _wrk(f"{url}/health", seconds)
    beats = _wrk(url, seconds, script)
    return {
        "value": round(beats["rate"], 1),
        "unit": "heartbeats/s",
        "baseline": round(trivial["rate"], 1),
        "baseline_name": "GET /health, same server, same run, same load generator (wrk)",
        "ratio": round(beats["rate"] / trivial["rate"], 3) if trivial["rate"] else None,
        "nodes": nodes,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "heartbeats": beats["requests"],
        "heartbeats_refused": beats["failed"],
        "latency_ms": {"p50": beats["p50"], "p99": beats["p99"]},
        "baseline_latency_ms": {"p50": trivial["p50"], "p99": trivial["p99"]},
        "node_setup_s": round(setup_s, 1),
        "max_rate_without_429_per_s": round(nodes / MIN_GAP_S, 1),
        "workers": workers_note(beats, trivial),
    }


def workers_note(measured: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any] | None:
    """How the runs spread over gunicorn's workers (see `_wrk`); None for a single process."""
    if "attempts" not in measured:
        return None
    return {
        key: {name: run.get(name) for name in ("attempts", "balanced", "worker_cpu_s")}
        for key, run in (("figure", measured), ("baseline", baseline))
    }


def run(*, quick: bool) -> dict[str, Any]:
    seconds = QUICK_SECONDS if quick else 60.0
    figures: dict[str, Any] = {}
    for name, server, nodes in (
        ("web", web_server, 1800 if quick else 3000),
        ("api", api_server, 3600 if quick else 6000),
    ):
        with (
            tempfile.TemporaryDirectory(prefix=f"sentinel-bench-{name}-") as tmp,
            server(Path(tmp)) as url,
        ):
            warm_up_s = QUICK_WARM_UP_S if quick else WARM_UP_S
            figure = _measure(url, nodes, seconds, Path(tmp), warm_up_s)
            figures[f"heartbeats_per_s_{name}"] = figure
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
