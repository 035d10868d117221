"""Scale-out: two `api` and two `worker` processes on one PostgreSQL and one Redis run a rolling
rollout over a simulated fleet exactly as one of each does — and the checks say so.

The layout (the Procfile's commands, launched as bench/propagation.py launches them): `APIS`
gunicorn processes (`-w 2 -k gthread --threads 8`, each on its own port), `WORKERS` processes
running the Procfile's `worker` command and one its `cron` command, all on a PostgreSQL database
this bench creates and drops and on Redis `BENCH_FLEET_REDIS_URL` (db 6, flushed before and
after). Every process shares the data directory (the signing secret), nothing else.

The fleet: one `sentinel-cp simulate` process per api server (its own name prefix, half of N
nodes each; N = 1,000, QUICK 100), so each server only ever sees its half. The operator (this
process) logs in on the first server, compiles a bundle, creates a `rolling` rollout
(`batch_percent` 20: 5 steps — QUICK 34: 3 steps —, `bake_s` 0) and follows it there to `completed`.

Figure `rollout_scale_out_s`: seconds from the create call to `completed` with 2 api + 2
workers. Baseline: the same rollout, same fleet size, on 1 api + 1 worker in the same run (a
fresh database), so the ratio is what scale-out does for time; the `checks` (recorded for both
runs) are what it must not cost in correctness:

- `all_verified`: every node has a `verified` delivery for the rollout and runs the bundle.
- `one_delivery_per_node`: no node was assigned twice (a step started twice would do it).
- `steps_started_once` / `steps_completed_once`: per step exactly one `rollout.step_started`
  and one `rollout.step_completed` audit row (and one `rollout.completed`).
- `audit_path_in_order`: the rollout's audit rows in chain order are exactly created, started,
  then per step started → baking → (gates_changed …) → completed, then completed: a tick that
  overlapped another (both read the same state, both acted) would repeat or reorder an action.
- `steps_in_sequence`: each step started after the previous one finished (step timestamps).
- `audit_chain_valid`: the project's hash chain verifies (asked of the *other* api server).
- `both_servers_served` / `both_workers_ran_ticks`: each simulator's heartbeats succeeded
  against its own server, and tick jobs ran on more than one worker (RQ's job records sampled
  every `SAMPLE_S`; `tick_runs_overlapping` counts sampled tick runs on the same rollout that
  overlapped in time — a tick and its follow-up on two workers — which the row lock then
  serialised: the checks above are what shows it held; `database_connections` samples the
  server's PostgreSQL connections, lock waits by statement among them).

Bounded: a rollout not completed after `limit_s` is cancelled and reported with `value` null,
its final state, progress and steps completed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.heartbeat import (  # noqa: E402
    API_WORKER_ARGS,
    _base_env,
    _free_port,
    _registration_token,
    _wait_ready,
)
from bench.propagation import (  # noqa: E402
    BASE,
    Database,
    Group,
    TickSampler,
    _compiled_bundles,
    _die_with_parent,
    _follow,
    _login,
    _owned_database,
    _parse,
    _procfile_command,
    _rolling_steps,
    _simulator_summary,
    _spawn,
    _summary,
    _wait_all_heartbeating,
)
from bench.tick_cost import REDIS_URL, owned_redis  # noqa: E402

QUICK_NODES, FULL_NODES = 100, 1000
BATCH_PERCENT = 20  # 5 steps
QUICK_BATCH_PERCENT = 34  # 3 steps: QUICK's five-minute budget
SAMPLE_S = 0.05


def _log(message: str) -> None:
    print(f"[scale_out {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the processes --------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    urls: list[str]
    database_url: str
    redis_url: str
    groups: dict[str, Group]
    notes: dict[str, Any]


@contextlib.contextmanager
def stack(tmp: Path, apis: int, workers: int) -> Iterator[Stack]:
    """`apis` gunicorn processes, `workers` RQ workers and one cron on one fresh PostgreSQL
    database and our Redis database."""
    with contextlib.ExitStack() as exits:
        database_url = exits.enter_context(_owned_database())
        redis_url = exits.enter_context(owned_redis(REDIS_URL))
        ports = [_free_port() for _ in range(apis)]
        env = _base_env(tmp / "data", ports[0])
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
        bin_dir = Path(sys.executable).parent
        with (tmp / "setup.log").open("ab") as out:
            for command in (
                [str(bin_dir / "flask"), "--app", "app", "db", "upgrade"],
                [sys.executable, "-m", "sentinel_cp.cli", "setup"],
            ):
                subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=out, stderr=out)
        groups: dict[str, Group] = {}

        def stop_all() -> None:
            for group in reversed(groups.values()):
                group.stop()

        exits.callback(stop_all)
        for i, port in enumerate(ports, 1):
            groups[f"api{i}"] = _spawn(
                f"api{i}",
                [
                    str(bin_dir / "gunicorn"),
                    *API_WORKER_ARGS,
                    "-b",
                    f"127.0.0.1:{port}",
                    "app:create_app()",
                ],
                {**env, "PORT": str(port)},
                tmp / f"api{i}.log",
            )
        worker = _procfile_command("worker", redis_url)
        for i in range(1, workers + 1):
            groups[f"worker{i}"] = _spawn(f"worker{i}", worker, env, tmp / f"worker{i}.log")
        groups["cron"] = _spawn("cron", _procfile_command("cron", redis_url), env, tmp / "cron.log")
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for i, url in enumerate(urls, 1):
            _wait_ready(url, groups[f"api{i}"].process)
        yield Stack(
            urls,
            database_url,
            redis_url,
            groups,
            {
                "api_processes": apis,
                "rq_workers": workers,
                "server": f"gunicorn {' '.join(API_WORKER_ARGS)} 'app:create_app()' per api",
                "worker_command": " ".join(worker[1:]).replace(redis_url, "$REDIS_URL"),
                "database": "PostgreSQL, one database shared by every process",
            },
        )


def _simulator(url: str, token: str, nodes: int, prefix: str, interval: float, out: Path) -> Group:
    """`sentinel-cp simulate` against `url` (summary JSON to out/simulator.out, as
    propagation's `_simulator_summary` reads it)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "sentinel-cp"),
        "simulate",
        "--url",
        url,
        "--project",
        "default",
        "--registration-token",
        token,
        "--nodes",
        str(nodes),
        "--heartbeat-interval",
        str(interval),
        "--apply-time",
        "0",
        "--name-prefix",
        prefix,
    ]
    with (out / "simulator.out").open("wb") as stdout, (out / "simulator.err").open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=stdout,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Group(f"simulator-{prefix}", process)


class TickWorkers:
    """Samples RQ's records of the rollout's tick jobs: which worker ran each run, and when.

    A run is keyed by its enqueue time (RQ sets `started_at` twice per run); a job id is
    reused, so a run that started and ended between two samples is missed: counts are lower
    bounds."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url)
        self.rollout_id: str | None = None
        # (job id, enqueued_at) → (worker, started_at, ended_at)
        self.runs: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tick-workers", daemon=True)

    def watch(self, rollout_id: str) -> None:
        self.rollout_id = rollout_id

    def __enter__(self) -> TickWorkers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.redis.close()

    def _loop(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            if self.rollout_id is None:
                continue
            with contextlib.suppress(Exception):
                for job_id in (f"tick-{self.rollout_id}", f"tick-{self.rollout_id}-again"):
                    fields = self.redis.hmget(
                        f"rq:job:{job_id}", "enqueued_at", "worker_name", "started_at", "ended_at"
                    )
                    enqueued, worker, started, ended = (_text(f) for f in fields)
                    if enqueued and worker and started:
                        self.runs[(job_id, enqueued)] = (worker, started, ended)

    def summary(self) -> dict[str, Any]:
        by_worker: dict[str, int] = {}
        spans = []
        for (_, enqueued), (worker, started, ended) in self.runs.items():
            by_worker[worker] = by_worker.get(worker, 0) + 1
            begin = _parse(started)
            if ended and _parse(ended) >= begin >= _parse(enqueued):
                spans.append((begin, _parse(ended)))
        spans.sort()
        overlapping, latest_end = 0, None
        for start, end in spans:
            if latest_end is not None and start < latest_end:
                overlapping += 1
            latest_end = end if latest_end is None else max(latest_end, end)
        return {
            "tick_runs_seen": len(self.runs),
            "tick_runs_by_worker": {name[:12]: count for name, count in by_worker.items()},
            "tick_runs_overlapping": overlapping,
            "tick_run_s": _summary([(e - s).total_seconds() for s, e in spans]),
        }


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _worker_counts(redis_url: str) -> dict[str, int]:
    """Jobs each registered RQ worker has finished (its own counter)."""
    import redis

    connection = redis.Redis.from_url(redis_url)
    try:
        return {
            str(_text(key)).rsplit(":", 1)[-1][:12]: int(
                connection.hget(key, "successful_job_count") or 0
            )
            for key in connection.smembers("rq:workers")
        }
    finally:
        connection.close()


# --- the checks -----------------------------------------------------------------------------


def _checks(
    db: Database, rollout_id: str, bundle_id: str, prefixes: list[str], nodes: int
) -> dict[str, Any]:
    """What the database says about the rollout (see the module docstring)."""
    from sqlalchemy import text

    rid = uuid.UUID(rollout_id)
    with db.engine.connect() as conn:
        deliveries = conn.execute(
            text(
                "SELECT count(*) AS rows, count(DISTINCT node_id) AS nodes, "
                "count(*) FILTER (WHERE state = 'verified') AS verified "
                "FROM node_bundle_statuses WHERE rollout_id = :r"
            ),
            {"r": rid},
        ).one()
        running = {
            prefix: int(
                conn.scalar(
                    text("SELECT count(*) FROM nodes WHERE name LIKE :p AND active_bundle_id = :b"),
                    {"p": f"{prefix}-%", "b": bundle_id},
                )
                or 0
            )
            for prefix in prefixes
        }
        audit_rows = conn.execute(
            text(
                "SELECT action, metadata FROM audit_logs WHERE resource_id = :r ORDER BY chain, seq"
            ),
            {"r": rollout_id},
        ).all()
        steps = conn.execute(
            text(
                "SELECT index, state, started_at, finished_at FROM rollout_steps "
                "WHERE rollout_id = :r ORDER BY index"
            ),
            {"r": rid},
        ).all()
    path = [(row[0], (row[1] or {}).get("index")) for row in audit_rows]
    started = _per_step(path, "rollout.step_started")
    completed = _per_step(path, "rollout.step_completed")
    indexes = [step.index for step in steps]
    in_sequence = all(
        steps[i].started_at is not None
        and steps[i - 1].finished_at is not None
        and steps[i].started_at >= steps[i - 1].finished_at
        for i in range(1, len(steps))
    )
    return {
        "all_verified": deliveries.verified == nodes and sum(running.values()) == nodes,
        "verified_deliveries": deliveries.verified,
        "nodes_running_bundle_by_fleet": running,
        "one_delivery_per_node": deliveries.rows == deliveries.nodes == nodes,
        "delivery_rows": deliveries.rows,
        "steps": len(steps),
        "step_started_rows_by_step": started,
        "step_completed_rows_by_step": completed,
        "steps_started_once": sorted(started) == indexes and set(started.values()) == {1},
        "steps_completed_once": sorted(completed) == indexes and set(completed.values()) == {1},
        "rollout_completed_rows": sum(1 for action, _ in path if action == "rollout.completed"),
        "audit_path_in_order": _path_ok(path, len(steps)),
        "steps_in_sequence": in_sequence,
        "duplicate_state_changes": sum(n - 1 for n in [*started.values(), *completed.values()]),
    }


def _per_step(path: list[tuple[str, Any]], action: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for name, index in path:
        if name == action:
            counts[int(index)] = counts.get(int(index), 0) + 1
    return counts


def _path_ok(path: list[tuple[str, Any]], steps: int) -> bool:
    """created, started, per step: started, baking, gates_changed*, completed; completed."""
    expected_head = [("rollout.created", None), ("rollout.started", None)]
    if path[:2] != expected_head or path[-1:] != [("rollout.completed", None)]:
        return False
    body = [item for item in path[2:-1] if item[0] != "rollout.gates_changed"]
    wanted = [
        (action, index)
        for index in range(steps)
        for action in ("rollout.step_started", "rollout.step_baking", "rollout.step_completed")
    ]
    return body == wanted


# --- one run --------------------------------------------------------------------------------


def measure(
    apis: int, workers: int, nodes: int, interval: float, limit_s: float, batch_percent: int
) -> dict[str, Any]:
    """The rolling rollout on `apis` api + `workers` worker processes; its time and checks."""
    name = f"{apis}api-{workers}worker"
    with (
        tempfile.TemporaryDirectory(prefix=f"sentinel-bench-scale-{name}-") as tmp_name,
        stack(Path(tmp_name), apis, workers) as layout,
    ):
        tmp = Path(tmp_name)
        _log(f"{name}: up at {layout.urls}")
        client = _login(layout.urls[0])
        db = Database(layout.database_url)
        simulators: list[tuple[Group, Path]] = []
        try:
            (bundle_id,) = _compiled_bundles(client, 1)
            token = _registration_token(layout.urls[0])
            tag = uuid.uuid4().hex[:4]
            prefixes = [f"s{i}-{tag}" for i in range(len(layout.urls))]
            shares = [nodes // len(prefixes)] * len(prefixes)
            shares[0] += nodes - sum(shares)
            started = time.monotonic()
            for url, prefix, share in zip(layout.urls, prefixes, shares, strict=True):
                out = tmp / prefix
                simulators.append((_simulator(url, token, share, prefix, interval, out), out))
            for (group, _), prefix, share in zip(simulators, prefixes, shares, strict=True):
                _wait_all_heartbeating(db, group, prefix, share, timeout=60 + nodes * 0.1)
            online_s = time.monotonic() - started
            _log(f"{name}: {nodes} nodes heartbeating after {online_s:.1f} s")
            before = _worker_counts(layout.redis_url)
            request = {
                "bundle_id": bundle_id,
                "strategy": "rolling",
                "batch_percent": batch_percent,
                "bake_s": 0,
            }
            connections = TickSampler(None, db)  # PostgreSQL only: who waits for a lock
            with TickWorkers(layout.redis_url) as sampler:
                connections.start()
                started = time.monotonic()
                rollout_id, timeline = _follow(
                    client, db, request, limit_s, 0.1, sampler.watch, nodes
                )
            database = connections.stop(time.monotonic() - started)["database"]
            body = timeline.body
            if body.get("state") in ("pending", "running", "paused"):
                client.post(f"{BASE}/rollouts/{rollout_id}/cancel", json={"reason": "bench limit"})
            after = _worker_counts(layout.redis_url)
            with httpx.Client(base_url=layout.urls[-1], timeout=60) as other:
                other.cookies = client.cookies
                chain = other.get(f"{BASE}/audit/verify").json()
            checks = _checks(db, rollout_id, bundle_id, prefixes, nodes)
            steps = _rolling_steps(body, db.phases(rollout_id))
            fleets = [_simulator_summary(group, out) for group, out in simulators]
            simulators = []
            ticks = sampler.summary()
        finally:
            for group, _ in simulators:
                group.stop()
            db.close()
            client.close()
    completed = body.get("state") == "completed"
    checks.update(
        audit_chain_valid=bool(chain.get("valid")),
        audit_chain_rows=chain.get("checked"),
        audit_chain_verified_on=f"api{len(layout.urls)}",
        both_servers_served=all(
            (fleet.get("heartbeats_ok") or 0) > 0 and not fleet.get("heartbeats_failed")
            for fleet in fleets
        ),
        both_workers_ran_ticks=len(ticks["tick_runs_by_worker"]) >= min(workers, 2),
    )
    verdict_keys = [
        "all_verified",
        "one_delivery_per_node",
        "steps_started_once",
        "steps_completed_once",
        "audit_path_in_order",
        "steps_in_sequence",
        "audit_chain_valid",
    ]
    if apis > 1:
        verdict_keys.append("both_servers_served")
    if workers > 1:
        verdict_keys.append("both_workers_ran_ticks")
    checks["all_passed"] = completed and all(checks[key] for key in verdict_keys)
    checks["checked"] = verdict_keys
    return {
        "layout": layout.notes,
        "seconds": timeline.first_seen.get("completed") if completed else None,
        "final_state": body.get("state"),
        "final_progress": body.get("progress"),
        "steps_completed": sum(1 for step in steps if step["state"] == "completed"),
        "limit_s": limit_s,
        "rollout_id": rollout_id,
        "checks": checks,
        "ticks": ticks,
        "database_connections": database,
        "worker_jobs_finished": {
            worker: count - before.get(worker, 0) for worker, count in after.items()
        },
        "steps": steps,
        "fleet": {
            "time_to_all_heartbeating_s": round(online_s, 1),
            "per_server": dict(zip(layout.urls, fleets, strict=True)),
        },
    }


def run(*, quick: bool) -> dict[str, Any]:
    nodes = int(os.environ.get("BENCH_SCALE_OUT_NODES", QUICK_NODES if quick else FULL_NODES))
    interval = 1.0 if nodes <= 500 else 2.0
    limit_s = 120.0 if quick else 60 + nodes * 0.3
    batch = QUICK_BATCH_PERCENT if quick else BATCH_PERCENT
    steps = -(-100 // batch)
    baseline = measure(1, 1, nodes, interval, limit_s, batch)
    _log(f"1 api + 1 worker: {baseline['seconds']} s, checks {baseline['checks']['all_passed']}")
    scaled = measure(2, 2, nodes, interval, limit_s, batch)
    _log(f"2 api + 2 workers: {scaled['seconds']} s, checks {scaled['checks']['all_passed']}")
    value, base = scaled["seconds"], baseline["seconds"]
    return {
        "rollout_scale_out_s": {
            "value": round(value, 2) if value is not None else None,
            "unit": "s",
            "baseline": round(base, 2) if base is not None else None,
            "baseline_name": "the same rolling rollout, same fleet size, on 1 api + 1 worker "
            "process (fresh database), same run",
            "ratio": round(value / base, 2) if value and base else None,
            "what": f"create call → completed: rolling, batch_percent {batch} "
            f"({steps} steps), bake_s 0, {nodes} simulated nodes split over the api servers",
            "nodes": nodes,
            "heartbeat_interval_s": interval,
            "checks_passed": scaled["checks"]["all_passed"],
            "baseline_checks_passed": baseline["checks"]["all_passed"],
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "scaled_out": scaled,
            "single": baseline,
        }
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
