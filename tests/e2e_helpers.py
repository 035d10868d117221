"""Builders for the end-to-end bundle tests (`test_bundle_e2e.py`): a running server's admin
API and database, a recording HTTP forwarder, and the fake proxy process.

Everything here talks to real processes over real sockets; every wait polls a condition against
a deadline (`test_server.wait_for`).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import PASSWORD, build_app
from test_agent_drivers import FAKE_PROXY, write_config
from test_server import Server, wait_for

BIN = Path(sys.executable).parent
SENTINEL_CP = str(BIN / "sentinel-cp")
SENTINEL_AGENT = str(BIN / "sentinel-agent")
COMPILE_TIMEOUT_S = 30
UNFINISHED = ("pending", "compiling")


# --- the operator's side, over HTTP ---------------------------------------------------------


@contextmanager
def admin_api(server: Server) -> Iterator[httpx.Client]:
    """An httpx client logged in as the bootstrap admin (session cookie)."""
    with httpx.Client(base_url=server.url, timeout=10) as api:
        login = api.post("/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD})
        assert login.status_code == 200, login.text
        yield api


def submit_and_compile(api: httpx.Client, config: str, version: str) -> dict[str, Any]:
    """Submit one `sentinel.kdl`; wait for the server's own worker to finish the bundle."""
    submitted = api.post(
        "/api/v1/projects/default/bundles", json={"version": version, "config_source": config}
    )
    assert submitted.status_code == 201, submitted.text
    bundle_id = submitted.json()["id"]

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/api/v1/projects/default/bundles/{bundle_id}").json()
        return None if body["status"] in UNFINISHED else body

    bundle: dict[str, Any] = wait_for(
        finished, timeout=COMPILE_TIMEOUT_S, what=f"bundle {version} to compile"
    )
    assert bundle["status"] == "compiled", bundle
    return bundle


def registration_token(api: httpx.Client) -> str:
    rotated = api.post("/api/v1/projects/default/registration-token", json={})
    assert rotated.status_code == 201, rotated.text
    return str(rotated.json()["token"])


def nodes_named(api: httpx.Client, text: str, **filters: str) -> list[dict[str, Any]]:
    """Nodes of the default project whose name contains `text` (≤ 100)."""
    page = api.get("/api/v1/projects/default/nodes", params={"q": text, "limit": 100, **filters})
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items


# --- the server's database, in this process -------------------------------------------------


@dataclass
class ServerDatabase:
    """A Flask app of our own on the running server's database: the only way (no rollouts
    yet) to point nodes at a bundle, and where per-node bundle states can be read."""

    app: Any

    def assign(self, bundle_id: str, node_ids: list[str]) -> int:
        from sentinel_cp.bundles import distribution
        from sentinel_cp.bundles.models import Bundle
        from sentinel_cp.db import db

        with self.app.app_context():
            bundle = db.session.get(Bundle, bundle_id)
            assert bundle is not None, f"no bundle {bundle_id} in the server's database"
            count = distribution.assign(bundle, [uuid.UUID(n) for n in node_ids])
            db.session.commit()
            return count

    def states(self, bundle_id: str) -> dict[str, tuple[str, str | None]]:
        """node id → (state, reason) of each node's newest status row for the bundle."""
        from sqlalchemy import select

        from sentinel_cp.bundles.models import NodeBundleStatus
        from sentinel_cp.db import db

        with self.app.app_context():
            rows = db.session.scalars(
                select(NodeBundleStatus)
                .where(NodeBundleStatus.bundle_id == bundle_id)
                .order_by(NodeBundleStatus.id)
            )
            found = {str(row.node_id): (row.state, row.reason) for row in rows}
            db.session.rollback()
            return found


@contextmanager
def server_database(server: Server, redis_url: str, tmp: Path) -> Iterator[ServerDatabase]:
    """`redis_url` only receives the assignment's live-update events (best effort)."""
    app = build_app(tmp, f"sqlite:///{server.data_dir / 'sentinel.db'}", redis_url)
    try:
        yield ServerDatabase(app)
    finally:
        from sentinel_cp.db import db, dispose_hot_engines

        with app.app_context():
            db.engine.dispose()
            dispose_hot_engines()


# --- a forwarder that records what a client sends -------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class RecordingForwarder:
    """An HTTP forwarder on 127.0.0.1 in front of `target`: a client pointed at it reaches the
    real server, and every request (method, path, body) it sent is kept in `requests`."""

    def __init__(self, target: str) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        upstream = httpx.Client(base_url=target, timeout=30, trust_env=False)
        forwarder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with forwarder.lock:
                    forwarder.requests.append(Recorded(self.command, self.path, body))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = upstream.request(self.command, self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.upstream = upstream
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sent(self, method: str, path_suffix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()


# --- the fake proxy (the same script as test_agent_drivers.py) -------------------------------


@dataclass
class ProxyProcess:
    config_dir: Path
    pid_file: Path
    url: str
    process: subprocess.Popen[bytes]

    def state(self) -> dict[str, Any]:
        """What the proxy loaded last and how many times it (re)loaded its config."""
        state: dict[str, Any] = httpx.get(f"{self.url}/state", timeout=5, trust_env=False).json()
        return state

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_fake_proxy(root: Path, initial_config: str) -> ProxyProcess:
    """A real process that writes a pid file and re-reads `<config dir>/sentinel.kdl` on
    SIGHUP; `/health` answers 200 while it has a config, `/state` says what it loaded."""
    config_dir = write_config(root / "etc" / "sentinel", initial_config)
    script = root / "fake_proxy.py"
    script.write_text(FAKE_PROXY)
    pid_file, port_file = root / "proxy.pid", root / "proxy.port"
    process = subprocess.Popen(
        [sys.executable, str(script), str(config_dir), str(pid_file), str(port_file)]
    )
    wait_for(pid_file.exists, timeout=10, what="the fake proxy's pid file")
    port = int(port_file.read_text())
    return ProxyProcess(config_dir, pid_file, f"http://127.0.0.1:{port}", process)


def cli_flags(**options: object) -> list[str]:
    """`cli_flags(name_prefix="x", nodes=3)` → `["--name-prefix", "x", "--nodes", "3"]`."""
    return [
        part
        for key, value in options.items()
        for part in (f"--{key.replace('_', '-')}", str(value))
    ]


def start_agent(
    url: str, token: str, name: str, proxy: ProxyProcess, state_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """The real `sentinel-agent` applying bundles to `proxy` with the file driver."""
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = cli_flags(
        url=url,
        project="default",
        name=name,
        registration_token=token,
        credentials=state_dir / "credentials.json",
        heartbeat_interval=1,
        config_dir=proxy.config_dir,
        pid_file=proxy.pid_file,
        health_url=f"{proxy.url}/health",
        health_timeout=5,
    )
    with log.open("wb") as output:
        return subprocess.Popen(
            [SENTINEL_AGENT, *argv, "-v"], stdout=output, stderr=subprocess.STDOUT
        )


def stop_process(process: subprocess.Popen[Any], sig: int) -> int:
    """Send `sig` (if still running) and wait for the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout=20)
