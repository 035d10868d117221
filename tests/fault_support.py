"""Shared pieces of the fault tests: private services a test may break, the production process
layout on top of them, probes that keep calling the API through a fault, and the results table.

Every service here belongs to the test that started it — a `redis-server` on a free port, a
PostgreSQL cluster in a temporary directory, moto in this process — so breaking it never touches
the machine's shared PostgreSQL (5432) or Redis (6379). Nothing waits by sleeping: waits poll a
condition with a deadline (`conftest.wait_for`); `hold(s)` keeps a fault in place for its length.

Services (each a context manager; `start()`/`stop()` return the monotonic moment they took effect)
- `RedisProcess(workdir)`: `stop()`/`start()` (back empty), `freeze()`/`thaw()` (SIGSTOP/CONT).
- `PostgresCluster()`: `create_database(name) -> url`, `stop(mode="fast")`/`start()`.
- `RestartableS3()`: moto on a fixed port, `env(bucket)` for the server, `stop()`/`start()`.

The stack
- `fault_stack(tmp, database_url, redis_url, extra_env) -> FaultStack`: `python app.py` in
  production mode, Procfile worker(s) and `rq cron`, kept running by a `Supervisor` (restarts,
  with backoff, whatever exits; `stack.restarts_since(t)` lists them).

Watching and checking
- `Probes(base_url)`: `add(name, call, interval_s=...)` calls `call(httpx_client)` from a thread
  until closed; `probes[name].between(t0, t1)` are the `Answer`s (sent, at, status, retry_after,
  body), `first_ok_after(name, t, timeout=...)` the first 2xx/3xx to a call sent after `t`;
  `statuses(answers)` counts them. `probe.pause()`/`resume()` stop and restart the calls.
- `register_probe_node(url, slug, token, name) -> ProbeNode` (`heartbeat(http)`, `poll(http)`).
- `audit_verify(env, project)` runs `sentinel-cp audit verify`; `query(database_url, sql, ...)`
  reads the server's database; `fleet_heartbeats(stderr)` reads a simulator's counters.

    with RedisProcess(tmp) as redis_server, PostgresCluster() as cluster, RestartableS3() as s3:
        database_url = cluster.create_database("sentinel")
        with fault_stack(tmp, database_url, redis_server.url(), s3.env("a-bucket")) as stack:
            with Probes(stack.server.url) as probes:
                probes.add("ready", lambda http: http.get("/ready"))
                down = redis_server.stop()
                hold(10)
                back = redis_server.start()
                recovery_s = probes.first_ok_after("ready", back, timeout=60).at - back

Results: each fault test records a `FaultRow` (what broke, what was expected, what was observed,
the measured recovery times, what was lost) with `record_row(row, tmp)`: printed, written as
JSON into the test's directory and into the Markdown table `RESULTS_MD` (default
/tmp/reliability-rows-infra.md; `SENTINEL_FAULT_ROWS` overrides it), one row per fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from conftest import ROOT, free_port, wait_for
from rollout_e2e_helpers import Stack, start_production_server

from jobs import QUEUES

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
RESULTS_MD = Path(os.environ.get("SENTINEL_FAULT_ROWS", "/tmp/reliability-rows-infra.md"))
SENTINEL_CP = str(Path(sys.executable).parent / "sentinel-cp")


# --- Redis --------------------------------------------------------------------------------


class RedisProcess:
    """A private `redis-server` without persistence, on a port of its own.

    `stop()` ends the process (the port refuses connections); `start()` runs a fresh one on the
    same port — empty, as a Redis without persistence comes back after a crash or a restart.
    `freeze()`/`thaw()` SIGSTOP/SIGCONT it instead: connections hang rather than fail.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path(REDIS_SERVER).exists()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> float:
        """Start and wait for PING; returns the monotonic time it first answered."""
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            wait_for(client.ping, timeout=10, what=f"redis-server on port {self.port}")
        finally:
            client.close()
        return time.monotonic()

    def stop(self) -> float:
        """SIGTERM and wait; returns the monotonic time the port stopped answering."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
            self.process.terminate()
            self.process.wait(timeout=10)
        return time.monotonic()

    def freeze(self) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        return time.monotonic()

    def thaw(self) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        return time.monotonic()

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --- PostgreSQL ---------------------------------------------------------------------------


class PostgresCluster:
    """A private PostgreSQL 15 cluster in a temporary directory, run as the `postgres` OS user.

    `initdb` with trust authentication; `pg_ctl` starts it on a free port of 127.0.0.1 with its
    socket in the cluster directory. `stop()` is a fast shutdown (clients disconnected, a
    shutdown checkpoint written: what a restart for maintenance does); `start()` brings the same
    data back. `fsync=off` saves CI time and changes nothing here: only PostgreSQL restarts,
    never the machine, so everything it wrote is still in the OS.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sentinel-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()

    @staticmethod
    def available() -> bool:
        """initdb/pg_ctl are installed and we may run them as `postgres` (we are root)."""
        binaries = all((PG_BIN / name).exists() for name in ("initdb", "pg_ctl", "postgres"))
        return binaries and os.geteuid() == 0 and shutil.which("runuser") is not None

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(
                f"{Path(argv[0]).name} failed ({done.returncode}):\n{done.stderr}\n{log}"
            )

    def init(self) -> None:
        shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> float:
        """Start and wait until it accepts connections; returns that monotonic time."""
        options = f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            options,
            "start",
        )
        wait_for(self._accepts, timeout=30, what=f"PostgreSQL on port {self.port}")
        return time.monotonic()

    def stop(self, mode: str = "fast") -> float:
        """`pg_ctl stop -m mode`; returns the monotonic time it was down."""
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop"
            )
        return time.monotonic()

    def _accepts(self) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), connect_timeout=2):
            return True

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresCluster:
        self.init()
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- S3 -----------------------------------------------------------------------------------


class RestartableS3:
    """moto's S3 server in this process, on a fixed port, that can go away and come back.

    moto keeps buckets and objects in this process's memory, not in the server thread, so a
    `ThreadedMotoServer` stopped and started again on the same port serves the same data: "S3
    back" is the same store reachable again, as after a real outage. While stopped, its port
    refuses connections.
    """

    ACCESS_KEY_ID = "moto-test-key"
    SECRET_ACCESS_KEY = "moto-test-secret"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.running = False

    @staticmethod
    def available() -> bool:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        self.server.start()
        self.running = True
        return time.monotonic()

    def stop(self) -> float:
        self.server.stop()  # werkzeug closes the listening socket when serve_forever ends
        self.running = False
        return time.monotonic()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY_ID,
            aws_secret_access_key=self.SECRET_ACCESS_KEY,
        )

    def env(self, bucket: str) -> dict[str, str]:
        """The server's S3 settings for `bucket` (created here: production never creates it)."""
        self.client().create_bucket(Bucket=bucket)
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_BUCKET": bucket,
            "S3_ACCESS_KEY_ID": self.ACCESS_KEY_ID,
            "S3_SECRET_ACCESS_KEY": self.SECRET_ACCESS_KEY,
        }

    def __enter__(self) -> RestartableS3:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.running:
            self.stop()


# --- the production process layout -------------------------------------------------------


@dataclass
class FaultStack(Stack):
    """The stack, with the supervisor that restarts its worker and cron processes."""

    supervisor: Supervisor | None = None

    def restarts_since(self, moment: float) -> list[Restart]:
        return self.supervisor.since(moment) if self.supervisor is not None else []

    def stop(self) -> None:
        """The supervisor first; then SIGTERM to every process at once (the server's graceful
        shutdown overlaps the workers' warm one), and SIGKILL for what outlives 20 s."""
        if self.supervisor is not None:
            self.supervisor.stop()
        processes = [*self.workers.values(), *([self.cron] if self.cron else [])]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        if self.server.process.poll() is None:
            self.server.process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.server.stop()


@contextlib.contextmanager
def fault_stack(
    tmp: Path,
    database_url: str,
    redis_url: str,
    extra_env: dict[str, str] | None = None,
    *,
    workers: int = 1,
) -> Iterator[FaultStack]:
    """`python app.py` in production mode, `workers` Procfile workers and one `rq cron`, kept
    running by a `Supervisor`.

    The server migrates the database and creates the bootstrap admin (`admin@localhost`,
    `conftest.PASSWORD`) and the `default` project.
    """
    server, env = start_production_server(
        tmp, database_url, redis_url, "faults-" + "k" * 42, extra_env
    )
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    stack = FaultStack(server, env, redis_url, database_url, logs)
    try:
        for index in range(workers):
            stack.start_worker(f"faults-{index}")
        stack.start_cron()
        stack.supervisor = Supervisor(stack)
        stack.supervisor.start()
        yield stack
    finally:
        stack.stop()


@dataclass(frozen=True)
class Restart:
    process: str
    exit_code: int
    at: float  # monotonic


class Supervisor:
    """Starts the stack's worker and cron processes again when they exit, as the embedded
    server's `Children` and a Procfile platform do (RQ's worker and cron quit when they lose
    Redis). Like a real process manager it backs off while a process keeps dying at start
    (1, 2, 4 s), and records every restart. A restarted worker gets a new name: one that lost
    Redis may still be registered under the old one."""

    def __init__(self, stack: Stack, interval_s: float = 0.5, max_delay_s: float = 4.0) -> None:
        self.stack = stack
        self.interval_s = interval_s
        self.max_delay_s = max_delay_s
        self.restarts: list[Restart] = []
        self.started: dict[str, float] = {}  # process name → when it was last started
        self.delays: dict[str, float] = {}
        self.due: dict[str, float] = {}  # exited process → when to start it again
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        now = time.monotonic()
        self.started = {name: now for name in [*self.stack.workers, "cron"]}
        self.thread.start()

    def _exited(self, name: str, code: int) -> bool:
        """Record an exit once; True when the process is due to start again now."""
        now = time.monotonic()
        if name not in self.due:
            self.restarts.append(Restart(name, code, now))
            lived = now - self.started.get(name, now)
            delay = 1.0 if lived > 10 else min(self.delays.get(name, 0.5) * 2, self.max_delay_s)
            self.delays[name] = delay
            self.due[name] = now + delay
        if now < self.due[name]:
            return False
        del self.due[name]
        return True

    def _watch(self) -> None:
        while not self.stopping.wait(self.interval_s):
            for name, process in list(self.stack.workers.items()):
                code = process.poll()
                if code is None or not self._exited(name, code) or self.stopping.is_set():
                    continue
                renamed = f"{name.split('~')[0]}~{len(self.restarts)}"
                argv = ["worker", "--url", self.stack.redis_url, "--name", renamed, *QUEUES]
                self.stack.workers.pop(name)
                self.stack.workers[renamed] = self.stack._spawn(
                    argv, f"worker-{renamed}.log", "jobs.worker"
                )
                self.started[renamed] = time.monotonic()
                self.delays[renamed] = self.delays.pop(name, 0.5)
            cron = self.stack.cron
            code = cron.poll() if cron is not None else None
            if code is not None and self._exited("cron", code) and not self.stopping.is_set():
                self.stack.start_cron()
                self.started["cron"] = time.monotonic()

    def since(self, moment: float) -> list[Restart]:
        return [r for r in self.restarts if r.at >= moment]

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


# --- probes: the API called all through a fault -------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One probe call: when it was sent and answered (monotonic), what came back (`status`
    None: no answer at all)."""

    sent: float
    at: float
    status: int | None
    retry_after: str | None = None
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


Call = Callable[[httpx.Client], httpx.Response]


class Probe:
    """Calls `call` every `interval_s` from a thread of its own and keeps every answer."""

    def __init__(self, name: str, base_url: str, call: Call, interval_s: float) -> None:
        self.name = name
        self.call = call
        self.interval_s = interval_s
        self.http = httpx.Client(base_url=base_url, timeout=10, trust_env=False)
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.idle = threading.Event()  # set while no call is in flight
        self.idle.set()
        self.thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            if self.running.is_set():
                self.idle.clear()
                try:
                    answer = self._one()
                finally:
                    self.idle.set()
                with self.lock:
                    self.answers.append(answer)
            self.stopping.wait(self.interval_s)

    def _one(self) -> Answer:
        sent = time.monotonic()
        try:
            response = self.call(self.http)
        except httpx.HTTPError as exc:
            return Answer(sent, time.monotonic(), None, error=f"{type(exc).__name__}: {exc}")
        try:
            body = response.json()
        except ValueError:
            body = response.text[:200]
        retry_after = response.headers.get("Retry-After")
        return Answer(sent, time.monotonic(), response.status_code, retry_after, body)

    def pause(self) -> None:
        """Stop calling; returns once no call is in flight."""
        self.running.clear()
        self.idle.wait(15)

    def resume(self) -> None:
        self.running.set()

    def between(self, since: float, until: float | None = None) -> list[Answer]:
        """Calls sent at `since` or later and answered by `until`."""
        with self.lock:
            return [a for a in self.answers if a.sent >= since and (until is None or a.at <= until)]

    def last_ok(self) -> Answer | None:
        with self.lock:
            return next((a for a in reversed(self.answers) if a.ok), None)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=15)
        self.http.close()


class Probes:
    """Named probes against one server. `first_ok_after` measures recovery: the first good
    answer to a call *sent* after a moment (a call sent before it may be answered late)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.probes: dict[str, Probe] = {}

    def add(self, name: str, call: Call, *, interval_s: float = 0.25) -> Probe:
        self.probes[name] = probe = Probe(name, self.base_url, call, interval_s)
        return probe

    def __getitem__(self, name: str) -> Probe:
        return self.probes[name]

    def first_ok_after(self, name: str, since: float, *, timeout: float) -> Answer:
        probe = self.probes[name]

        def found() -> Answer | None:
            return next((a for a in probe.between(since) if a.ok), None)

        answer: Answer = wait_for(found, timeout=timeout, what=f"probe {name} to answer 2xx")
        return answer

    def close(self) -> None:
        for probe in self.probes.values():
            probe.close()

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def statuses(answers: list[Answer]) -> dict[str, int]:
    """`{"200": 12, "503": 3, "none": 1}`: how a probe was answered over a window."""
    counts: dict[str, int] = {}
    for answer in answers:
        key = str(answer.status) if answer.status is not None else "none"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- a node of the test's own --------------------------------------------------------------


@dataclass(frozen=True)
class ProbeNode:
    """A registered node whose heartbeats and polls the test sends itself (to see each answer)."""

    node_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Sentinel-Node-Key": self.key}

    def heartbeat(self, http: httpx.Client) -> httpx.Response:
        return http.post(
            f"/api/v1/nodes/{self.node_id}/heartbeat",
            json={"version": "probe-1", "health": {"status": "healthy"}},
            headers=self.headers,
        )

    def poll(self, http: httpx.Client) -> httpx.Response:
        return http.get(f"/api/v1/nodes/{self.node_id}/bundles/latest", headers=self.headers)


def register_probe_node(base_url: str, slug: str, token: str, name: str) -> ProbeNode:
    registered = httpx.post(
        f"{base_url}/api/v1/projects/{slug}/nodes/register",
        json={"name": name, "version": "probe-1"},
        headers={"X-Sentinel-Registration-Token": token},
        timeout=10,
    )
    assert registered.status_code == 201, registered.text
    body = registered.json()
    return ProbeNode(body["node_id"], body["node_key"])


# --- "nothing lost": the checks -----------------------------------------------------------


def audit_verify(env: dict[str, str], project: str | None = None) -> dict[str, Any]:
    """`sentinel-cp audit verify [--project slug]` against the server's database: the JSON
    verdict (`valid`, `checked`, `first_bad_id`, `reason`)."""
    argv = [SENTINEL_CP, "audit", "verify", *(["--project", project] if project else [])]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"audit verify printed no verdict:\n{done.stdout}\n{done.stderr}"
    verdict: dict[str, Any] = json.loads(lines[-1])
    verdict["exit_code"] = done.returncode
    return verdict


def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the server's database directly (autocommit: the latest committed state)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        return list(conn.execute(sql, params).fetchall())


# --- the results table --------------------------------------------------------------------


@dataclass
class FaultRow:
    """One line of the fault table in docs/reliability.md."""

    fault: str
    expected: str
    observed: str
    recovery_s: dict[str, float]
    lost: str
    command: str
    details: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        recovery = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in self.recovery_s.items())
        cells = (self.fault, self.expected, self.observed, recovery, self.lost)
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


TABLE_HEADER = (
    "| Fault | Expected behaviour | Observed | Recovery (measured) | Lost |\n|---|---|---|---|---|"
)


def record_row(row: FaultRow, tmp: Path, results_md: Path = RESULTS_MD) -> None:
    """Print the row, write it as JSON into the test's directory and (re)write it into the
    Markdown table, replacing an earlier row for the same fault."""
    print(f"\nFAULT {row.fault}: recovery {row.recovery_s}; lost: {row.lost}")
    (tmp / "fault-result.json").write_text(json.dumps(asdict(row), indent=2, default=str))
    rows: dict[str, str] = {}
    if results_md.exists():
        for line in results_md.read_text().splitlines():
            if line.startswith("| ") and not line.startswith("| Fault "):
                rows[line.split(" | ", 1)[0][2:]] = line
    rows[row.fault] = row.markdown()
    commands = sorted({row.command})
    results_md.write_text(
        "\n".join(
            [
                TABLE_HEADER,
                *rows.values(),
                "",
                *(f"Measured with: `{command}`" for command in commands),
                "",
            ]
        )
    )


def elapsed(since: float, until: float) -> float:
    return round(until - since, 2)


def hold(seconds: float) -> None:
    """Keep a fault in place for `seconds`. The fault's length is what the test is about (the
    issue asks for a 30 s Redis outage); nothing is being waited for."""
    threading.Event().wait(seconds)


PROGRESS = re.compile(r"heartbeats ok (\d+) failed (\d+)")


def fleet_heartbeats(stderr: Path) -> tuple[int, int]:
    """(answered, failed) heartbeats of a `sentinel-cp simulate` fleet so far, from its latest
    progress line (one a second on stderr)."""
    for line in reversed(stderr.read_text(errors="replace").splitlines()):
        found = PROGRESS.search(line)
        if found:
            return int(found.group(1)), int(found.group(2))
    return 0, 0
