"""Builders for the end-to-end rollout tests (`test_rollout_e2e.py`): the production process
layout on PostgreSQL + real Redis (`python app.py`, separate `rq worker` processes, one
`rq cron jobs/cron.py`), the operator's side over HTTP, simulated fleets, and a few reads of
the server's PostgreSQL database and Redis.

Every wait polls a condition against a deadline (`test_server.wait_for`, or `wait_fast` where
a short-lived state has to be caught).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
from conftest import PASSWORD, POSTGRES_ADMIN_URL, ROOT
from e2e_helpers import SENTINEL_CP, cli_flags
from test_server import Server, start_server, wait_for

from jobs import QUEUES

REDIS_DB = 12  # this file's own Redis database, flushed before and after
COMPILE_TIMEOUT_S = 60
T = TypeVar("T")


class RolloutTimeout(AssertionError):
    """A rollout did not reach the awaited state in time (it did not end elsewhere either)."""


def wait_fast(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """`wait_for` with a 2 ms poll, for states that last only milliseconds (a running job)."""
    result: T = wait_for(
        condition, timeout=timeout, what=what, interval=0.002, tolerate_errors=False
    )
    return result


# --- PostgreSQL and Redis of our own ------------------------------------------------------


@contextmanager
def own_database() -> Iterator[str]:
    """A PostgreSQL database created for this module and dropped after it (only ours)."""
    import psycopg

    name = f"sentinel_rollout_e2e_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def own_redis_url() -> str:
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15").rsplit("/", 1)[0]
    return f"{base}/{REDIS_DB}"


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the server's database directly (autocommit: always the latest committed state)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


# --- the production process layout --------------------------------------------------------


@dataclass
class Stack:
    """`python app.py` in production mode plus the Procfile's worker and cron processes."""

    server: Server
    env: dict[str, str]
    redis_url: str
    database_url: str
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cron: subprocess.Popen[bytes] | None = None
    _redis: redis.Redis | None = None

    def _spawn(
        self, argv: list[str], log_name: str, module: str = "rq.cli"
    ) -> subprocess.Popen[bytes]:
        with (self.logs / log_name).open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", module, *argv],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """The Procfile's worker (`python -m jobs.worker worker --url … QUEUES`), named so Redis
        shows its job."""
        argv = ["worker", "--url", self.redis_url, "--name", name, *QUEUES]
        self.workers[name] = process = self._spawn(argv, f"worker-{name}.log", "jobs.worker")
        wait_for(
            lambda: process.poll() is None and self.redis().exists(f"rq:worker:{name}"),
            timeout=30,
            what=f"worker {name} to register in Redis",
        )
        return process

    def start_cron(self) -> None:
        argv = ["cron", "--url", self.redis_url, str(ROOT / "jobs" / "cron.py")]
        self.cron = self._spawn(argv, "cron.log")

    def redis(self) -> redis.Redis:
        """One client for the test process (polls run every few milliseconds)."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    def current_job(self, worker: str) -> str | None:
        """The job id a worker is executing right now (RQ keeps it in the worker's hash)."""
        value = self.redis().hget(f"rq:worker:{worker}", "current_job")
        return value.decode() if isinstance(value, bytes) else value

    def kill_worker_mid_job(self, wanted: Callable[[str], bool], timeout: float) -> list[int]:
        """SIGKILL the first worker seen running a job `wanted` accepts, with its work horse
        (RQ forks one per job, into a process group of its own): a machine dying mid-job.

        Worker and horse are frozen (SIGSTOP) first and the job is checked to be still
        `started`, so the kill never lands just after the job finished. Returns the pids.
        """
        from rq.job import Job

        deadline = time.monotonic() + timeout

        def busy() -> tuple[str, str] | None:
            for name, process in self.workers.items():
                job = self.current_job(name) if process.poll() is None else None
                if job is not None and wanted(job):
                    return name, job
            return None

        while True:
            name, job_id = wait_fast(
                busy,
                timeout=max(deadline - time.monotonic(), 0.01),
                what="a worker to run a matching job",
            )
            process = self.workers[name]
            pids = [process.pid, *children_of(process.pid)]
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            job = Job.fetch(job_id, connection=self.redis())
            if job.get_status(refresh=True) == "started" and self.current_job(name) == job_id:
                for pid in pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait(timeout=10)
                return pids
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def log(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Warm-stop workers and cron (SIGTERM to their groups), then kill what is left."""
        processes = [*self.workers.values(), *([self.cron] if self.cron else [])]
        for process in processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.server.stop()


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def start_production_server(
    tmp: Path,
    database_url: str,
    redis_url: str,
    secret: str,
    extra_env: dict[str, str] | None = None,
) -> tuple[Any, dict[str, str]]:
    """`python app.py` in production mode (it migrates the database and creates the bootstrap
    admin and the `default` project), and the environment its worker and cron processes get."""
    env_extra = {
        "SENTINEL_ENV": "production",
        "SECRET_KEY_BASE": secret,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        **(extra_env or {}),
    }
    server = start_server(env_extra, tmp)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY_BASE", "SENTINEL_ENV")
    }
    env.update(
        {
            **env_extra,
            "SENTINEL_DATA_DIR": str(server.data_dir),
            "SENTINEL_ADMIN_PASSWORD": PASSWORD,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    return server, env


@contextmanager
def production_stack(tmp: Path, database_url: str, redis_url: str) -> Iterator[Stack]:
    """Server first (it migrates the database), then two workers and the cron process."""
    redis.Redis.from_url(redis_url).flushdb()
    server, env = start_production_server(tmp, database_url, redis_url, "rollout-e2e-" + "k" * 40)
    logs = tmp / "logs"
    logs.mkdir()
    stack = Stack(server, env, redis_url, database_url, logs)
    try:
        stack.start_worker("e2e-a")
        stack.start_worker("e2e-b")
        stack.start_cron()
        yield stack
    finally:
        stack.stop()
        redis.Redis.from_url(redis_url).flushdb()


# --- the operator's side, over HTTP -------------------------------------------------------


@dataclass
class Operator:
    """The bootstrap admin's session on one project."""

    api: httpx.Client
    slug: str

    @property
    def base(self) -> str:
        return f"/api/v1/projects/{self.slug}"

    def registration_token(self) -> str:
        rotated = self.api.post(f"{self.base}/registration-token", json={})
        assert rotated.status_code == 201, rotated.text
        return str(rotated.json()["token"])

    def submit(self, config: str, version: str) -> str:
        """Submit a `sentinel.kdl`; a worker compiles it (`wait_compiled`)."""
        submitted = self.api.post(
            f"{self.base}/bundles", json={"version": version, "config_source": config}
        )
        assert submitted.status_code == 201, submitted.text
        return str(submitted.json()["id"])

    def wait_compiled(self, bundle_id: str) -> None:
        def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = self.api.get(f"{self.base}/bundles/{bundle_id}").json()
            return None if body["status"] in ("pending", "compiling") else body

        bundle = wait_for(finished, timeout=COMPILE_TIMEOUT_S, what=f"bundle {bundle_id}")
        assert bundle["status"] == "compiled", bundle

    def nodes(self, **filters: str) -> list[dict[str, Any]]:
        page = self.api.get(f"{self.base}/nodes", params={"limit": 500, **filters})
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    def wait_online(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = wait_for(
            lambda: len(found := self.nodes(status="online")) == count and found,
            timeout=timeout,
            what=f"{count} nodes of {self.slug} online",
        )
        return nodes

    def create_rollout(self, **body: Any) -> dict[str, Any]:
        created = self.api.post(f"{self.base}/rollouts", json=body)
        assert created.status_code == 201, created.text
        rollout: dict[str, Any] = created.json()
        return rollout

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        shown = self.api.get(f"{self.base}/rollouts/{rollout_id}")
        assert shown.status_code == 200, shown.text
        rollout: dict[str, Any] = shown.json()
        return rollout

    def wait_rollout(
        self, rollout_id: str, states: tuple[str, ...], timeout: float
    ) -> dict[str, Any]:
        """Poll until the rollout is in one of `states`: fail at once on another end state,
        and with `RolloutTimeout` (naming where it stands) when the deadline passes."""
        ends = {"completed", "failed", "cancelled", "paused"} - set(states)
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            body = last["body"] = self.rollout(rollout_id)
            assert body["state"] not in ends, f"rollout ended {body['state']}: {body['details']}"
            return body if body["state"] in states else None

        try:
            return dict(
                wait_for(reached, timeout=timeout, what="the rollout", tolerate_errors=False)
            )
        except AssertionError as exc:
            body = last.get("body")
            if body is None or body["state"] in ends:
                raise
            raise RolloutTimeout(
                f"rollout not {'/'.join(states)} after {timeout} s: {body['state']}, steps "
                f"{[s['state'] for s in body['steps']]}, progress {body['progress']}"
            ) from exc

    def audit(self, action: str, rollout_id: str) -> list[dict[str, Any]]:
        page = self.api.get(
            f"{self.base}/audit",
            params={"action": action, "resource": f"rollout:{rollout_id}", "limit": 500},
        )
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items


@contextmanager
def operator(server: Server, slug: str) -> Iterator[Operator]:
    """Log in as the bootstrap admin and create project `slug` for one test's fleet."""
    with httpx.Client(base_url=server.url, timeout=15) as api:
        login = api.post("/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD})
        assert login.status_code == 200, login.text
        # Production session cookies are `Secure`; this plain-http loopback client sends them
        # itself (a real deployment terminates TLS in front of the server).
        cookies = [c.split(";", 1)[0] for c in login.headers.get_list("set-cookie")]
        api.headers["Cookie"] = "; ".join(cookies)
        created = api.post("/api/v1/projects", json={"slug": slug, "name": slug})
        assert created.status_code == 201, created.text
        yield Operator(api, slug)


# --- simulated fleets ---------------------------------------------------------------------


@dataclass
class Fleet:
    process: subprocess.Popen[str]
    stderr: Path
    summary: dict[str, Any] | None = None

    def stop(self) -> dict[str, Any]:
        """SIGINT: the simulator stops and prints its JSON summary."""
        if self.summary is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
            output, _ = self.process.communicate(timeout=30)
            self.summary = json.loads(output) if output.strip() else {}
        return self.summary


@contextmanager
def simulated_fleet(
    server: Server, slug: str, token: str, nodes: int, prefix: str, tmp: Path, **knobs: object
) -> Iterator[Fleet]:
    """`sentinel-cp simulate` with 1 s heartbeats and instant activation unless overridden."""
    options: dict[str, object] = {"heartbeat_interval": 1, "apply_time": 0, **knobs}
    argv = cli_flags(
        url=server.url,
        project=slug,
        registration_token=token,
        nodes=nodes,
        name_prefix=prefix,
        **options,
    )
    stderr = tmp / f"simulate-{prefix}.stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [SENTINEL_CP, "simulate", *argv], stdout=subprocess.PIPE, stderr=err, text=True
        )
    fleet = Fleet(process, stderr)
    try:
        yield fleet
    finally:
        fleet.stop()
