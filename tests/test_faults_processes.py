"""Process faults in the production layout, on PostgreSQL + Redis: a worker SIGKILLed inside a
rollout tick's transaction and inside a compile, and the `web` process SIGKILLed and restarted
while nodes report.

The control plane is `python app.py` (`SENTINEL_ENV=production`) on a database of this module's
own, with the Procfile's `rq cron` and `python -m jobs.worker` processes (`fault_stack`) and
Redis database 12 (flushed before and after). A worker is stopped *inside* a transaction from
the outside, without hooks in the code: the test holds `audit_logs` in SHARE mode, which
every audited transaction needs for its audit rows' INSERT, flushed in its commit
(`audit._link_pending`) after all its other writes. The worker is frozen (SIGSTOP) while the
operator's request and the lock are set up, then thawed; `pg_stat_activity` shows its session
(named with `PGAPPNAME`) waiting on the test's lock and `pg_locks` what it has written; then
worker and work horse are SIGKILLed and the lock is released. Nothing the dead transaction
wrote may show, and the sweeps must finish the work.

Each test measures its recovery and records a row of the fault table in RESULTS_MD
(`/tmp/reliability-rows-processes.md`; `SENTINEL_FAULT_ROWS_PROCESSES` overrides it).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from bundle_helpers import CONFIG, route_config
from conftest import ROOT, make_project, postgres_available, redis_available, require_service
from fault_support import audit_verify, fault_stack, query
from rollout_e2e_helpers import (
    Stack,
    children_of,
    operator,
    own_database,
    own_redis_url,
)
from rq import Queue
from test_server import Server, wait_for

from jobs import QUEUES
from sentinel_cp.bundles import compiler

RESULTS_MD = Path(
    os.environ.get("SENTINEL_FAULT_ROWS_PROCESSES", "/tmp/reliability-rows-processes.md")
)
COMMAND = (
    "TEST_REDIS_URL=redis://127.0.0.1:6379/12 .venv/bin/python -m pytest "
    "tests/test_faults_processes.py -q -s"
)
ROLLOUT_TIMEOUT_S = 60
BLOCK_TIMEOUT_S = 30  # a fresh worker takes its job and reaches the held lock
TERMINAL = ("completed", "failed", "cancelled", "rolled_back")
REPORT_PATH = re.compile(r"/api/v1/nodes/([0-9a-f-]{36})/bundles/([0-9a-f]{64})/(\w+)$")
NODE_PATH = re.compile(r"/api/v1/nodes/([0-9a-f-]{36})/")


# --- the stack: server, cron, and workers the tests start and kill -------------------------


@dataclass
class Processes:
    """The module's stack plus the workers the tests start, stop and kill by pid."""

    stack: Stack
    names: Iterator[int] = field(default_factory=lambda: count(1))

    @property
    def database_url(self) -> str:
        return self.stack.database_url

    def start_worker(self) -> str:
        """One Procfile worker whose database sessions carry its name (`PGAPPNAME`, read by
        libpq), so `pg_stat_activity` tells them apart. Names are never reused: a killed
        worker's registration stays in Redis until it expires."""
        name = f"fault-worker-{os.getpid()}-{next(self.names)}"
        argv = [sys.executable, "-m", "jobs.worker", "worker", "--url", self.stack.redis_url]
        argv += ["--name", name, *QUEUES]
        with (self.stack.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.stack.env, "PGAPPNAME": name},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.stack.workers[name] = process
        wait_for(
            lambda: process.poll() is None and self.stack.redis().exists(f"rq:worker:{name}"),
            timeout=30,
            what=f"worker {name} to register in Redis",
        )
        return name

    def live_worker(self) -> str:
        """The name of a running worker, started if there is none (a test that failed half-way
        may have killed the last one)."""
        for name, process in self.stack.workers.items():
            if process.poll() is None:
                return name
        return self.start_worker()

    @contextmanager
    def frozen(self, name: str) -> Iterator[Callable[[], None]]:
        """The worker's parent SIGSTOPped: it starts no job (it forks a horse per job) until
        the `thaw()` this yields is called (or the block ends), so a job enqueued meanwhile
        waits for what the test sets up first."""
        process = self.stack.workers[name]
        process.send_signal(signal.SIGSTOP)

        def thaw() -> None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)

        try:
            yield thaw
        finally:
            thaw()

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL the worker and its work horse (RQ forks one per job, in a process group of
        its own), both frozen first so neither acts on the other's death: a machine dying."""
        process = self.stack.workers.pop(name)
        pids = [process.pid, *children_of(process.pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
        process.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, what="a dead horse")
        return pids

    def run_job(self, func: str, *args: Any) -> Any:
        """Run `func(*args)` in a worker now: enqueued on the queue workers take first, ahead
        of the cron jobs that piled up while no worker was free."""
        job = Queue(QUEUES[0], connection=self.stack.redis()).enqueue(
            func, *args, job_id=f"fault-test-{uuid.uuid4().hex[:12]}"
        )
        wait_for(
            lambda: job.get_status(refresh=True) in ("finished", "failed"),
            timeout=60,
            what=f"{func} to run",
        )
        assert job.get_status() == "finished", job.latest_result()
        return job.return_value()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    require_service(postgres_available(), "PostgreSQL not reachable")
    redis_url = own_redis_url()
    require_service(redis_available(redis_url), f"Redis not reachable at {redis_url}")
    tmp = tmp_path_factory.mktemp("faults-processes")
    redis.Redis.from_url(redis_url).flushdb()  # the database is this module's (and rollout e2e's)
    try:
        with (
            own_database() as database_url,
            fault_stack(tmp, database_url, redis_url, workers=0) as stack,
        ):
            procs = Processes(stack)
            procs.start_worker()
            yield procs
    finally:
        redis.Redis.from_url(redis_url).flushdb()


# --- looking inside PostgreSQL --------------------------------------------------------------


@contextmanager
def audit_log_locked(database_url: str) -> Iterator[int]:
    """Hold `audit_logs` in SHARE mode in a transaction of our own: every audited transaction
    waits at its audit rows' INSERT, the flush its commit runs after all its other writes.
    Yields our backend pid; rolls back on exit."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        conn.execute("LOCK TABLE audit_logs IN SHARE MODE")
        try:
            yield int(row[0])
        finally:
            conn.rollback()


@dataclass(frozen=True)
class Waiter:
    pid: int
    query: str


def waiting_on(database_url: str, holder: int, application: str) -> Waiter | None:
    """The session of `application` (a worker) blocked by the backend `holder`, if any."""
    rows = query(
        database_url,
        "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s"
        " AND wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))",
        application,
        holder,
    )
    return Waiter(int(rows[0][0]), str(rows[0][1])) if rows else None


def tables_written(database_url: str, pid: int) -> set[str]:
    """The tables a backend's open transaction has written (it holds ROW EXCLUSIVE on them)."""
    rows = query(
        database_url,
        "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE l.pid = %s AND l.mode = 'RowExclusiveLock' AND c.relkind = 'r'",
        pid,
    )
    return {str(row[0]) for row in rows}


def backend_gone(database_url: str, pid: int) -> bool:
    return not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid)


def project_id_of(processes: Processes, slug: str) -> str:
    rows = query(processes.database_url, "SELECT id::text FROM projects WHERE slug = %s", slug)
    return str(rows[0][0])


def snapshot(database_url: str, project_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a rollout tick or a compile writes in a project, as committed now (node
    columns that heartbeats move are left out: nodes keep heartbeating through the faults)."""
    tables = {
        "rollouts": "SELECT id, state, reason, promoted, started_at, finished_at, updated_at"
        " FROM rollouts WHERE project_id = %s ORDER BY id",
        "steps": "SELECT s.rollout_id, s.index, s.state, s.started_at, s.baking_since,"
        " s.finished_at, s.reason FROM rollout_steps s JOIN rollouts r ON r.id = s.rollout_id"
        " WHERE r.project_id = %s ORDER BY s.rollout_id, s.index",
        "deliveries": "SELECT id, node_id, bundle_id, step_index, state, updated_at"
        " FROM node_bundle_statuses WHERE project_id = %s ORDER BY id",
        "assignments": "SELECT id, assigned_bundle_id, assigned_rollout_id, expected_bundle_id"
        " FROM nodes WHERE project_id = %s ORDER BY id",
        "bundles": "SELECT id, status, compile_attempts, compile_started_at, compiled_at,"
        " signature FROM bundles WHERE project_id = %s ORDER BY id",
        "audit": "SELECT seq, action, resource_id FROM audit_logs WHERE project_id = %s"
        " ORDER BY seq",
        "chain_head": "SELECT seq, last_hash FROM audit_chain_heads WHERE chain = %s",
    }
    return {name: query(database_url, sql, project_id) for name, sql in tables.items()}


def audit_actions(database_url: str, project_id: str, action: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        "SELECT resource_id, metadata::text FROM audit_logs"
        " WHERE project_id = %s AND action = %s ORDER BY seq",
        project_id,
        action,
    )


def step_audits(processes: Processes, project_id: str, action: str) -> Counter[int]:
    """How many `action` rows name each step index (StartStep/CompleteStep audit `index`)."""
    rows = query(
        processes.database_url,
        "SELECT (metadata->>'index')::int FROM audit_logs WHERE project_id = %s AND action = %s",
        project_id,
        action,
    )
    return Counter(int(row[0]) for row in rows)


def assert_converged(processes: Processes, project_id: str, bundle_id: str) -> int:
    """Every node of the project runs the bundle and is expected to; no rollout is left
    unfinished. Returns the node count."""
    nodes = wait_for(
        lambda: (
            rows
            if (
                rows := query(
                    processes.database_url,
                    "SELECT name, active_bundle_id, expected_bundle_id"
                    " FROM nodes WHERE project_id = %s",
                    project_id,
                )
            )
            and all(row[1] == bundle_id for row in rows)
            else None
        ),
        timeout=15,
        what="every node to report the bundle active",
    )
    assert {row[1:] for row in nodes} == {(bundle_id, bundle_id)}, nodes
    unfinished = query(
        processes.database_url,
        "SELECT id, state FROM rollouts WHERE project_id = %s AND state <> ALL(%s)",
        project_id,
        list(TERMINAL),
    )
    assert unfinished == [], f"rollouts left unfinished: {unfinished}"
    return len(nodes)


def verified_chain(processes: Processes, slug: str) -> dict[str, Any]:
    """`sentinel-cp audit verify --project slug` (sentinel_cp.audit.verify_chain)."""
    verdict = audit_verify(processes.stack.env, slug)
    assert verdict["valid"] is True and verdict["exit_code"] == 0, verdict
    return verdict


@dataclass(frozen=True)
class FaultRow:
    """One line of the fault table: what broke, what should happen, what did, how long the
    recovery took (measured), what was lost, and the command that measured it."""

    fault: str
    expected: str
    observed: str
    recovery_s: dict[str, float]
    lost: str
    command: str

    def markdown(self) -> str:
        recovery = "; ".join(
            f"{name}: {seconds:.1f} s" for name, seconds in self.recovery_s.items()
        )
        cells = (self.fault, self.expected, self.observed, recovery, self.lost, f"`{self.command}`")
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


TABLE_HEADER = (
    "| Fault | Expected | Observed | Recovery time (measured) | What was lost | Command |\n"
    "|---|---|---|---|---|---|"
)


def record(row: FaultRow) -> None:
    """Print the row and (re)write it in RESULTS_MD, replacing an earlier row of the fault."""
    print(f"\nFAULT {row.fault}: recovery {row.recovery_s}; lost: {row.lost}")
    rows: dict[str, str] = {}
    if RESULTS_MD.exists():
        for line in RESULTS_MD.read_text().splitlines():
            if line.startswith("| ") and not line.startswith(("| Fault ", "|---")):
                rows[line[2:].split(" | ", 1)[0]] = line
    rows[row.fault] = row.markdown()
    RESULTS_MD.write_text("\n".join([TABLE_HEADER, *rows.values(), ""]))


# --- the fix the mid-compile fault needs: a compile that always dies ends `failed` -----------


def test_a_bundle_whose_every_compile_dies_fails_after_the_last_attempt(app: Any) -> None:
    """Each claim counts an attempt; a stale `compiling` bundle that has used all of them is
    failed with `compile_abandoned` instead of being claimed (and killing a worker) again."""
    from sqlalchemy import select, update

    from sentinel_cp import projects
    from sentinel_cp.audit import Actor, AuditLog
    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.db import db, utcnow

    make_project(app, "poison")
    with app.app_context():
        project = projects.get_project("poison")
        ids = []
        for version, attempts in (("v1", compiler.MAX_ATTEMPTS - 1), ("v2", compiler.MAX_ATTEMPTS)):
            files = {"sentinel.kdl": route_config(attempts, tag=version)}
            bundle, _ = compiler.submit(Actor.system("test"), project, files, version=version)
            db.session.commit()
            # what MAX_ATTEMPTS - 1 (v1) or MAX_ATTEMPTS (v2) claims that all died leave behind
            db.session.execute(
                update(Bundle)
                .where(Bundle.id == bundle.id)
                .values(status="compiling", compile_started_at=utcnow(), compile_attempts=attempts)
            )
            db.session.commit()
            ids.append(bundle.id)
        later = utcnow() + compiler.COMPILE_TIMEOUT + timedelta(seconds=1)
        assert set(compiler.recover_stuck_compiles(now=later)) == set(ids)
        assert compiler.compile_bundle(ids[0], now=later) == "compiled"  # the last attempt
        assert compiler.compile_bundle(ids[1], now=later) == "failed"
        assert compiler.compile_bundle(ids[1], now=later) is None  # a repeat does nothing
        failed = db.session.get(Bundle, ids[1], populate_existing=True)
        assert failed.status == "failed"
        assert failed.compile_attempts == compiler.MAX_ATTEMPTS
        assert [e["code"] for e in failed.errors] == ["compile_abandoned"]
        rows = db.session.scalars(
            select(AuditLog).where(
                AuditLog.action == "bundle.failed", AuditLog.resource_id == ids[1]
            )
        ).all()
        assert len(rows) == 1
        assert rows[0].changes == {"status": ["compiling", "failed"]}


# --- 1. a worker SIGKILLed inside a tick's transaction -------------------------------------


@dataclass(frozen=True)
class KilledInCommit:
    """A worker SIGKILLed while its job waited in its last commit, and the project's state
    (`snapshot`) before the job went on, at the kill and once its session had ended."""

    waiter: Waiter
    written: set[str]
    killed: list[int]
    before: dict[str, Any]
    at_kill: dict[str, Any]
    after_kill: dict[str, Any]


def kill_in_last_commit(
    processes: Processes, worker: str, project_id: str, thaw: Callable[[], None], job: str
) -> KilledInCommit:
    """Hold the audit log, `thaw()` the frozen worker, wait until its `job` waits on that
    table lock (its last commit: seen in `pg_stat_activity`, no hook in the code), SIGKILL
    worker and horse there, then wait for the dead session to end."""
    database_url = processes.database_url
    with audit_log_locked(database_url) as holder:
        before = snapshot(database_url, project_id)
        thaw()
        waiter: Waiter = wait_for(
            lambda: waiting_on(database_url, holder, worker),
            timeout=BLOCK_TIMEOUT_S,
            what=f"{worker}'s {job} to wait on the audit log",
        )
        written = tables_written(database_url, waiter.pid)
        killed = processes.kill_worker(worker)
        at_kill = snapshot(database_url, project_id)
    wait_for(
        lambda: backend_gone(database_url, waiter.pid),
        timeout=30,
        what="the dead worker's session to end",
    )
    after_kill = snapshot(database_url, project_id)
    return KilledInCommit(waiter, written, killed, before, at_kill, after_kill)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_worker_killed_inside_a_tick_transaction_leaves_no_half_step(processes: Processes) -> None:
    """Blue-green on 4 simulated nodes: the standby half verifies and the rollout awaits
    promotion. With the worker frozen the operator promotes and the test takes the audit log;
    thawed, the worker's tick assigns the other half (step, nodes, delivery rows written) and
    waits in its commit. Killed there, nothing of that tick may show; a fresh worker and the
    cron sweep finish the rollout with each step started once, and a replayed tick writes
    nothing."""
    database_url = processes.database_url
    worker = processes.live_worker()
    with operator(processes.stack.server, "tick-kill") as ops:
        project_id = project_id_of(processes, ops.slug)
        bundle_id = ops.submit(CONFIG, "tick-kill-v1")
        with witnessed_fleet(
            processes.stack.server, ops.slug, ops.registration_token(), 4, "tk"
        ) as fleet:
            ops.wait_online(4)
            ops.wait_compiled(bundle_id)
            created = ops.create_rollout(bundle_id=bundle_id, strategy="blue_green", bake_s=0)
            rollout_id = created["id"]
            paused = ops.wait_rollout(rollout_id, ("paused",), ROLLOUT_TIMEOUT_S)
            assert paused["reason"] == "awaiting_promotion", paused

            with processes.frozen(worker) as thaw:
                promoted = ops.api.post(f"{ops.base}/rollouts/{rollout_id}/promote", json={})
                assert promoted.status_code == 200, promoted.text
                kill = kill_in_last_commit(processes, worker, project_id, thaw, "tick")
            waiter, written, killed = kill.waiter, kill.written, kill.killed
            before, at_kill, after_kill = kill.before, kill.at_kill, kill.after_kill

            restarted = time.monotonic()
            processes.start_worker()
            wait_for(
                lambda: ops.rollout(rollout_id)["steps"][1]["state"] != "pending",
                timeout=ROLLOUT_TIMEOUT_S,
                what="the promote step to start after the kill",
            )
            progressed = time.monotonic()
            done = ops.wait_rollout(rollout_id, ("completed",), ROLLOUT_TIMEOUT_S)
            completed = time.monotonic()
            converged = assert_converged(processes, project_id, bundle_id)

            settled = snapshot(database_url, project_id)
            replayed = processes.run_job("jobs.rollouts.tick_rollout", rollout_id)
            after_replay = snapshot(database_url, project_id)
        summary = fleet.stop()

    # The worker was inside the tick's transaction, with the promote step written.
    assert "INSERT INTO audit_logs" in waiter.query, waiter
    assert {"rollouts", "rollout_steps", "nodes", "node_bundle_statuses"} <= written, written
    assert len(killed) == 2, f"the worker and its work horse: {killed}"
    # Nothing of it shows: the state is exactly the one before the tick.
    assert at_kill == before
    assert after_kill == before
    step_states = [row[2] for row in before["steps"]]
    assert step_states == ["completed", "pending"], before["steps"]
    assert [row[1] for row in before["rollouts"]] == ["running"]
    # The rollout finished from there, every step started and completed exactly once.
    assert [step["state"] for step in done["steps"]] == ["completed", "completed"]
    assert done["progress"]["verified"] == 4
    assert step_audits(processes, project_id, "rollout.step_started") == Counter([0, 1])
    assert step_audits(processes, project_id, "rollout.step_completed") == Counter([0, 1])
    deliveries = Counter(row[1] for row in settled["deliveries"])
    assert sorted(deliveries.values()) == [1, 1, 1, 1], settled["deliveries"]
    chain = verified_chain(processes, ops.slug)
    # A replayed tick on the finished rollout applies nothing and writes nothing.
    assert replayed == 0
    assert after_replay == settled
    assert summary["bundles_applied"] == 4, summary

    record(
        FaultRow(
            fault="worker SIGKILL mid-tick",
            expected="the tick's transaction rolls back whole; the cron sweep re-ticks; "
            "rollout completes; replay changes nothing",
            observed=f"worker + horse killed while blocked in the promote step's commit (wrote "
            f"{', '.join(sorted(written - {'audit_chain_heads'}))}); committed state identical "
            "before and after; "
            f"rollout completed, {converged}/4 nodes converged, each step audited once, "
            f"chain valid ({chain['checked']} rows); a replayed tick applied {replayed} actions, "
            "changed no row",
            recovery_s={
                "new worker → promote step started": round(progressed - restarted, 2),
                "new worker → rollout completed": round(completed - restarted, 2),
            },
            lost="nothing (no half step: 0 delivery rows/assignments of the dead tick; "
            "1 delivery row per node)",
            command=f"{COMMAND} -k tick_transaction",
        )
    )


# --- 2. a worker SIGKILLed mid-compile -----------------------------------------------------


def execute(database_url: str, sql: str, *params: Any) -> int:
    """One committed write to the server's database; returns the row count."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql, params).rowcount


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_worker_killed_mid_compile_leaves_the_bundle_to_the_stuck_compile_sweep(
    processes: Processes,
) -> None:
    """The compile job waits in its last commit (status `compiled`, signature and audit row
    written); killed there, the bundle stays `compiling` with its claim. A compile run while
    the claim is fresh leaves it alone; once the claim is older than COMPILE_TIMEOUT (moved
    back here rather than waited for) the stuck-compile sweep compiles it again, once."""
    database_url = processes.database_url
    worker = processes.live_worker()
    with operator(processes.stack.server, "compile-kill") as ops:
        project_id = project_id_of(processes, ops.slug)
        # the project's signing key exists: the compile's only audited commit is its last
        rotated = ops.api.post(f"{ops.base}/signing-keys/rotate", json={})
        assert rotated.status_code in (200, 201), rotated.text
        with processes.frozen(worker) as thaw:
            bundle_id = ops.submit(CONFIG, "compile-kill-v1")
            kill = kill_in_last_commit(processes, worker, project_id, thaw, "compile")
        waiter, written, killed = kill.waiter, kill.written, kill.killed
        at_kill, after_kill = kill.at_kill, kill.after_kill
        stuck = ops.api.get(f"{ops.base}/bundles/{bundle_id}").json()

        processes.start_worker()
        fresh = processes.run_job("jobs.bundles.recover_stuck_compiles")
        rerun = processes.run_job("jobs.bundles.compile_bundle", bundle_id)
        still = ops.api.get(f"{ops.base}/bundles/{bundle_id}").json()
        # COMPILE_TIMEOUT passes for this claim (its start is moved back rather than waited for)
        moved = execute(
            database_url,
            "UPDATE bundles SET compile_started_at = compile_started_at - %s WHERE id = %s",
            compiler.COMPILE_TIMEOUT,
            bundle_id,
        )
        swept_at = time.monotonic()
        swept = processes.run_job("jobs.bundles.recover_stuck_compiles")
        ops.wait_compiled(bundle_id)
        compiled_at = time.monotonic()
        final = snapshot(database_url, project_id)
        checked = ops.api.get(f"{ops.base}/bundles/{bundle_id}/verify")
        compiled_rows = audit_actions(database_url, project_id, "bundle.compiled")
        chain = verified_chain(processes, ops.slug)

    assert "INSERT INTO audit_logs" in waiter.query, waiter
    assert "bundles" in written, written
    assert len(killed) == 2, killed
    # The kill left the committed claim and nothing of the finish.
    assert at_kill == after_kill
    assert [row[1:3] for row in after_kill["bundles"]] == [("compiling", 1)]
    assert after_kill["bundles"][0][5] is None  # no signature stored
    assert "bundle.compiled" not in {row[1] for row in after_kill["audit"]}
    assert stuck["status"] == "compiling"
    # A fresh claim is not taken from a worker that may still be compiling...
    assert bundle_id not in fresh
    assert rerun is None
    assert still["status"] == "compiling"
    # ...a stale one is: the sweep (this run, or cron's) asks again and it compiles, once.
    assert moved == 1
    assert set(swept) <= {bundle_id}
    assert [row[1:3] for row in final["bundles"]] == [("compiled", 2)]
    assert len(compiled_rows) == 1, compiled_rows
    assert checked.status_code == 200 and checked.json()["verified"] is True, checked.text

    timeout_s = int(compiler.COMPILE_TIMEOUT.total_seconds())
    record(
        FaultRow(
            fault="worker SIGKILL mid-compile",
            expected="no half-finished compile is ever visible; the bundle stays `compiling` "
            f"until its claim is {timeout_s} s old, then the 30 s stuck-compile sweep compiles "
            f"it again (after {compiler.MAX_ATTEMPTS} dead attempts: `failed`, "
            "compile_abandoned)",
            observed="killed while blocked in the final commit (status, signature and audit "
            "row written, none visible); bundle `compiling`, attempt 1; a run on the fresh "
            "claim did nothing; after the timeout the sweep recompiled it: `compiled`, "
            "attempt 2, one bundle.compiled row, artifact verifies, chain valid "
            f"({chain['checked']} rows)",
            recovery_s={
                "sweep → compiled (claim stale)": round(compiled_at - swept_at, 2),
                "kill → compiled, by design at most": float(timeout_s + 30),
            },
            lost="nothing (one more attempt; same bundle id and bytes)",
            command=f"{COMMAND} -k mid_compile",
        )
    )


# --- 3. `web` SIGKILLed and restarted while nodes report -----------------------------------


@dataclass(frozen=True)
class Exchange:
    """One HTTP request of the simulated fleet: when it was sent and answered (monotonic), and
    the status (None: no answer — refused, reset, timed out)."""

    sent: float
    answered: float
    method: str
    path: str
    status: int | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def node(self) -> str | None:
        match = NODE_PATH.search(self.path)
        return match[1] if match else None

    @property
    def report(self) -> tuple[str, str, str] | None:
        """(node, bundle, state) of a bundle status report."""
        match = REPORT_PATH.search(self.path) if self.method == "POST" else None
        return (match[1], match[2], match[3]) if match else None


class RecordingTransport(httpx.AsyncBaseTransport):
    """The fleet's transport, keeping every request's outcome."""

    def __init__(self, log: list[Exchange]) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=100))
        self.log = log

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        method, path = request.method, request.url.path
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.log.append(Exchange(sent, time.monotonic(), method, path, None))
            raise
        self.log.append(Exchange(sent, time.monotonic(), method, path, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class WitnessedFleet:
    """`agent.simulator.Simulation` (the agent's own apply flow, simulated proxies) in a thread
    of this process, so that every answer each node got is known."""

    def __init__(self, url: str, slug: str, token: str, nodes: int, prefix: str) -> None:
        from agent.simulator import Simulation, SimulationConfig

        config = SimulationConfig(
            url=url,
            project=slug,
            nodes=nodes,
            registration_token=token,
            heartbeat_interval_s=1,
            name_prefix=prefix,
            apply_time_s=0.5,
            progress=False,
            seed=11,
        )
        self.simulation = Simulation(config, out=io.StringIO())
        self.exchanges: list[Exchange] = []
        self.summary: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._main, name=f"fleet-{prefix}", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        transport = RecordingTransport(self.exchanges)
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            self.summary = await self.simulation.run(http=http)

    def seen(self) -> list[Exchange]:
        return list(self.exchanges)

    def stop(self) -> dict[str, Any]:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.simulation.stop)
        self.thread.join(timeout=30)
        return self.summary


@contextmanager
def witnessed_fleet(
    server: Server, slug: str, token: str, nodes: int, prefix: str
) -> Iterator[WitnessedFleet]:
    fleet = WitnessedFleet(server.url, slug, token, nodes, prefix)
    requests_log = logging.getLogger("httpx")  # one INFO line per node request otherwise
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    fleet.thread.start()
    try:
        yield fleet
    finally:
        fleet.stop()
        requests_log.setLevel(level)


def restart_web(stack: Stack, tmp: Path) -> tuple[Server, float]:
    """`python app.py` again, on the same port and data directory with the same environment.
    Returns the server and the monotonic time it answered `/ready` with 200."""
    port = int(stack.server.url.rsplit(":", 1)[1])
    log_path = tmp / "server-restarted.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env={**stack.env, "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(process, stack.server.url, stack.server.data_dir, log_path)

    def ready() -> bool:
        assert process.poll() is None, f"server exited early:\n{server.log()}"
        return httpx.get(f"{server.url}/ready", timeout=2).status_code == 200

    wait_for(ready, timeout=60, what="the restarted server's /ready", interval=0.05)
    return server, time.monotonic()


def wait_mid_report(database_url: str, rollout_id: str) -> None:
    """Until a node of a step after the first is between its assignment and its verification
    (one connection, polled every 10 ms: the state lasts about the simulated apply time)."""
    import psycopg

    sql = (
        "SELECT 1 FROM node_bundle_statuses WHERE rollout_id = %s AND step_index >= 1"
        " AND state IN ('downloaded', 'staged', 'activated') LIMIT 1"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        wait_for(
            lambda: conn.execute(sql, (rollout_id,)).fetchone(),
            timeout=ROLLOUT_TIMEOUT_S,
            what="a later step's node to be mid-report",
            interval=0.01,
            tolerate_errors=False,
        )


def recorded_reports(database_url: str, project_id: str) -> set[tuple[str, str, str]]:
    """(node, bundle, state) of every bundle report the control plane recorded (audited)."""
    rows = query(
        database_url,
        "SELECT resource_id, metadata->>'bundle_id', substr(action, 13) FROM audit_logs"
        " WHERE project_id = %s AND action LIKE 'node.bundle%%'",
        project_id,
    )
    return {(str(r[0]), str(r[1]), str(r[2])) for r in rows}


def step_states(database_url: str, rollout_id: str) -> list[str]:
    rows = query(
        database_url,
        "SELECT state FROM rollout_steps WHERE rollout_id = %s ORDER BY index",
        rollout_id,
    )
    return [str(row[0]) for row in rows]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_web_killed_and_restarted_mid_rollout_loses_no_answered_report(
    processes: Processes, tmp_path: Path
) -> None:
    """6 simulated nodes, rolling in steps of 2. While a node of a later step is between its
    assignment and its verification, `web` is SIGKILLed and started again on the same port.
    Every bundle report answered 2xx before the kill is recorded; every node whose requests
    failed gets through again, and the rollout completes with every node converged."""
    stack, database_url = processes.stack, processes.database_url
    processes.live_worker()  # the compile and the ticks need one
    with operator(stack.server, "web-kill") as ops:
        project_id = project_id_of(processes, ops.slug)
        bundle_id = ops.submit(route_config(2, tag="web-kill"), "web-kill-v1")
        ops.wait_compiled(bundle_id)
        with witnessed_fleet(stack.server, ops.slug, ops.registration_token(), 6, "wk") as fleet:
            ops.wait_online(6)
            created = ops.create_rollout(
                bundle_id=bundle_id, strategy="rolling", batch_size=2, bake_s=0
            )
            rollout_id = created["id"]
            wait_mid_report(database_url, rollout_id)
            stack.server.process.kill()
            killed_at = time.monotonic()
            stack.server.process.wait(timeout=10)
            at_kill = step_states(database_url, rollout_id)

            stack.server, ready_at = restart_web(stack, tmp_path)
            done = ops.wait_rollout(rollout_id, ("completed",), ROLLOUT_TIMEOUT_S)
            completed_at = time.monotonic()
            converged = assert_converged(processes, project_id, bundle_id)
            exchanges = fleet.seen()
        summary = fleet.stop()
    recorded = recorded_reports(database_url, project_id)
    chain = verified_chain(processes, "web-kill")

    answered = {e.report for e in exchanges if e.report and e.ok and e.answered <= killed_at}
    lost = answered - recorded
    # requests the outage broke: no answer, or the dying server's 5xx
    failed = [
        e
        for e in exchanges
        if e.answered >= killed_at and e.sent <= ready_at and not e.ok
        if e.status is None or e.status >= 500
    ]
    failed_nodes = {e.node for e in failed if e.node}
    through_again = {e.node for e in exchanges if e.ok and e.sent >= ready_at}
    first_ok = min(e.answered for e in exchanges if e.ok and e.answered > killed_at)

    assert "pending" in at_kill or "running" in at_kill, at_kill  # killed mid-rollout
    assert answered, "no report was answered before the kill"
    assert lost == set(), f"reports answered 2xx before the kill but not recorded: {lost}"
    assert failed, "the kill failed no node request: the fault did not reach the fleet"
    assert failed_nodes <= through_again, f"never got through again: {failed_nodes}"
    assert [step["state"] for step in done["steps"]] == ["completed"] * 3
    assert done["progress"]["verified"] == 6
    assert step_audits(processes, project_id, "rollout.step_started") == Counter(range(3))
    assert summary["registered"] == 6, summary

    active = next(i for i, state in enumerate(at_kill) if state != "completed")
    record(
        FaultRow(
            fault="web SIGKILL + restart mid-rollout",
            expected="bundle reports answered 2xx before the kill are all recorded; nodes "
            "retry what failed; the rollout completes and every node converges",
            observed=f"killed while step {active + 1} of 3 had a node mid-report; "
            f"{len(answered)} reports answered 2xx before the kill, all recorded; "
            f"{len(failed)} node requests failed on {len(failed_nodes)} nodes, all of which "
            f"got through after the restart; rollout completed, {converged}/6 nodes "
            f"converged, each step started once, chain valid ({chain['checked']} rows)",
            recovery_s={
                "kill → restarted server ready": round(ready_at - killed_at, 2),
                "kill → first node request answered": round(first_ok - killed_at, 2),
                "ready → rollout completed": round(completed_at - ready_at, 2),
            },
            lost="nothing (0 of the reports answered 2xx missing)",
            command=f"{COMMAND} -k web_killed",
        )
    )
