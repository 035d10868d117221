"""`sentinel-cp demo`: the embedded system with a live simulated fleet, for a first look.

It starts the `web` process (`python app.py`: SQLite, local bundle storage, the in-process
Redis stand-in and its workers) on a fresh data directory, then drives it like an operator
would, over HTTP: two bundles are submitted and compiled, 50 simulated nodes in two zones
register and heartbeat (the simulator runs here, in a thread), and the first bundle is rolled
out to all of them. The second bundle is left for the newcomer to roll out from the console.
Everything lives in a temporary directory that is removed on exit (Ctrl-C), unless
`--data-dir` names one to keep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agent.simulator import Simulation, SimulationConfig

ROOT = Path(__file__).resolve().parent.parent
ADMIN_EMAIL = "admin@localhost"
ZONES = ["zone-a", "zone-b"]
STARTUP_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 120.0
T = TypeVar("T")


def demo_config(version: str, routes: int) -> str:
    """A small, valid proxy configuration; `routes` makes the two bundles differ."""
    route_blocks = "\n".join(
        f'    route "{name}" {{\n        matches {{\n            path-prefix "/{name}"\n'
        f'        }}\n        upstream "backend"\n    }}'
        for name in ["api", "static", "admin", "search"][:routes]
    )
    return (
        f"// demo bundle {version}\n"
        "system {\n    worker-threads 2\n}\n"
        'listeners {\n    listener "http" {\n        address "0.0.0.0:8080"\n'
        '        protocol "http"\n    }\n}\n'
        f"routes {{\n{route_blocks}\n}}\n"
        'upstreams {\n    upstream "backend" {\n        target "127.0.0.1:9000"\n    }\n}\n'
    )


class DemoError(RuntimeError):
    """The demo could not be set up (the message says which step)."""


def _wait(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class DemoOptions:
    nodes: int = 50
    port: int = 4000
    data_dir: Path | None = None
    heartbeat_interval_s: float = 5.0
    exit_after_setup: bool = False


@contextlib.contextmanager
def web_process(data_dir: Path, port: int, password: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python app.py` on `data_dir`, with the demo admin's password; stopped on exit."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "S3_BUCKET", "SENTINEL_ENV")
    }
    env.update(
        SENTINEL_DATA_DIR=str(data_dir),
        PORT=str(port),
        SENTINEL_ADMIN_EMAIL=ADMIN_EMAIL,
        SENTINEL_ADMIN_PASSWORD=password,
    )
    log = (data_dir / "web.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and app.py
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


class Operator:
    """The demo's operator: a logged-in HTTP client for the default project."""

    def __init__(self, url: str, password: str) -> None:
        self.api = httpx.Client(base_url=url, timeout=15)
        login = self.api.post("/api/v1/session", json={"email": ADMIN_EMAIL, "password": password})
        if login.status_code != 200:
            raise DemoError(f"could not log in as {ADMIN_EMAIL}: {login.text}")
        # Session cookies are `Secure` outside development; this loopback client sends them.
        cookies = [c.split(";", 1)[0] for c in login.headers.get_list("set-cookie")]
        self.api.headers["Cookie"] = "; ".join(cookies)
        self.base = "/api/v1/projects/default"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api.request(method, f"{self.base}{path}", **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def compiled(self, version: str, source: str) -> dict[str, Any]:
        bundle = self.call("POST", "/bundles", json={"version": version, "config_source": source})

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.call("GET", f"/bundles/{bundle['id']}")
            return None if body["status"] in ("pending", "compiling") else body

        result = _wait(done, STEP_TIMEOUT_S, f"bundle {version} to compile")
        if result["status"] != "compiled":
            raise DemoError(f"bundle {version} did not compile: {result.get('errors')}")
        return result

    def online(self) -> int:
        return int(self.call("GET", "/nodes/stats")["by_status"].get("online", 0))


def _run_fleet(simulation: Simulation) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: asyncio.run(simulation.run()), name="demo-fleet", daemon=True
    )
    thread.start()
    return thread


def run(options: DemoOptions, out: Any = sys.stdout) -> int:
    """Set the demo up, print how to open it, and keep it live until interrupted."""
    keep = options.data_dir is not None
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="sentinel-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    url = f"http://127.0.0.1:{options.port}"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    simulation: Simulation | None = None
    fleet: threading.Thread | None = None
    try:
        with web_process(data_dir, options.port, password) as web:

            def ready() -> bool:
                if web.poll() is not None:
                    raise DemoError(f"the server exited; see {data_dir / 'web.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"{url}/ready", timeout=2).status_code == 200
                return False

            out.write(f"Starting the embedded system on {url} …\n")
            out.flush()
            _wait(ready, STARTUP_TIMEOUT_S, "the server to be ready")
            operator = Operator(url, password)
            token = operator.call("POST", "/registration-token", json={})["token"]
            first = operator.compiled("demo-v1", demo_config("demo-v1", 2))
            second = operator.compiled("demo-v2", demo_config("demo-v2", 4))
            out.write(
                f"Bundles compiled: demo-v1 {first['id'][:12]}, demo-v2 {second['id'][:12]}\n"
            )
            simulation = Simulation(
                SimulationConfig(
                    url=url,
                    project="default",
                    nodes=options.nodes,
                    registration_token=token,
                    heartbeat_interval_s=options.heartbeat_interval_s,
                    labels={"zone": ZONES},
                    name_prefix="edge",
                    progress=False,
                    stagger_s=min(options.heartbeat_interval_s, 2.0),
                ),
                out=io.StringIO(),
            )
            fleet = _run_fleet(simulation)
            _wait(
                lambda: operator.online() >= options.nodes,
                STEP_TIMEOUT_S,
                f"{options.nodes} simulated nodes to come online",
            )
            out.write(f"{options.nodes} simulated nodes online in {', '.join(ZONES)}\n")
            rollout = operator.call(
                "POST",
                "/rollouts",
                json={"bundle_id": first["id"], "strategy": "all_at_once", "bake_s": 5},
            )
            finished = _wait(
                lambda: (
                    body
                    if (body := operator.call("GET", f"/rollouts/{rollout['id']}"))["state"]
                    in ("completed", "paused", "failed", "cancelled")
                    else None
                ),
                STEP_TIMEOUT_S,
                "the first rollout to finish",
            )
            if finished["state"] != "completed":
                raise DemoError(f"the demo rollout ended {finished['state']}: {finished['reason']}")
            out.write(
                "\n".join(
                    [
                        "",
                        "=" * 64,
                        f"Sentinel CP demo on {url}/",
                        f"  log in as {ADMIN_EMAIL} with password {password}",
                        f"  {options.nodes} live nodes run demo-v1 (rollout completed);",
                        "  demo-v2 is compiled: start a rollout from Rollouts → New.",
                        f"  data: {data_dir}" + ("" if keep else " (removed on exit)"),
                        "Ctrl-C stops the demo.",
                        "=" * 64,
                        json.dumps(
                            {
                                "url": url,
                                "email": ADMIN_EMAIL,
                                "nodes": options.nodes,
                                "rollout_id": rollout["id"],
                                "bundles": [first["id"], second["id"]],
                            }
                        ),
                        "",
                    ]
                )
            )
            out.flush()
            if not options.exit_after_setup:
                while not stop.is_set() and web.poll() is None:
                    stop.wait(1.0)
    except DemoError as exc:
        print(f"sentinel-cp demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if simulation is not None:
            simulation.stop()
        if fleet is not None:
            fleet.join(timeout=15)
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="the embedded system with a simulated fleet, bundles and a finished rollout"
    )
    parser.add_argument("--nodes", type=int, default=50, help="simulated nodes (default 50)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 4000)))
    parser.add_argument("--data-dir", type=Path, help="keep the demo's data here")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats"
    )
    parser.add_argument(
        "--exit-after-setup", action="store_true", help="stop once the demo is ready (for tests)"
    )
    return parser


def cli_main(args: argparse.Namespace) -> int:
    if args.nodes < 1 or args.heartbeat_interval < 1:
        print("sentinel-cp demo: --nodes and --heartbeat-interval must be at least 1")
        return 2
    return run(
        DemoOptions(
            nodes=args.nodes,
            port=args.port,
            data_dir=args.data_dir,
            heartbeat_interval_s=args.heartbeat_interval,
            exit_after_setup=args.exit_after_setup,
        )
    )
