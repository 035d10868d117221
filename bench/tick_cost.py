"""What one rollout tick costs as the fleet grows, measured in-process on PostgreSQL.

The engine alone, no HTTP: a database this bench creates and drops, an app built in this process
(as the tests build it), Redis `BENCH_FLEET_REDIS_URL` (db 6; flushed before and after: the
ticks the engine requests land there and are never run). Per fleet size N (100 / 1,000 / 10,000;
QUICK 100 / 1,000 / 3,000) a project of N online nodes is seeded with bulk inserts, and per
repetition a compiled bundle row is inserted (what the compile job leaves behind; no archive is
needed to assign it) and an all-at-once rollout over every node is created and started with
`engine.create`. Then `engine.tick` is timed in three states, each in its own app context as
the `tick_rollout` job runs it:

- `first`: the step starts, N nodes are assigned (one transaction), and the tick reads the
  rollout again and finds nothing more to do.
- `steady`: nothing changed since (every node still on its way): one read, no write.
- `verified`: after every node reported `verified` and heartbeats on the bundle (written in
  bulk): the step bakes, its gates pass (bake 0), it completes and the rollout completes.

Per tick: wall seconds, SQL statements (SQLAlchemy `before_cursor_execute`: an executemany
counts once) and seconds spent in them. The statement count must not grow with N (a count that
grows is a query per node). Baseline: the same tick at the smallest N, so `ratio` = cost(N) /
cost(N0) sits next to `fleet_ratio` = N / N0; "linear or better" is ratio ≤ fleet_ratio. The
marginal µs per node between sizes says more than the ratio, which the fixed part of a tick
flatters; CPU seconds (this process's) are next to the wall ones because the wall includes
waiting for a CPU on a shared machine. `full_gcs` counts the oldest-generation garbage
collections during a tick (they walk every live object). `profile`: cProfile of one more
rollout's ticks at the largest N (not among the samples; functions by own time), so a miss
names its cause.
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import hashlib
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.propagation import _owned_database  # noqa: E402

REDIS_URL = os.environ.get("BENCH_FLEET_REDIS_URL", "redis://127.0.0.1:6379/6")
FULL_SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (100, 1_000, 3_000)
STEADY_TICKS = 5  # steady ticks per repetition (cheap, so more samples)
KINDS = ("first", "steady", "verified")


def _log(message: str) -> None:
    print(f"[tick_cost {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the app and the database ---------------------------------------------------------------


@contextlib.contextmanager
def owned_redis(url: str = REDIS_URL) -> Iterator[str]:
    """Our Redis database, flushed before and after (only this one)."""
    import redis

    connection = redis.Redis.from_url(url)
    connection.flushdb()
    try:
        yield url
    finally:
        connection.flushdb()
        connection.close()


@contextlib.contextmanager
def bench_app(database_url: str, redis_url: str, data_dir: Path) -> Iterator[Any]:
    """The Flask app on `database_url`, migrated to head (as tests/conftest.build_app)."""
    from flask_migrate import upgrade

    from app import create_app
    from sentinel_cp.config import load_settings
    from sentinel_cp.db import db

    settings = load_settings(
        {
            "SENTINEL_ENV": "test",
            "SENTINEL_DATA_DIR": str(data_dir),
            "SECRET_KEY_BASE": "bench-secret-" + "x" * 40,
            "DATABASE_URL": database_url,
        }
    )
    app = create_app(
        {"REDIS_URL": redis_url, "SQLALCHEMY_DATABASE_URI": settings.database_url},
        settings=settings,
    )
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@dataclass
class SqlCounter:
    """Statements (and seconds in them) on the app's engine while `active`."""

    active: bool = False
    statements: int = 0
    seconds: float = 0.0
    texts: dict[str, int] = field(default_factory=dict)
    _started: list[float] = field(default_factory=list)

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.active:
            self.statements += 1
            head = " ".join(statement.split())[:90]
            self.texts[head] = self.texts.get(head, 0) + 1
            self._started.append(time.perf_counter())

    def _after(self, *args: Any) -> None:
        if self.active and self._started:
            self.seconds += time.perf_counter() - self._started.pop()

    @contextlib.contextmanager
    def counting(self) -> Iterator[SqlCounter]:
        self.statements, self.seconds, self.texts, self._started = 0, 0.0, {}, []
        self.active = True
        try:
            yield self
        finally:
            self.active = False


# --- seeding --------------------------------------------------------------------------------

ACTOR_LABEL = "bench"


def seed_project(app: Any, slug: str, nodes: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A project with `nodes` online, healthy nodes (one bulk insert; no audit, no keys)."""
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db
    from sentinel_cp.nodes import Node

    now = datetime.now(UTC)
    with app.app_context():
        project = projects.create_project(Actor.system(ACTOR_LABEL), slug=slug, name=slug)
        db.session.commit()
        ids = [uuid.uuid4() for _ in range(nodes)]
        db.session.execute(
            Node.__table__.insert(),
            [
                {
                    "id": node_id,
                    "project_id": project.id,
                    "name": f"{slug}-{i:05d}",
                    "key_hash": hashlib.sha256(node_id.bytes).hexdigest(),
                    "key_version": 1,
                    "labels": {},
                    "capabilities": [],
                    "metadata": {},
                    "status": "online",
                    "registered_at": now,
                    "last_seen_at": now,
                    "last_heartbeat_at": now,
                    "health": {"status": "healthy"},
                    "metrics": {"error_rate": 0.1},
                }
                for i, node_id in enumerate(ids)
            ],
        )
        db.session.commit()
        return project.id, ids


def seed_bundle(app: Any, project_id: uuid.UUID, version: str) -> str:
    """A compiled bundle row as the compile job leaves it (signed; no archive: nothing here
    downloads it)."""
    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.db import db

    bundle_id = hashlib.sha256(f"{project_id}:{version}".encode()).hexdigest()
    now = datetime.now(UTC)
    with app.app_context():
        db.session.add(
            Bundle(
                id=bundle_id,
                project_id=project_id,
                version=version,
                status="compiled",
                size_bytes=0,
                storage_key=f"bench/{bundle_id}",
                files={},
                manifest={},
                config_sha256=bundle_id,
                signature="bench-signature",
                signing_key_id="bench-key",
                created_at=now,
                compiled_at=now,
            )
        )
        db.session.commit()
    return bundle_id


def create_rollout(app: Any, project_id: uuid.UUID, bundle_id: str) -> uuid.UUID:
    """An all-at-once rollout over every node, created and started by the engine."""
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db
    from sentinel_cp.projects import Project
    from sentinel_cp.rollouts import engine

    with app.app_context():
        project = db.session.get(Project, project_id)
        assert project is not None
        rollout = engine.create(
            Actor.system(ACTOR_LABEL),
            project,
            {"bundle_id": bundle_id, "config": {"strategy": "all_at_once", "bake_s": 0}},
        )
        db.session.commit()
        assert rollout.state == "running", rollout.state
        return rollout.id


def report_all_verified(app: Any, rollout_id: uuid.UUID, bundle_id: str) -> None:
    """What the fleet's reports and heartbeats leave behind, written in bulk: every delivery
    `verified`, every node running the bundle with a healthy heartbeat after its activation."""
    from sqlalchemy import update

    from sentinel_cp.bundles.models import NodeBundleStatus
    from sentinel_cp.db import db
    from sentinel_cp.nodes import Node

    now = datetime.now(UTC)
    activated = now - timedelta(seconds=2)
    with app.app_context():
        db.session.execute(
            update(NodeBundleStatus)
            .where(NodeBundleStatus.rollout_id == rollout_id)
            .values(state="verified", activated_at=activated, verified_at=now, updated_at=now)
        )
        db.session.execute(
            update(Node)
            .where(Node.assigned_rollout_id == rollout_id)
            .values(
                active_bundle_id=bundle_id,
                last_heartbeat_at=now - timedelta(seconds=1),
                health={"status": "healthy"},
            )
        )
        db.session.commit()


# --- measuring ------------------------------------------------------------------------------


@dataclass
class TickSample:
    seconds: float
    cpu_s: float
    statements: int
    sql_seconds: float
    full_gcs: int
    actions: list[str]
    texts: dict[str, int]


def timed_tick(
    app: Any, counter: SqlCounter, rollout_id: uuid.UUID, profile: cProfile.Profile | None = None
) -> TickSample:
    """One `engine.tick` in a fresh app context, as the `tick_rollout` job runs it: wall and
    CPU seconds (this process), statements, and full (oldest-generation) garbage collections."""
    from sentinel_cp.rollouts import engine

    with app.app_context(), counter.counting():
        full_gcs = gc.get_stats()[-1]["collections"]
        started, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        try:
            actions = engine.tick(rollout_id)
        finally:
            if profile is not None:
                profile.disable()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        full_gcs = gc.get_stats()[-1]["collections"] - full_gcs
    return TickSample(
        seconds,
        cpu,
        counter.statements,
        counter.seconds,
        full_gcs,
        [type(a).__name__ for a in actions],
        dict(counter.texts),
    )


def rollout_state(app: Any, rollout_id: uuid.UUID) -> str:
    from sentinel_cp.db import db
    from sentinel_cp.rollouts.models import Rollout

    with app.app_context():
        rollout = db.session.get(Rollout, rollout_id)
        assert rollout is not None
        return str(rollout.state)


def one_rollout(
    app: Any,
    counter: SqlCounter,
    project_id: uuid.UUID,
    version: str,
    profiles: dict[str, cProfile.Profile] | None = None,
) -> dict[str, list[TickSample]]:
    """A fresh bundle and rollout over the project's fleet, and its ticks of every kind
    (each kind cProfiled into `profiles` when given)."""
    bundle_id = seed_bundle(app, project_id, version)
    rollout_id = create_rollout(app, project_id, bundle_id)
    samples: dict[str, list[TickSample]] = {kind: [] for kind in KINDS}

    def tick(kind: str, expected: list[str]) -> None:
        profile = None
        if profiles is not None and kind not in profiles:
            profile = profiles[kind] = cProfile.Profile()
        sample = timed_tick(app, counter, rollout_id, profile)
        assert sample.actions == expected, (kind, sample.actions)
        samples[kind].append(sample)

    tick("first", ["StartStep"])
    for _ in range(STEADY_TICKS):
        tick("steady", [])
    report_all_verified(app, rollout_id, bundle_id)
    tick("verified", ["StartBaking", "CompleteStep", "Complete"])
    assert rollout_state(app, rollout_id) == "completed"
    return samples


def measure_size(
    app: Any, counter: SqlCounter, nodes: int, reps: int, profile: bool
) -> dict[str, Any]:
    """`reps` rollouts over one fleet of `nodes`, every tick kind sampled each time; with
    `profile`, one more rollout run under cProfile (not counted in the samples)."""
    project_id, _ = seed_project(app, f"fleet-{nodes}", nodes)
    samples: dict[str, list[TickSample]] = {kind: [] for kind in KINDS}
    for rep in range(reps):
        for kind, ticks in one_rollout(app, counter, project_id, f"v{rep}").items():
            samples[kind].extend(ticks)
    profiles: dict[str, cProfile.Profile] = {}
    if profile:
        one_rollout(app, counter, project_id, "profiled", profiles)
    return {
        "nodes": nodes,
        "samples": samples,
        "profiles": {kind: _top(p) for kind, p in profiles.items()},
    }


def _top(profile: cProfile.Profile, limit: int = 12) -> list[dict[str, Any]]:
    """The functions that took the most own time (seconds, calls), with where they live."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, calls, cumulative, f"{_short(path)}:{line}({name})"))
    rows.sort(reverse=True)
    return [
        {"function": where, "own_s": round(own, 4), "cumulative_s": round(cum, 4), "calls": calls}
        for own, calls, cum, where in rows[:limit]
    ]


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _by_size(results: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Per fleet size: median wall and CPU seconds, against the smallest size."""
    base = results[0]
    base_s = _median([s.seconds for s in base["samples"][kind]])
    base_cpu = _median([s.cpu_s for s in base["samples"][kind]])
    per_size: list[dict[str, Any]] = []
    for result in results:
        ticks, nodes = result["samples"][kind], result["nodes"]
        seconds = _median([s.seconds for s in ticks])
        cpu = _median([s.cpu_s for s in ticks])
        fleet_ratio = nodes / base["nodes"]
        before = per_size[-1] if per_size else None
        per_size.append(
            {
                "nodes": nodes,
                "tick_s": round(seconds, 4),
                "ratio": round(seconds / base_s, 2),
                "fleet_ratio": fleet_ratio,
                "linear_or_better": seconds / base_s <= fleet_ratio,
                "us_per_node": round(seconds / nodes * 1e6, 1),
                "marginal_us_per_node": round(
                    (seconds - before["tick_s"]) / (nodes - before["nodes"]) * 1e6, 1
                )
                if before
                else None,
                "cpu_s": round(cpu, 4),
                "cpu_ratio": round(cpu / base_cpu, 2) if base_cpu else None,
                "cpu_us_per_node": round(cpu / nodes * 1e6, 1),
                "statements": sorted({s.statements for s in ticks}),
                "sql_s": round(_median([s.sql_seconds for s in ticks]), 4),
                "full_gcs": sorted({s.full_gcs for s in ticks}),
                "samples": len(ticks),
                "tick_s_all": [round(s.seconds, 4) for s in ticks],
            }
        )
    return per_size


def _figures(results: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    base = results[0]
    figures: dict[str, Any] = {}
    for kind in KINDS:
        per_size = _by_size(results, kind)
        largest = per_size[-1]
        statements = {tuple(p["statements"]) for p in per_size}
        figures[f"rollout_tick_{kind}_s"] = {
            "value": largest["tick_s"],
            "unit": "s",
            "baseline": per_size[0]["tick_s"],
            "baseline_name": (
                f"the same tick at {base['nodes']} nodes, same run (median of its samples)"
            ),
            "ratio": largest["ratio"],
            "nodes": largest["nodes"],
            "fleet_ratio": largest["fleet_ratio"],
            "target": "ratio ≤ fleet_ratio (linear or better); statements independent of N",
            "linear_or_better": all(p["linear_or_better"] for p in per_size),
            "linear_or_better_cpu": all(
                p["cpu_ratio"] is not None and p["cpu_ratio"] <= p["fleet_ratio"] for p in per_size
            ),
            "statements_independent_of_n": len(statements) == 1,
            "what": _WHAT[kind],
            "by_size": per_size,
            "profile_at_largest_n": results[-1]["profiles"].get(kind),
            "statements_at_largest_n": results[-1]["samples"][kind][-1].texts,
            "quick": quick,
        }
    return figures


_WHAT = {
    "first": "engine.tick on a started all-at-once rollout: StartStep assigns every node, "
    "then one more read finds nothing to do",
    "steady": "engine.tick with nothing changed (every node still on its way): read only",
    "verified": "engine.tick after every node reported verified: StartBaking, CompleteStep "
    "(gates over every node, bake 0), Complete",
}


def run(*, quick: bool) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    reps = 2 if quick else 3
    counter = SqlCounter()
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="sentinel-bench-tick-") as tmp,
        _owned_database() as database_url,
        owned_redis() as redis_url,
        bench_app(database_url, redis_url, Path(tmp)) as app,
    ):
        with app.app_context():
            from sentinel_cp.db import db

            counter.attach(db.engine)
        for nodes in sizes:
            started = time.monotonic()
            results.append(measure_size(app, counter, nodes, reps, profile=nodes == sizes[-1]))
            medians = {
                kind: round(_median([s.seconds for s in results[-1]["samples"][kind]]), 4)
                for kind in KINDS
            }
            _log(f"{nodes} nodes: {medians} ({time.monotonic() - started:.0f} s)")
    return _figures(results, quick)


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=os.environ.get("QUICK") not in (None, "", "0")), indent=2))
