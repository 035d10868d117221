"""How fast a rollout reaches a simulated fleet over real HTTP: all at once, and rolling.

Layout `api` (the default; the production processes of the Procfile): gunicorn as
bench/heartbeat.py runs it (`-w 2 -k gthread --threads 8`) on PostgreSQL (a database this bench
creates and drops) and Redis (`BENCH_PROPAGATION_REDIS_URL`, default db 13, which must be empty
at start and is flushed at the end), `BENCH_PROPAGATION_WORKERS` (2) separate processes running
the Procfile's `worker` command and one running its `cron` command (`rollouts.sweep` asks for a
tick of every running rollout every 2 s).
`BENCH_PROPAGATION_LAYOUTS=api,web` adds `web`: `python app.py`, the embedded system (SQLite,
the in-process Redis stand-in, one worker and one cron child).

The fleet: `sentinel-cp simulate` in a process of its own, N nodes (`BENCH_PROPAGATION_NODES`;
1,000, QUICK 100) on the agent's own client and apply flow (JWTs; poll → download → verify the
signature → unpack → report downloaded, staged, activated, verified), heartbeat interval
`BENCH_PROPAGATION_INTERVAL_S` (1 s), apply time 0. A node learns of its assignment from the
answer to its next heartbeat. Two bundles are submitted and compiled through the API first, and
the fleet registers and heartbeats before anything is measured.

Figures, in seconds from just before the create call; the rollout's state and its delivery
rows' states are read from the database every 0.1 s (0.5 s above 2,000 nodes), so a time is
late by at most that much. (Until session 6 the bench polled `GET …/rollouts/{id}`, whose
answer lists every node: ~15 s of the measured server's time per 1,000-node run.) Progress
here is delivery rows in state `verified` (every simulated node reports it); the API's
`progress.verified` also counts a node whose heartbeat shows the bundle active:

- `rollout_all_at_once_s_<layout>`: `all_at_once`, `bake_s` 0, to 100 % verified
  (`progress.verified == total`); also to 50 %, 90 % and to the rollout's `completed` (which
  also needs, per node, a heartbeat newer than its activation — the default health gate — and
  a tick after it).
- `rollout_rolling_10_steps_s_<layout>`: `rolling`, `batch_percent` 10, `bake_s` 0, of the same
  fleet to the second bundle, to `completed`; per step from the rollout's own timestamps.

The bench gives up on a rollout after `bench_limit_s` (QUICK: 45 s and the rolling target,
60 s; full: 60 + 0.12 N and 120 + 0.3 N), cancels it and reports `value` null with how far it
got (`final_progress`, `steps_completed`).

Baseline, same run, same fleet, before the rollouts: the heartbeat round, seconds from an
instant t0 until every node has a `last_heartbeat_at` ≥ t0 (from the database, median of
`ROUNDS`). A node learns of an assignment only from a heartbeat answer, so no rollout reaches
every node faster than one round. It equals the interval while the server keeps up with the
fleet's heartbeats; longer means it does not. The ratio is figure / baseline (rounds taken).

`profile` says where the time went: per node, assignment (delivery row created) → first report
(`node.bundle_downloaded` audit row) → `verified_at`; per rolling step, start → last node
verified → step done → next step; the tick jobs (their RQ record sampled every `SAMPLE_S`: a
job id is reused, so `ticks_seen` is a lower bound) and every job that finished during the span
by function (seconds waiting in the queue, seconds running); the workers' own counters (jobs
run, seconds busy); the server's PostgreSQL connections every `DB_SAMPLE_S` (running, waiting
for a lock and on which statement, idle in a transaction the application holds); rows written
per table (PostgreSQL's counters, rolled-back writes included, published by backends with some
delay: approximate); CPU seconds per process group of ours,
the machine's busy share and what was not ours (PostgreSQL and Redis serving us, and anything
else running on the machine); the simulator's heartbeat latencies; and one tick's read and
decision (`engine.build_view` + `decide`) timed in this process.

`BENCH_PROPAGATION_WORKER_CLASS` (e.g. `rq.worker.SimpleWorker`: no fork per job) is an
experiment knob, not the Procfile. `BENCH_PROPAGATION_ROLLOUTS=all_at_once` measures only that
rollout and `BENCH_PROPAGATION_LIMIT_S` replaces both time limits (the 10,000-node run:
`BENCH_PROPAGATION_NODES=10000 BENCH_PROPAGATION_INTERVAL_S=30`). `code` names the commit
measured (`+dirty`: with
uncommitted changes). Nothing here is asserted; the targets (10 s, 60 s) are reported next to
the values.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.heartbeat import (  # noqa: E402
    API_WORKER_ARGS,
    PASSWORD,
    POSTGRES_ADMIN_URL,
    _balanced,
    _base_env,
    _free_port,
    _registration_token,
    _wait_ready,
    _worker_cpu_s,
)
from bench.validate import generate_config  # noqa: E402

REDIS_URL = os.environ.get("BENCH_PROPAGATION_REDIS_URL", "redis://127.0.0.1:6379/13")
HEARTBEAT_INTERVAL_S = float(os.environ.get("BENCH_PROPAGATION_INTERVAL_S", "1"))
RQ_WORKERS = int(os.environ.get("BENCH_PROPAGATION_WORKERS", "2"))
# An experiment, not the Procfile: e.g. `rq.worker.SimpleWorker` runs jobs in the worker
# process itself instead of forking a work horse per job.
WORKER_CLASS = os.environ.get("BENCH_PROPAGATION_WORKER_CLASS")
# Which rollouts to run (`all_at_once,rolling`), and a time limit overriding `_limits` for both:
# a 10,000-node run measures the all-at-once rollout only, within what the session can spend.
ROLLOUTS = os.environ.get("BENCH_PROPAGATION_ROLLOUTS", "all_at_once,rolling").split(",")
LIMIT_S = (
    float(os.environ["BENCH_PROPAGATION_LIMIT_S"])
    if os.environ.get("BENCH_PROPAGATION_LIMIT_S")
    else None
)
QUICK_NODES, FULL_NODES = 100, 1000
SAMPLE_S = 0.05
DB_SAMPLE_S = 0.25
ROUNDS = 3
ALL_AT_ONCE_TARGET_S = 10.0
ROLLING_TARGET_S = 60.0
BASE = "/api/v1/projects/default"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _log(message: str) -> None:
    print(f"[propagation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGTERM the child when this process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class Group:
    """A child process started in its own session (so its forks are stopped with it)."""

    name: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def _spawn(name: str, command: list[str], env: dict[str, str], log: Path) -> Group:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Group(name, process)


def _session_pids(session: int) -> list[int]:
    """Every process of session `session` (a group we started, and what it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # fields after ")" start at state: sid is the 4th
                pids.append(int(entry))
    return pids


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, children waited for included) of `pids`."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def _all_processes() -> dict[int, tuple[str, int, float]]:
    """pid → (command name, session id, its own CPU seconds, children not included: a shell
    reaping a child would otherwise count CPU spent before the span)."""
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                cpu = sum(int(v) for v in fields[11:13]) / CLK_TCK
                result[int(entry)] = (name, int(fields[3]), cpu)
    return result


class CpuMeter:
    """CPU seconds of each of our process groups, and the machine's busy share, over a span.

    Process sets are re-read at the end too: a group's short-lived forks (RQ work horses) are
    counted when their parent waits for them (cutime/cstime of the parent)."""

    def __init__(self, sessions: dict[str, int]) -> None:
        self.sessions = sessions
        self.start: dict[str, float] = {}
        self.machine: tuple[float, float] = (0.0, 0.0)
        self.started_at = 0.0
        self.result: dict[str, Any] = {}
        self.everyone: dict[int, tuple[str, int, float]] = {}

    def _read(self) -> dict[str, float]:
        return {name: _cpu_s(_session_pids(sid)) for name, sid in self.sessions.items()}

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        self.everyone = _all_processes()
        self.machine = _machine_busy()
        self.started_at = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = self.stop()

    def stop(self) -> dict[str, Any]:
        end = self._read()
        busy, total = _machine_busy()
        ours = set(self.sessions.values())
        others: dict[str, float] = {}
        for pid, (name, session, cpu) in _all_processes().items():
            if session not in ours:
                before = self.everyone.get(pid)
                spent = cpu - before[2] if before and before[0] == name else cpu
                others[name] = others.get(name, 0.0) + max(spent, 0.0)
        top = sorted(others.items(), key=lambda item: -item[1])[:5]
        return {
            "wall_s": round(time.monotonic() - self.started_at, 2),
            "cpu_s": {name: round(end[name] - self.start.get(name, 0.0), 2) for name in end},
            "machine_busy_share": round(
                (busy - self.machine[0]) / max(total - self.machine[1], 1.0), 3
            ),
            "machine_busy_cpu_s": round((busy - self.machine[0]) / CLK_TCK, 1),
            "not_ours_cpu_s": round(
                (busy - self.machine[0]) / CLK_TCK
                - sum(end[name] - self.start.get(name, 0.0) for name in end),
                1,
            ),
            "not_ours_top": {name: round(cpu, 1) for name, cpu in top if cpu >= 0.1},
            "cpus": os.cpu_count(),
        }


# --- the servers ----------------------------------------------------------------------------


@dataclass
class Server:
    layout: str
    url: str
    database_url: str
    redis_url: str | None
    sessions: dict[str, int]  # process group name → session id (for CPU accounting)
    data_dir: Path
    notes: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _owned_redis() -> Iterator[str]:
    """REDIS_URL's database, which must be empty (we never flush what we did not write)."""
    import redis

    connection = redis.Redis.from_url(REDIS_URL)
    if connection.dbsize():
        raise RuntimeError(
            f"{REDIS_URL} is not empty; set BENCH_PROPAGATION_REDIS_URL to an unused database"
        )
    try:
        yield REDIS_URL
    finally:
        connection.flushdb()
        connection.close()


@contextlib.contextmanager
def _owned_database() -> Iterator[str]:
    import psycopg

    name = f"sentinel_prop_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _procfile_command(process: str, redis_url: str) -> list[str]:
    """The Procfile's command for `process` (`worker`, `cron`), with this venv's executables
    and `$REDIS_URL` filled in, so the bench runs what production runs."""
    bin_dir = Path(sys.executable).parent
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            words = shlex.split(command.replace("$REDIS_URL", redis_url))
            if words[0] == "python":
                words[0] = sys.executable
            elif (bin_dir / words[0]).exists():
                words[0] = str(bin_dir / words[0])
            return words
    raise RuntimeError(f"no {process!r} process in the Procfile")


@contextlib.contextmanager
def api_layout(tmp: Path) -> Iterator[Server]:
    """gunicorn + RQ_WORKERS workers + one cron (the Procfile's commands), on our own
    PostgreSQL database and Redis database."""
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(_owned_database())
        redis_url = stack.enter_context(_owned_redis())
        port = _free_port()
        env = _base_env(tmp / "data", port)
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
        bin_dir = Path(sys.executable).parent
        log = tmp / "api.log"
        with log.open("ab") as out:
            for command in (
                [str(bin_dir / "flask"), "--app", "app", "db", "upgrade"],
                [sys.executable, "-m", "sentinel_cp.cli", "setup"],
            ):
                subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=out, stderr=out)
        groups: dict[str, Group] = {}
        stack.callback(lambda: [group.stop() for group in reversed(groups.values())])
        groups["api"] = _spawn(
            "api",
            [
                str(bin_dir / "gunicorn"),
                *API_WORKER_ARGS,
                "-b",
                f"127.0.0.1:{port}",
                "app:create_app()",
            ],
            env,
            log,
        )
        worker, cron = _procfile_command("worker", redis_url), _procfile_command("cron", redis_url)
        if WORKER_CLASS:
            at = worker.index("worker") + 1  # `… worker --worker-class X --url …`
            worker[at:at] = ["--worker-class", WORKER_CLASS]
        for i in range(RQ_WORKERS):
            groups[f"worker{i + 1}"] = _spawn(
                f"worker{i + 1}", worker, env, tmp / f"worker{i + 1}.log"
            )
        groups["cron"] = _spawn("cron", cron, env, tmp / "cron.log")
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, groups["api"].process)
        yield Server(
            "api",
            url,
            database_url,
            redis_url,
            {name: group.process.pid for name, group in groups.items()},
            tmp / "data",
            {
                "server": f"gunicorn {' '.join(API_WORKER_ARGS)} 'app:create_app()'",
                "database": "PostgreSQL",
                "rq_workers": RQ_WORKERS,
                "worker_command": " ".join(worker[1:]).replace(redis_url, "$REDIS_URL"),
                "rq_worker_class": WORKER_CLASS or "RQ's default (a forked work horse per job)",
                "cron_command": " ".join(cron[1:]).replace(redis_url, "$REDIS_URL"),
            },
        )


def _embedded_redis_url(server_pid: int) -> str | None:
    """The embedded Redis URL, from the command line of the server's own rq worker child."""
    for pid in _session_pids_any_child(server_pid):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"worker" in args and b"--url" in args:
                return args[args.index(b"--url") + 1].decode()
    return None


def _session_pids_any_child(parent: int) -> list[int]:
    """Direct children of `parent` (the embedded children run in sessions of their own)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def web_layout(tmp: Path) -> Iterator[Server]:
    """`python app.py`: SQLite, the in-process Redis stand-in, one worker and cron children."""
    port = _free_port()
    env = _base_env(tmp / "data", port)
    group = _spawn("web", [sys.executable, "app.py"], env, tmp / "web.log")
    sessions = {"web": group.process.pid}
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, group.process)
        # The embedded children run in sessions of their own: measure them as groups too.
        for pid in _session_pids_any_child(group.process.pid):
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                name = "worker1" if b"worker" in args else "cron" if b"cron" in args else None
                if name is not None:
                    sessions[name] = pid
        database_url = f"sqlite:///{(tmp / 'data' / 'sentinel.db').resolve()}"
        yield Server(
            "web",
            url,
            database_url,
            _embedded_redis_url(group.process.pid),
            sessions,
            tmp / "data",
            {
                "server": "python app.py (uvicorn, one process)",
                "database": "SQLite",
                "rq_workers": 1,
                "worker_command": "app.py's own worker and cron children (sentinel_cp/server.py)",
            },
        )
    finally:
        group.stop()  # the server stops its children itself


LAYOUTS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Server]]] = {
    "api": api_layout,
    "web": web_layout,
}


# --- reading the database directly ------------------------------------------------------------


class Database:
    """Read-only queries on the server's database (the bench's own view; never writes)."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine

        from sentinel_cp.config import load_settings

        url = load_settings({"DATABASE_URL": database_url}).database_url
        if url.startswith("sqlite"):
            self.engine = create_engine(url, connect_args={"timeout": 30})
        else:
            self.engine = create_engine(url, pool_size=2)

    def close(self) -> None:
        self.engine.dispose()

    def table_counters(self) -> dict[str, tuple[int, int]] | None:
        """PostgreSQL's rows inserted and updated per table (None on SQLite). Updates in
        rolled-back transactions count too: `rollouts` updates are tick iterations (each
        starts by writing the rollout row) plus operator writes."""
        from sqlalchemy import text

        if self.engine.dialect.name != "postgresql":
            return None
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            rows = conn.execute(
                text("SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables")
            ).all()
        return {r.relname: (int(r.n_tup_ins), int(r.n_tup_upd)) for r in rows}

    def activity(self) -> list[tuple[str, str]] | None:
        """What each other connection to this database is doing now (PostgreSQL only):
        (`active` | `idle in transaction` | wait event, the statement's first words)."""
        from sqlalchemy import text

        if self.engine.dialect.name != "postgresql":
            return None
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT state, wait_event_type, wait_event, left(query, 48) AS query "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
            ).all()
        result = []
        for row in rows:
            if row.wait_event_type == "Lock":
                kind = f"waiting for a lock ({row.wait_event})"
            elif row.state == "active":
                kind = "running"
            else:
                kind = str(row.state)  # idle in transaction: the application holds it open
            result.append((kind, " ".join(str(row.query).split())))
        return result

    def progress(self, rollout_id: str) -> tuple[str, int]:
        """(rollout state, deliveries verified) of one rollout."""
        from sqlalchemy import func, select

        from sentinel_cp.bundles.models import NodeBundleStatus
        from sentinel_cp.rollouts.models import Rollout

        rows = NodeBundleStatus.__table__
        rid = uuid.UUID(rollout_id)
        with self.engine.connect() as conn:
            state = conn.scalar(
                select(Rollout.__table__.c.state).where(Rollout.__table__.c.id == rid)
            )
            verified = conn.scalar(
                select(func.count()).where(rows.c.rollout_id == rid, rows.c.state == "verified")
            )
        return str(state), int(verified or 0)

    def heartbeats_since(self, prefix: str, since: datetime) -> int:
        from sqlalchemy import func, select

        from sentinel_cp.nodes import Node

        nodes = Node.__table__
        with self.engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(nodes)
                    .where(
                        nodes.c.name.like(f"{prefix}-%"),
                        nodes.c.status == "online",
                        nodes.c.last_heartbeat_at >= since,
                    )
                )
                or 0
            )

    def phases(self, rollout_id: str) -> list[dict[str, Any]]:
        """Per node of the rollout: assigned (delivery row created), first report
        (`node.bundle_downloaded`), activated, verified; and its step."""
        from sqlalchemy import select

        from sentinel_cp.audit import AuditLog
        from sentinel_cp.bundles.models import NodeBundleStatus

        rows = NodeBundleStatus.__table__
        audit = AuditLog.__table__
        rid = uuid.UUID(rollout_id)
        with self.engine.connect() as conn:
            deliveries = conn.execute(
                select(
                    rows.c.node_id,
                    rows.c.step_index,
                    rows.c.state,
                    rows.c.created_at,
                    rows.c.activated_at,
                    rows.c.verified_at,
                ).where(rows.c.rollout_id == rid)
            ).all()
            reports = conn.execute(
                select(audit.c.resource_id, audit.c.created_at, audit.c["metadata"]).where(
                    audit.c.action == "node.bundle_downloaded"
                )
            ).all()
        first = {
            str(r.resource_id): r.created_at
            for r in reports
            if (r[2] or {}).get("rollout_id") == rollout_id
        }
        return [
            {
                "node_id": str(d.node_id),
                "step": d.step_index,
                "state": d.state,
                "assigned": d.created_at,
                "first_report": first.get(str(d.node_id)),
                "activated": d.activated_at,
                "verified": d.verified_at,
            }
            for d in deliveries
        ]


def _tick_read_cost(server: Server, rollout_id: str) -> dict[str, Any]:
    """Median seconds of one tick's read and decision (`build_view` + `decide`) over the
    rollout's nodes, in this process, in a transaction rolled back (nothing is written), with
    the server's own settings (its data directory holds the secret already)."""
    from app import create_app
    from sentinel_cp.config import load_settings
    from sentinel_cp.db import db, utcnow
    from sentinel_cp.rollouts import engine
    from sentinel_cp.rollouts.decide import decide
    from sentinel_cp.rollouts.models import Rollout

    env = {"DATABASE_URL": server.database_url, "SENTINEL_DATA_DIR": str(server.data_dir)}
    if server.redis_url:
        env["REDIS_URL"] = server.redis_url
    app = create_app(settings=load_settings(env))
    samples, count = [], 0
    with app.app_context():
        try:
            for _ in range(5):
                started = time.perf_counter()
                rollout = db.session.get(Rollout, uuid.UUID(rollout_id), populate_existing=True)
                assert rollout is not None
                steps = engine._steps(rollout.id)
                view = engine.build_view(rollout, steps, utcnow())
                decide(view, utcnow())
                samples.append(time.perf_counter() - started)
                count = sum(len(step.nodes) for step in view.steps)
                db.session.rollback()
        finally:
            db.session.remove()
            db.engine.dispose()
    return {
        "build_view_and_decide_s": round(statistics.median(samples), 4),
        "nodes": count,
        "what": "one tick iteration's read + decision, this process, median of 5",
    }


# --- sampling RQ while a rollout runs --------------------------------------------------------


class TickSampler:
    """Samples the rollout's tick jobs (`tick-<id>` and its follow-up `tick-<id>-again`) and the
    queue lengths every SAMPLE_S, and reads the workers' own counters at start and end."""

    def __init__(
        self, redis_url: str | None, db: Database | None = None, rollout_id: str | None = None
    ) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.db = db
        self.db_samples = 0
        self.db_states: dict[str, int] = {}
        self.lock_waits: dict[str, int] = {}
        self.rollout_id = rollout_id
        self.runs: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self.queued_max: dict[str, int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tick-sampler", daemon=True)
        self.workers_start: dict[str, tuple[int, float]] = {}
        self.started_at = datetime.now(UTC)
        self.db_thread: threading.Thread | None = None

    def _workers(self) -> dict[str, tuple[int, float]]:
        assert self.redis is not None
        result = {}
        for key in self.redis.smembers("rq:workers"):
            done, busy = self.redis.hmget(key, "successful_job_count", "total_working_time")
            result[key.decode()] = (int(done or 0), float(busy or 0.0))
        return result

    def watch(self, rollout_id: str) -> None:
        self.rollout_id = rollout_id

    def start(self) -> None:
        self.started_at = datetime.now(UTC)
        if self.db is not None:
            self.db_thread = threading.Thread(target=self._db_loop, name="db-sampler", daemon=True)
            self.db_thread.start()
        if self.redis is None:
            return
        self.workers_start = self._workers()
        self.thread.start()

    def _db_loop(self) -> None:
        """PostgreSQL connections of the server, every DB_SAMPLE_S: how many run, wait for a
        lock (and on which statement), or sit idle in a transaction the application holds."""
        assert self.db is not None
        while not self.stopping.wait(DB_SAMPLE_S):
            with contextlib.suppress(Exception):
                activity = self.db.activity()
                if activity is None:
                    return
                self.db_samples += 1
                for kind, query in activity:
                    self.db_states[kind] = self.db_states.get(kind, 0) + 1
                    if kind.startswith("waiting for a lock"):
                        self.lock_waits[query] = self.lock_waits.get(query, 0) + 1

    def _db_summary(self) -> dict[str, Any] | None:
        if not self.db_samples:
            return None
        per_sample = 1 / self.db_samples
        top = sorted(self.lock_waits.items(), key=lambda item: -item[1])[:3]
        return {
            "samples": self.db_samples,
            "mean_connections": {
                kind: round(count * per_sample, 2) for kind, count in sorted(self.db_states.items())
            },
            "mean_lock_waiters_by_statement": {
                query: round(count * per_sample, 2) for query, count in top
            },
        }

    def _loop(self) -> None:
        assert self.redis is not None
        while not self.stopping.wait(SAMPLE_S):
            with contextlib.suppress(Exception):
                if self.rollout_id is not None:
                    for job_id in (f"tick-{self.rollout_id}", f"tick-{self.rollout_id}-again"):
                        enqueued, started, ended = self.redis.hmget(
                            f"rq:job:{job_id}", "enqueued_at", "started_at", "ended_at"
                        )
                        if enqueued:
                            self.runs[(job_id, enqueued.decode())] = (
                                started.decode() if started else None,
                                ended.decode() if ended else None,
                            )
                for queue in ("default", "maintenance"):
                    length = int(self.redis.llen(f"rq:queue:{queue}"))
                    self.queued_max[queue] = max(self.queued_max.get(queue, 0), length)

    def stop(self, wall_s: float) -> dict[str, Any]:
        self.stopping.set()
        if self.db_thread is not None:
            self.db_thread.join(timeout=5)
        if self.redis is None:
            return {"available": False, "database": self._db_summary()}
        self.thread.join(timeout=5)
        end = self._workers()
        done = sum(end[k][0] - self.workers_start.get(k, (0, 0.0))[0] for k in end)
        busy = sum(end[k][1] - self.workers_start.get(k, (0, 0.0))[1] for k in end)
        waits, durations = [], []
        for (_, enqueued), (started, ended) in self.runs.items():
            if started and _parse(started) >= _parse(enqueued):
                waits.append((_parse(started) - _parse(enqueued)).total_seconds())
                if ended and _parse(ended) >= _parse(started):
                    durations.append((_parse(ended) - _parse(started)).total_seconds())
        jobs = self._finished_jobs()
        self.redis.close()
        return {
            "database": self._db_summary(),
            "jobs_finished_by_function": jobs,
            "ticks_seen": len(durations),
            "tick_run_s": _summary(durations),
            "tick_wait_in_queue_s": _summary(waits),
            "queued_max": self.queued_max,
            "worker_jobs_run": done,
            "worker_busy_s": round(busy, 2),
            "worker_busy_share": round(busy / (wall_s * max(len(end), 1)), 3) if wall_s else None,
            "workers": len(end),
        }

    def _finished_jobs(self) -> dict[str, Any]:
        """Jobs that finished during the span, by function: how many, seconds waiting in the
        queue and running (a reused job id keeps only its latest run)."""
        assert self.redis is not None
        waits: dict[str, list[float]] = {}
        runs: dict[str, list[float]] = {}
        for queue in ("compile", "default", "maintenance"):
            for job_id in self.redis.zrange(f"rq:finished:{queue}", 0, -1):
                fields = self.redis.hmget(
                    f"rq:job:{job_id.decode()}",
                    "description",
                    "enqueued_at",
                    "started_at",
                    "ended_at",
                )
                if not all(fields):
                    continue
                description, enqueued, started, ended = (bytes(f or b"").decode() for f in fields)
                if _parse(ended) < self.started_at:
                    continue
                name = description.split("(", 1)[0].rsplit(".", 1)[-1]
                if _parse(ended) < _parse(started) or _parse(started) < _parse(enqueued):
                    continue  # a reused job id, read between two runs
                waits.setdefault(name, []).append(
                    (_parse(started) - _parse(enqueued)).total_seconds()
                )
                runs.setdefault(name, []).append((_parse(ended) - _parse(started)).total_seconds())
        return {
            name: {"wait_s": _summary(waits[name]), "run_s": _summary(runs[name])}
            for name in sorted(runs)
        }


ROW_TABLES = (
    "rollouts",
    "rollout_steps",
    "node_bundle_statuses",
    "nodes",
    "node_heartbeats",
    "audit_logs",
)


def _counter_delta(
    before: dict[str, tuple[int, int]] | None, after: dict[str, tuple[int, int]] | None
) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    result: dict[str, Any] = {
        table: {
            "inserted": after[table][0] - before.get(table, (0, 0))[0],
            "updated": after[table][1] - before.get(table, (0, 0))[1],
        }
        for table in ROW_TABLES
        if table in after
    }
    result["note"] = (
        "rows written during the span (PostgreSQL counters, rolled-back writes included): "
        "`rollouts.updated` ≈ tick iterations (each locks the rollout by updating its row); "
        "`rollout_steps.updated` ≈ applied step actions, mostly RecordGates while baking"
    )
    return result


def _parse(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "n": len(values),
        "p50": at(0.5),
        "p90": at(0.9),
        "max": round(ordered[-1], 3),
        "sum": round(sum(values), 2),
    }


# --- the run --------------------------------------------------------------------------------


def _login(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    response = client.post(
        "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
    )
    response.raise_for_status()
    return client


def _compiled_bundles(client: httpx.Client, count: int, timeout: float = 120) -> list[str]:
    ids = []
    for i in range(count):
        response = client.post(
            f"{BASE}/bundles",
            json={"version": f"prop-{i}", "config_source": f"{generate_config(10)}// v{i}\n"},
        )
        response.raise_for_status()
        ids.append(str(response.json()["id"]))
    deadline = time.monotonic() + timeout
    for bundle_id in ids:
        while True:
            status = client.get(f"{BASE}/bundles/{bundle_id}").json()["status"]
            if status == "compiled":
                break
            if status not in ("pending", "compiling") or time.monotonic() > deadline:
                raise RuntimeError(f"bundle {bundle_id} is {status}")
            time.sleep(0.2)
    return ids


def _start_simulator(server: Server, token: str, nodes: int, prefix: str, tmp: Path) -> Group:
    command = [
        str(Path(sys.executable).parent / "sentinel-cp"),
        "simulate",
        "--url",
        server.url,
        "--project",
        "default",
        "--registration-token",
        token,
        "--nodes",
        str(nodes),
        "--heartbeat-interval",
        str(HEARTBEAT_INTERVAL_S),
        "--apply-time",
        "0",
        "--name-prefix",
        prefix,
        "--seed",
        "7",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = (tmp / "simulator.out").open("wb")
    err = (tmp / "simulator.err").open("wb")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=err,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    out.close()
    err.close()
    return Group("simulator", process)


def _wait_all_heartbeating(
    db: Database, simulator: Group, prefix: str, nodes: int, timeout: float
) -> float:
    """Seconds until every simulated node is online with at least one heartbeat."""
    started = time.monotonic()
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    while db.heartbeats_since(prefix, epoch) < nodes:
        if simulator.process.poll() is not None:
            raise RuntimeError(f"the simulator exited with {simulator.process.returncode}")
        if time.monotonic() - started > timeout:
            seen = db.heartbeats_since(prefix, epoch)
            raise RuntimeError(f"only {seen}/{nodes} nodes heartbeating after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started


def _heartbeat_round(db: Database, prefix: str, nodes: int, timeout: float) -> float | None:
    """Seconds from now until every node has a heartbeat at or after now (None: timeout)."""
    since = datetime.now(UTC)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if db.heartbeats_since(prefix, since) >= nodes:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@dataclass
class Timeline:
    """Seconds after the create call at which each progress share was first seen."""

    created_s: float = 0.0
    first_seen: dict[str, float] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    poll_ms: list[float] = field(default_factory=list)


def _follow(
    client: httpx.Client,
    db: Database,
    request: dict[str, Any],
    timeout: float,
    every: float,
    on_created: Callable[[str], None],
    nodes: int,
) -> tuple[str, Timeline]:
    """Create the rollout over `nodes` nodes, then follow it in the database until it is
    terminal (or `timeout`); the API's answer is read once at the end (`timeline.body`)."""
    timeline = Timeline()
    started = time.monotonic()
    response = client.post(f"{BASE}/rollouts", json=request)
    response.raise_for_status()
    timeline.created_s = time.monotonic() - started
    rollout_id = str(response.json()["id"])
    on_created(rollout_id)
    while True:
        now = time.monotonic() - started
        asked = time.perf_counter()
        state, verified = db.progress(rollout_id)
        timeline.poll_ms.append((time.perf_counter() - asked) * 1000)
        share = verified / max(nodes, 1)  # a rolling step's rows appear when it starts
        for mark in (0.5, 0.9, 1.0):
            if share >= mark:
                timeline.first_seen.setdefault(f"{round(mark * 100)}%", now)
        if state not in ("pending", "running") or now > timeout:
            timeline.first_seen.setdefault(state, now)
            timeline.body = client.get(f"{BASE}/rollouts/{rollout_id}").json()
            return rollout_id, timeline
        time.sleep(max(0.0, every - (time.monotonic() - started - now)))


def _node_phases(phases: list[dict[str, Any]]) -> dict[str, Any]:
    def spans(a: str, b: str) -> list[float]:
        return [(p[b] - p[a]).total_seconds() for p in phases if p[a] and p[b]]

    return {
        "assigned_to_first_report_s": _summary(spans("assigned", "first_report")),
        "first_report_to_verified_s": _summary(spans("first_report", "verified")),
        "assigned_to_verified_s": _summary(spans("assigned", "verified")),
        "note": (
            "first report = the node's `downloaded` report: its next heartbeat answer named "
            "the bundle, then poll + download + signature check + unpack; then staged, "
            "activated, verified reports"
        ),
    }


def _rolling_steps(body: dict[str, Any], phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: start → last node verified → step finished → next step started (seconds)."""
    verified_by_step: dict[int, datetime] = {}
    for p in phases:
        if p["verified"] is not None:
            step = int(p["step"])
            verified_by_step[step] = max(verified_by_step.get(step, p["verified"]), p["verified"])
    steps = body.get("steps", [])
    result = []
    for i, step in enumerate(steps):
        start = _parse(step["started_at"]) if step.get("started_at") else None
        end = _parse(step["finished_at"]) if step.get("finished_at") else None
        last = verified_by_step.get(step["index"])
        following = steps[i + 1] if i + 1 < len(steps) else None
        next_start = (
            _parse(following["started_at"]) if following and following.get("started_at") else None
        )
        finished_at = _parse(body["finished_at"]) if body.get("finished_at") else None
        after = next_start or finished_at

        def gap(a: datetime | None, b: datetime | None) -> float | None:
            return round((b - a).total_seconds(), 2) if a and b else None

        result.append(
            {
                "index": step["index"],
                "nodes": len(step["nodes"]),
                "state": step["state"],
                "start_to_all_verified_s": gap(start, last),
                "all_verified_to_step_done_s": gap(last, end),
                "step_done_to_next_s": gap(end, after),
                "total_s": gap(start, end),
            }
        )
    return result


def _simulator_summary(simulator: Group, tmp: Path) -> dict[str, Any]:
    simulator.stop(timeout=30)
    text = (tmp / "simulator.out").read_text()
    start = text.find("{")
    try:
        summary = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        summary = {}
    keep = (
        "registered",
        "registration_failed",
        "heartbeats_ok",
        "heartbeats_failed",
        "errors",
        "bundles_applied",
        "bundles_failed",
        "bundle_failures",
        "duration_s",
        "heartbeats_per_s",
        "latency_ms",
    )
    return {k: summary.get(k) for k in keep}


def _limits(nodes: int, quick: bool) -> tuple[float, float]:
    """Seconds the all-at-once and the rolling rollout may take before the bench gives up
    (and cancels it). QUICK stops the rolling one at its target: past it, it missed anyway."""
    if LIMIT_S is not None:
        return LIMIT_S, LIMIT_S
    if quick:
        return 45.0, ROLLING_TARGET_S
    return 60 + nodes * 0.12, 120 + nodes * 0.3


def _poll_every(nodes: int) -> float:
    """How often the rollout's progress is read from the database (one aggregate over its
    delivery rows: nothing the server being measured has to answer)."""
    return 0.1 if nodes <= 2000 else 0.5


def measure(layout: str, nodes: int, *, quick: bool) -> dict[str, Any]:
    """Both rollouts on one fresh server of `layout`; returns the figures."""
    once_limit, rolling_limit = _limits(nodes, quick)
    with (
        tempfile.TemporaryDirectory(prefix=f"sentinel-bench-prop-{layout}-") as tmp_name,
        LAYOUTS[layout](Path(tmp_name)) as server,
    ):
        tmp = Path(tmp_name)
        _log(f"{layout}: server ready at {server.url}")
        client = _login(server.url)
        db = Database(server.database_url)
        simulator: Group | None = None
        try:
            first_bundle, second_bundle = _compiled_bundles(client, 2)
            _log(f"{layout}: two bundles compiled")
            token = _registration_token(server.url)
            prefix = f"prop-{uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            simulator = _start_simulator(server, token, nodes, prefix, tmp)
            online_s = _wait_all_heartbeating(
                db, simulator, prefix, nodes, timeout=60 + nodes * 0.1
            )
            _log(f"{layout}: {nodes} nodes heartbeating after {online_s:.1f}s")
            time.sleep(2 * HEARTBEAT_INTERVAL_S)  # past the registration burst
            rounds = [
                _heartbeat_round(db, prefix, nodes, timeout=30 * HEARTBEAT_INTERVAL_S)
                for _ in range(ROUNDS)
            ]
            measured = [r for r in rounds if r is not None]
            baseline = statistics.median(measured) if measured else None
            _log(f"{layout}: heartbeat rounds {[_seconds(r) for r in rounds]}")
            sessions = {**server.sessions, "simulator": simulator.process.pid}
            results: dict[str, Any] = {}
            for name, request, timeout in (
                (
                    "all_at_once",
                    {"bundle_id": first_bundle, "strategy": "all_at_once", "bake_s": 0},
                    once_limit,
                ),
                (
                    "rolling",
                    {
                        "bundle_id": second_bundle,
                        "strategy": "rolling",
                        "batch_percent": 10,
                        "bake_s": 0,
                    },
                    rolling_limit,
                ),
            ):
                if name not in ROLLOUTS:
                    continue
                sampler = TickSampler(server.redis_url, db)
                counters = db.table_counters()
                master = sessions.get("api")
                workers_before = _worker_cpu_s(master) if master else {}
                with CpuMeter(sessions) as meter:
                    sampler.start()
                    rollout_id, timeline = _follow(
                        client, db, request, timeout, _poll_every(nodes), sampler.watch, nodes
                    )
                if master:
                    # The simulator keeps its connections: if the gunicorn worker that woke
                    # first accepted all of them, one worker served the whole run (see
                    # bench/heartbeat.py:_wrk). Said, not retried: a run takes minutes.
                    workers_after = _worker_cpu_s(master)
                    meter.result["api_workers_cpu_s"] = sorted(
                        round(workers_after[pid] - workers_before.get(pid, 0.0), 2)
                        for pid in workers_after
                    )
                    meter.result["api_workers_balanced"] = _balanced(workers_before, workers_after)
                if timeline.body.get("state") in ("pending", "running", "paused"):
                    # timed out: stop it, so the next rollout's nodes are not busy
                    client.post(f"{BASE}/rollouts/{rollout_id}/cancel", json={"reason": "bench"})
                time.sleep(1.5)  # PostgreSQL backends publish their counters at most each 1 s
                results[name] = {
                    "limit_s": timeout,
                    "rows": _counter_delta(counters, db.table_counters()),
                    "rollout_id": rollout_id,
                    "timeline": timeline,
                    "phases": db.phases(rollout_id),
                    "cpu": meter.result,
                    "ticks": sampler.stop(meter.result["wall_s"]),
                }
                _log(
                    f"{layout}: {name}: {timeline.first_seen} {timeline.body.get('progress')}"
                    f" api workers' CPU {meter.result.get('api_workers_cpu_s')}"
                )
            last = results["rolling" if "rolling" in results else "all_at_once"]
            tick_cost = _tick_read_cost(server, last["rollout_id"])
            fleet = _simulator_summary(simulator, tmp)
            simulator = None
            total_s = time.monotonic() - started
        finally:
            if simulator is not None:
                simulator.stop()
            db.close()
            client.close()
    figures = _figures(layout, nodes, server, online_s, rounds, baseline, results, tick_cost, fleet)
    figures[list(figures)[-1]]["fleet"]["bench_s"] = round(total_s, 1)
    return figures


def _code_version() -> str | None:
    """The commit measured, `+dirty` with uncommitted changes (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}+dirty" if dirty else head or None


def _seconds(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _figures(
    layout: str,
    nodes: int,
    server: Server,
    online_s: float,
    rounds: list[float | None],
    baseline: float | None,
    results: dict[str, Any],
    tick_cost: dict[str, Any],
    fleet: dict[str, Any],
) -> dict[str, Any]:
    common = {
        "layout": layout,
        "code": _code_version(),
        **server.notes,
        "nodes": nodes,
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "apply_time_s": 0,
        "poll_every_s": _poll_every(nodes),
        "baseline_name": (
            "heartbeat round: seconds until every node of the idle fleet sent a heartbeat "
            "after an instant t0 (median of "
            f"{ROUNDS}); the floor for reaching all nodes, since a node learns of its "
            "assignment only from a heartbeat answer. Equal to the interval when the server "
            "keeps up with the fleet's heartbeats."
        ),
        "heartbeat_rounds_s": [_seconds(r) for r in rounds],
    }
    figures: dict[str, Any] = {}
    if "all_at_once" in results:
        figures.update(_all_at_once_figure(layout, common, baseline, results, tick_cost))
    if "rolling" in results:
        figures.update(_rolling_figure(layout, common, baseline, results, tick_cost))
    # the fleet's own summary goes with the last rollout measured
    figures[list(figures)[-1]]["fleet"] = {
        "time_to_all_heartbeating_s": round(online_s, 1),
        **fleet,
    }
    return figures


def _head(
    value: float | None,
    baseline: float | None,
    common: dict[str, Any],
    target_s: float,
    what: str,
) -> dict[str, Any]:
    """What every propagation figure starts with: the value, its baseline and target."""
    return {
        "value": _seconds(value),
        "unit": "s",
        "baseline": _seconds(baseline),
        **common,
        "ratio": round(value / baseline, 2) if value and baseline else None,
        "target_s": target_s,
        "what": what,
    }


def _all_at_once_figure(
    layout: str,
    common: dict[str, Any],
    baseline: float | None,
    results: dict[str, Any],
    tick_cost: dict[str, Any],
) -> dict[str, Any]:
    once = results["all_at_once"]
    seen = once["timeline"].first_seen
    value = seen.get("100%")
    return {
        f"rollout_all_at_once_s_{layout}": {
            **_head(
                value,
                baseline,
                common,
                ALL_AT_ONCE_TARGET_S,
                "create call → 100 % of nodes verified (progress.verified == total)",
            ),
            "to_50_percent_s": _seconds(seen.get("50%")),
            "to_90_percent_s": _seconds(seen.get("90%")),
            "to_completed_s": _seconds(seen.get("completed")),
            "final_state": once["timeline"].body.get("state"),
            "final_reason": once["timeline"].body.get("reason"),
            "bench_limit_s": once["limit_s"],
            "final_progress": once["timeline"].body.get("progress"),
            "create_call_s": _seconds(once["timeline"].created_s),
            "progress_read_ms": _summary(once["timeline"].poll_ms),
            "profile": {
                "create_to_step_started_s": _create_to_step(once["timeline"].body),
                "node_phases": _node_phases(once["phases"]),
                "ticks": once["ticks"],
                "rows": once["rows"],
                "cpu": once["cpu"],
                "indicators": _indicators(baseline, once, tick_cost),
            },
        }
    }


def _rolling_figure(
    layout: str,
    common: dict[str, Any],
    baseline: float | None,
    results: dict[str, Any],
    tick_cost: dict[str, Any],
) -> dict[str, Any]:
    rolling = results["rolling"]
    seen = rolling["timeline"].first_seen
    value = seen.get("completed")
    steps = _rolling_steps(rolling["timeline"].body, rolling["phases"])
    return {
        f"rollout_rolling_10_steps_s_{layout}": {
            **_head(
                value,
                baseline,
                common,
                ROLLING_TARGET_S,
                "create call → rollout completed (rolling, batch_percent 10, bake_s 0)",
            ),
            "to_100_percent_verified_s": _seconds(seen.get("100%")),
            "progress_read_ms": _summary(rolling["timeline"].poll_ms),
            "final_state": rolling["timeline"].body.get("state"),
            "final_reason": rolling["timeline"].body.get("reason"),
            "bench_limit_s": rolling["limit_s"],
            "steps_completed": sum(1 for step in steps if step["state"] == "completed"),
            "final_progress": rolling["timeline"].body.get("progress"),
            "profile": {
                "steps": steps,
                "step_means_s": _step_means(steps),
                "node_phases": _node_phases(rolling["phases"]),
                "ticks": rolling["ticks"],
                "rows": rolling["rows"],
                "cpu": rolling["cpu"],
                "tick_read_cost": tick_cost,
                "indicators": _indicators(baseline, rolling, tick_cost),
            },
        }
    }


def _indicators(
    baseline: float | None, result: dict[str, Any], tick_cost: dict[str, Any]
) -> dict[str, Any]:
    """The few numbers that say which limit a rollout met (see the docstring)."""
    ticks = result["ticks"]
    jobs = ticks.get("jobs_finished_by_function") or {}
    beat = (jobs.get("record_beat") or {}).get("run_s") or {}
    tick_run = (ticks.get("tick_run_s") or {}).get("p50")
    cpu = result["cpu"]
    busy = cpu["machine_busy_cpu_s"] or None
    return {
        "heartbeat_round_over_interval": (
            round(baseline / HEARTBEAT_INTERVAL_S, 2) if baseline else None
        ),
        "noop_job_run_s_p50": beat.get("p50"),
        "tick_run_s_p50": tick_run,
        "tick_read_and_decide_s": tick_cost["build_view_and_decide_s"],
        "worker_busy_share": ticks.get("worker_busy_share"),
        "machine_busy_share": cpu["machine_busy_share"],
        "share_of_busy_cpu": {
            name: round(seconds / busy, 2) for name, seconds in cpu["cpu_s"].items()
        }
        | {"not_ours": round(cpu["not_ours_cpu_s"] / busy, 2)}
        if busy
        else None,
        "note": (
            "record_beat's body is one Redis write, so its run time is what any job costs "
            "in these workers; tick run vs read-and-decide says how much of a tick is that "
            "cost; a heartbeat round over the interval above 1 says the server does not keep "
            "up with the fleet's heartbeats alone"
        ),
    }


def _create_to_step(body: dict[str, Any]) -> float | None:
    steps = body.get("steps") or []
    if not steps or not body.get("created_at") or not steps[0].get("started_at"):
        return None
    delta = _parse(steps[0]["started_at"]) - _parse(body["created_at"])
    return round(delta.total_seconds(), 3)


def _step_means(steps: list[dict[str, Any]]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for key in ("start_to_all_verified_s", "all_verified_to_step_done_s", "step_done_to_next_s"):
        values = [s[key] for s in steps if s[key] is not None]
        result[key] = round(statistics.mean(values), 2) if values else None
    return result


def run(*, quick: bool) -> dict[str, Any]:
    nodes = int(os.environ.get("BENCH_PROPAGATION_NODES", QUICK_NODES if quick else FULL_NODES))
    layouts = os.environ.get("BENCH_PROPAGATION_LAYOUTS", "api").split(",")
    figures: dict[str, Any] = {}
    for layout in filter(None, (name.strip() for name in layouts)):
        figures.update(measure(layout, nodes, quick=quick))
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
