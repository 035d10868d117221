"""The `web` process: migrate, create the first admin and project, serve the one-port app.

With no `REDIS_URL` it is the whole embedded system: a fakeredis `TcpFakeServer` on a loopback
port inside this process, and real `rq worker --with-scheduler` and `rq cron jobs/cron.py`
child processes pointed at it (RQ's worker and cron install signal handlers, so they cannot run
in a thread). The children are stopped with the server, and die with it even if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sentinel_cp.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("sentinel_cp.server")


class EmbeddedRedis:
    """fakeredis speaking the Redis protocol on 127.0.0.1, served from a daemon thread."""

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer

        self.server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        # A client blocked in BLPOP holds its handler thread forever; never wait for it.
        self.server.daemon_threads = True
        self.server.block_on_close = False
        # Small replies with Nagle on meet the client's delayed ACK: a pipelined exchange (RQ's
        # enqueue) stalled ~40 ms per call. Redis itself sets TCP_NODELAY on every client.
        accept = self.server.get_request

        def get_request() -> tuple[socket.socket, Any]:
            connection, address = accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection, address

        self.server.get_request = get_request  # type: ignore[method-assign]
        self.url = f"redis://127.0.0.1:{self.server.server_address[1]}/0"
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="embedded-redis", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the child when this process dies, however it dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """The worker and cron processes of the embedded system, restarted if they exit."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        from jobs import QUEUES

        python = sys.executable
        self.commands = {
            "worker": [
                python,
                "-m",
                "jobs.worker",
                "worker",
                "--url",
                redis_url,
                "--with-scheduler",
                "--logging_level",
                "WARNING",
                *QUEUES,
            ],
            "cron": [
                python,
                "-m",
                "rq.cli",
                "cron",
                "--url",
                redis_url,
                "--logging-level",
                "WARNING",
                str(ROOT / "jobs" / "cron.py"),
            ],
        }
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": settings.database_url,
            "SENTINEL_DATA_DIR": str(settings.data_dir.resolve()),
            "SECRET_KEY_BASE": settings.secret_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()
        self.monitor = threading.Thread(target=self._watch, name="children", daemon=True)

    def _spawn(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and args
            self.commands[name],
            cwd=ROOT,
            env=self.env,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # its own process group: the worker forks a scheduler
        )
        log.info("started %s (pid %s)", name, self.processes[name].pid)

    def start(self) -> None:
        for name in self.commands:
            self._spawn(name)
        self.monitor.start()

    def _watch(self) -> None:
        while not self.stopping.wait(2):
            for name, process in list(self.processes.items()):
                if process.poll() is not None and not self.stopping.is_set():
                    log.warning("%s exited with %s; restarting", name, process.returncode)
                    self._spawn(name)

    def stop(self) -> None:
        """SIGTERM each child's whole process group, wait, then SIGKILL what is left."""
        self.stopping.set()
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 10 s; killing it", name)
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def prepare_database(app: object) -> None:
    """Upgrade the schema to head and create the first admin and project, printing a
    generated password once."""
    from flask import Flask
    from flask_migrate import upgrade

    from sentinel_cp.bootstrap import ensure_initial_state

    assert isinstance(app, Flask)
    settings: Settings = app.config["SENTINEL_SETTINGS"]
    with app.app_context():
        upgrade()
        first = ensure_initial_state(settings)
    if first.admin_email:
        lines = [f"Created admin {first.admin_email}"]
        if first.generated_password:
            lines.append(f"Generated password (shown once): {first.generated_password}")
        print("\n".join(["", "=" * 60, *lines, "=" * 60, ""]), flush=True)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    import uvicorn

    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets
    # the `finally` below stop the children and the embedded Redis, and exit 0.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    from app import create_app, create_asgi

    embedded = children = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis()
        embedded.start()
        redis_url = embedded.url
    flask_app = create_app({"REDIS_URL": redis_url}, settings=settings)
    prepare_database(flask_app)
    if embedded is not None:
        children = Children(settings, redis_url)
        children.start()
    try:
        asgi = create_asgi(flask_app)
        # What the application allocated to start is never garbage: out of the collector's
        # sight, full collections stop stalling every request (gunicorn.conf.py).
        gc.collect()
        gc.freeze()
        print(f"Sentinel CP on http://{settings.host}:{settings.port}/", flush=True)
        uvicorn.run(
            asgi,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=5,
        )
    finally:
        if children is not None:
            children.stop()
        if embedded is not None:
            embedded.stop()


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sentinel-cp: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(settings)
