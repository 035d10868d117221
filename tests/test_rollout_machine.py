"""A state-machine property test of the rollout engine's effectful half, over a real database.

Hypothesis drives one project's fleet through random sequences of: rollouts created (any
strategy, to another bundle or back, overlapping or not), node status reports (in order,
duplicated, out of order, for the wrong bundle), heartbeats (healthy or not, with or without
the active bundle), nodes going silent and the staleness sweep, ticks (each one replayed at the
same instant, some with a skewed clock, queued ones run in any order and more than once), ticks
interrupted between transactions or crashing inside one, and operator actions (a legal one must
succeed, an illegal one must be the domain's `Conflict` and change nothing). Time is a simulated
clock that a rule moves forward; nothing sleeps.

After every step the invariants of the issue are checked on the tables:

1. A node is in at most one non-terminal rollout. A rollback rollout and the original it rolls
   back count as one: the spec keeps the original `rolling_back` (non-terminal) while its linked
   rollback rollout moves the same nodes, and that pair is one rollback, not two claims.
2. No step starts while its rollout is paused, or before every earlier step completed with its
   gates passing (a blue-green `promote` step not before promotion). Checked on the step rows,
   on the audit trail (each `rollout.step_started` row was written while the rollout was
   `running`), and across steps (a step only ever starts inside a tick of a running rollout).
3. A completed rollout's nodes are verified on its bundle (a rollback rollout: on each node's
   own target). The spec lets a step leave nodes behind — `failed` within `max_failures`,
   `skipped` within `max_unavailable` (or after a resume with `skip_unavailable`) — so those
   are allowed within exactly those budgets; every other node's delivery row is `verified` on
   the target, and the tick that completes the rollout sets their `expected_bundle_id`.
4. Every state change has exactly one audit row. In this code a change of the rollout's state
   is written by one row whose `changes.state` is `[before, after]` (`_operator_audit`,
   `_audit_and_publish`, `_start`, `_finish_rolled_back`); a step's transition is written by
   the row of the action that made it (`rollout.step_started`/`step_baking`/`step_completed`/
   `step_failed`, `rollout.failed` with its `step_index`, an operator's `rollout.rolling_back`
   for the step it interrupts). So: replaying a rollout's audit rows in order, from its birth
   state, must reproduce its state, its approval state and every step's state, each row's
   `before` must be the state the replay is in (a missing, duplicated or misordered row breaks
   the chain). Node reports and node status changes get one `node.*` row each, checked by the
   rules that cause them.
5. Replaying a tick at the same instant changes nothing (every tick rule runs each tick twice
   and compares every table).

Runs on both backends of the `app` fixture. `SENTINEL_MACHINE_EXAMPLES` and
`SENTINEL_MACHINE_STEPS` make a longer local run (`SENTINEL_MACHINE_EXAMPLES=500 pytest …`),
`SENTINEL_MACHINE_STATS=1` prints what the examples reached.

Two engine bugs this machine found are fixed and kept as minimal replays at the end of the
file: rolling back a finished rollout after another rollout took its nodes (invariant 1, now a
409 `nodes_busy`), and a rollback with nothing to return audited out of order (invariant 4).
"""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from bundle_helpers import CONFIG, operator_key, route_config, run_jobs, setup_project, submit
from conftest import _truncate_all
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import event as orm_event
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sentinel_cp import audit, jobqueue
from sentinel_cp import nodes as fleet
from sentinel_cp.audit import Actor, AuditLog
from sentinel_cp.bundles import distribution
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, Invalid, NotFound, RateLimited
from sentinel_cp.nodes import Node
from sentinel_cp.projects import Project
from sentinel_cp.rollouts import engine
from sentinel_cp.rollouts.models import ACTIVE_STATES, Rollout, RolloutApproval, RolloutStep
from sentinel_cp.rollouts.types import Action, RecordGates, RolloutConfig

EXAMPLES = int(os.environ.get("SENTINEL_MACHINE_EXAMPLES", "20"))
STEPS = int(os.environ.get("SENTINEL_MACHINE_STEPS", "35"))
# Shrinking a failure of this machine can take Hypothesis its full five minutes per backend;
# SENTINEL_MACHINE_SHRINK=0 reports the unshrunk sequence at once.
PHASES = [
    phase
    for phase in Phase
    if phase is not Phase.shrink or os.environ.get("SENTINEL_MACHINE_SHRINK", "1") != "0"
]

BUNDLES = ("A", "B", "C")  # nodes start on A; only C is ever revoked
PROGRESS = ("assigned", "downloaded", "staged", "activated", "verified")
FINAL = ("verified", "failed", "rolled_back", "skipped")
REPORTABLE = ("downloaded", "staged", "activated", "verified", "failed", "rolled_back")
ACTIVE_STEP = ("running", "baking")
KEEP = "keep"  # a heartbeat that does not mention its active bundle


# What the machine reached, over all examples (printed with SENTINEL_MACHINE_STATS=1): a run
# that never completes a rollout or never resumes one proves little, and this shows it.
REACHED: Counter[str] = Counter()


class WorkerCrash(Exception):
    """The worker process died here."""


# --- the database as values -----------------------------------------------------------------


def dump() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order: "exactly as before" compares these."""
    result = {}
    for table in db.metadata.sorted_tables:
        query = table.select().order_by(*table.primary_key.columns)
        result[table.name] = [tuple(row) for row in db.session.execute(query)]
    db.session.rollback()
    return result


def snapshot_rows() -> dict[str, list[dict[str, Any]]]:
    rows = {
        table.name: [dict(row._mapping) for row in db.session.execute(table.select())]
        for table in db.metadata.sorted_tables
    }
    db.session.rollback()
    return rows


def restore(rows: dict[str, list[dict[str, Any]]]) -> None:
    for table in db.metadata.sorted_tables:
        if rows.get(table.name):
            db.session.execute(table.insert(), rows[table.name])
    db.session.commit()


@dataclass
class Outbox:
    """What the domain asked for after commits: jobs to enqueue and events to publish."""

    jobs: list[tuple[str, tuple[Any, ...], str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def enqueue(self, name: str, args: tuple[Any, ...], job_id: str, queue: str) -> None:
        self.jobs.append((name, args, job_id, queue))

    def publish(self, payloads: list[dict[str, Any]]) -> None:
        self.events.extend(payloads)


def may_move(current: str, new: str) -> bool:
    """The delivery state machine of spec/rollouts.md, written out independently."""
    if current in FINAL:
        return False
    if new in ("failed", "rolled_back"):
        return True
    return PROGRESS.index(new) > PROGRESS.index(current)


@contextmanager
def crashing(point: str) -> Iterator[None]:
    """The worker dies inside the tick's first transaction, at `point`."""
    if point == "at_commit":

        def die(session: Session) -> None:
            raise WorkerCrash("killed at COMMIT")

        orm_event.listen(Session, "before_commit", die)
        try:
            yield
        finally:
            orm_event.remove(Session, "before_commit", die)
        return
    original = engine._audit_and_publish

    def after_audit(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        raise WorkerCrash("killed after the audit row")

    def before_audit(*args: Any, **kwargs: Any) -> None:
        raise WorkerCrash("killed before the audit row")

    with mock.patch.object(
        engine, "_audit_and_publish", after_audit if point == "after_audit" else before_audit
    ):
        yield


# --- the machine ----------------------------------------------------------------------------

settings_strategy = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(["rolling", "rolling", "canary", "blue_green", "all_at_once"]),
        "batch_size": st.integers(1, 3),
        "max_failures": st.sampled_from([0, 0, 1, "50%"]),
        "max_unavailable": st.sampled_from([0, 0, 1]),
        "bake_s": st.sampled_from([0, 0, 30, 90]),
        "gate_grace_s": st.sampled_from([0, 30, 60]),
        "progress_deadline_s": st.sampled_from([120, 600]),
        "on_failure": st.sampled_from(["pause", "rollback"]),
        "error_gate": st.booleans(),
    }
)
picks = st.integers(0, 31)
node_picks = st.integers(0, 7)


class RolloutMachine(RuleBasedStateMachine):
    """One project, 4–7 nodes on bundle A, bundles B and C to move them to (set by the test)."""

    app: Any = None
    base: dict[str, list[dict[str, Any]]] = {}
    bundle_ids: dict[str, str] = {}
    epoch: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    outbox: Outbox = Outbox()

    def __init__(self) -> None:
        super().__init__()
        _truncate_all(self.app)
        self.context = self.app.app_context()
        self.context.push()
        restore(self.base)
        self.outbox.jobs.clear()
        self.outbox.events.clear()
        project_id = db.session.scalar(select(Project.id))
        assert project_id is not None
        self.project_id: uuid.UUID = project_id
        self.clock = self.epoch
        self.node_ids: list[uuid.UUID] = []
        self.names: dict[uuid.UUID, str] = {}
        self.keys: dict[uuid.UUID, str] = {}
        self.silent: set[uuid.UUID] = set()
        self.revoked: set[str] = set()
        self.order: list[uuid.UUID] = []  # rollouts in creation order (their ids are random)
        self.creator = uuid.UUID(int=1)
        self.approvers = (uuid.UUID(int=2), uuid.UUID(int=3))
        self.ticked: set[uuid.UUID] = set()  # rollouts ticked by the current rule
        self.seen: dict[uuid.UUID, Any] = {}  # the rollout rows after the last step
        self.seen_starts: dict[tuple[uuid.UUID, int], datetime | None] = {}
        db.session.rollback()

    def teardown(self) -> None:
        try:
            db.session.rollback()
            for row in self._rollouts().values():
                REACHED[
                    f"rollout ended {row.state}" + (" (a rollback)" if row.rollback_of else "")
                ] += 1
            verdict = audit.verify_chain(self.project_id)
            assert verdict.valid, verdict
        finally:
            db.session.rollback()
            self.context.pop()

    # -- reading -----------------------------------------------------------------------------

    def _bundle(self, name: str) -> str:
        return self.bundle_ids[name]

    def _rollouts(self) -> dict[uuid.UUID, Any]:
        rows = db.session.execute(select(Rollout.__table__)).all()
        return {row.id: row for row in rows}

    def _rollout(self, rollout_id: uuid.UUID) -> Any:
        return db.session.execute(select(Rollout.__table__).where(Rollout.id == rollout_id)).one()

    def _steps(self) -> dict[uuid.UUID, list[Any]]:
        rows = db.session.execute(select(RolloutStep.__table__).order_by(RolloutStep.index)).all()
        by_rollout: dict[uuid.UUID, list[Any]] = {}
        for row in rows:
            by_rollout.setdefault(row.rollout_id, []).append(row)
        return by_rollout

    def _deliveries(self) -> dict[tuple[uuid.UUID, uuid.UUID], Any]:
        """The newest delivery row per (rollout, node), as the engine reads them."""
        rows = db.session.execute(
            select(NodeBundleStatus.__table__).order_by(NodeBundleStatus.id)
        ).all()
        return {(row.rollout_id, row.node_id): row for row in rows if row.rollout_id is not None}

    def _newest_delivery(self, node_id: uuid.UUID, bundle_id: str) -> Any:
        return db.session.execute(
            select(NodeBundleStatus.__table__)
            .where(NodeBundleStatus.node_id == node_id, NodeBundleStatus.bundle_id == bundle_id)
            .order_by(NodeBundleStatus.id.desc())
            .limit(1)
        ).first()

    def _node(self, node_id: uuid.UUID) -> Any:
        return db.session.execute(
            select(
                Node.id,
                Node.status,
                Node.last_seen_at,
                Node.last_heartbeat_at,
                Node.active_bundle_id,
                Node.assigned_bundle_id,
                Node.expected_bundle_id,
            ).where(Node.id == node_id)
        ).one()

    def _audit_head(self) -> int:
        # Nodes' rows are linked by the audit linker thread on PostgreSQL: wait for it, so
        # every row committed so far has its sequence number.
        assert audit.linker.wait_idle()
        return int(
            db.session.scalar(
                select(func.coalesce(func.max(AuditLog.seq), 0)).where(
                    AuditLog.chain == str(self.project_id)
                )
            )
        )

    def _audit_since(self, seq: int) -> list[str]:
        assert audit.linker.wait_idle()
        return list(
            db.session.scalars(
                select(AuditLog.action)
                .where(AuditLog.chain == str(self.project_id), AuditLog.seq > seq)
                .order_by(AuditLog.seq)
            )
        )

    def _refresh_order(self) -> None:
        """Rollback rollouts the engine created join the order after their original."""
        known = set(self.order)
        new = [row for row in self._rollouts().values() if row.id not in known]
        for row in new:
            assert row.rollback_of in known, "only the engine's rollbacks appear unasked"
        for row in sorted(new, key=lambda r: self.order.index(r.rollback_of)):
            self.order.append(row.id)

    def _pick(self, pick: int) -> uuid.UUID | None:
        self._refresh_order()
        return self.order[pick % len(self.order)] if self.order else None

    def _pick_node(self, pick: int) -> uuid.UUID:
        return self.node_ids[pick % len(self.node_ids)]

    def _busy(self) -> dict[uuid.UUID, set[uuid.UUID]]:
        """Node → the non-terminal rollouts whose plan holds it."""
        rollouts = self._rollouts()
        busy: dict[uuid.UUID, set[uuid.UUID]] = {}
        for rollout_id, steps in self._steps().items():
            if rollouts[rollout_id].state in ACTIVE_STATES:
                for step in steps:
                    for node in step.node_ids:
                        busy.setdefault(uuid.UUID(node), set()).add(rollout_id)
        return busy

    # -- acting (each helper checks what its action must have done) ---------------------------

    def _heartbeat(
        self,
        node_id: uuid.UUID,
        *,
        health: str | None = "healthy",
        active: str | None = KEEP,
        error_rate: float = 0.1,
    ) -> None:
        before = self._node(node_id)
        head = self._audit_head()
        report: dict[str, Any] = {"metrics": {"error_rate": error_rate}}
        if health is not None:
            report["health"] = {"status": health}
        if active != KEEP:
            report["active_bundle_id"] = active
        too_fast = (
            before.last_heartbeat_at is not None
            and self.clock - before.last_heartbeat_at < fleet.MIN_HEARTBEAT_GAP
        )
        ctx = fleet.authenticate_key(self.keys[node_id])
        try:
            fleet.record_heartbeat(ctx, report, now=self.clock)
        except RateLimited:
            db.session.rollback()
            assert too_fast, "a heartbeat a second or more after the last one was refused"
            return
        db.session.commit()
        assert not too_fast, "two heartbeats within a second were both accepted"
        after = self._node(node_id)
        assert (after.status, after.last_heartbeat_at) == ("online", self.clock)
        if active != KEEP:
            assert after.active_bundle_id == active
        went_online = ["node.online"] if before.status != "online" else []
        assert self._audit_since(head) == went_online, "a node status change is audited once"
        db.session.rollback()

    def _report(self, node_id: uuid.UUID, bundle_id: str, state: str) -> bool:
        """One status report; True when it moved the delivery row."""
        row = self._newest_delivery(node_id, bundle_id)
        head = self._audit_head()
        before = dump()
        try:
            _, changed = distribution.report_status(
                node_id=node_id,
                node_name=self.names[node_id],
                project_id=self.project_id,
                bundle_id=bundle_id,
                state=state,
                reason="agent says so" if state in ("failed", "rolled_back") else None,
                logs=None,
                now=self.clock,
            )
        except NotFound:
            db.session.rollback()
            assert row is None, "a report for an assigned bundle was not found"
            assert dump() == before
            return False
        except Conflict as exc:
            db.session.rollback()
            assert row is not None and row.state != state and not may_move(row.state, state)
            assert exc.code == "invalid_transition"
            assert dump() == before, "a refused report changed something"
            return False
        db.session.commit()
        assert row is not None
        if not changed:
            assert row.state == state, "only a repeated report may change nothing"
            assert dump() == before, "a repeated report changed something"
            return False
        assert may_move(row.state, state), f"{row.state} → {state} was accepted"
        moved = db.session.get(NodeBundleStatus, row.id, populate_existing=True)
        assert moved is not None and moved.state == state
        assert self._audit_since(head) == [f"node.bundle_{state}"], "one audit row per report"
        if state in ("activated", "verified"):
            assert self._node(node_id).active_bundle_id == bundle_id
        db.session.rollback()
        return True

    def _tick(self, rollout_id: uuid.UUID, now: datetime) -> list[Action]:
        """One tick, then the same tick again: the replay must change nothing."""
        row = self._rollout(rollout_id)
        before = dump() if row.state != "running" else None
        actions = engine.tick(rollout_id, now=now)
        self.ticked.add(rollout_id)
        for action in actions:
            REACHED[f"tick applied {action.KIND}: {action.reason}"] += 1
        settled = dump()
        if row.state != "running":
            assert actions == [], "a rollout that is not running moved"
            assert settled == before, "a tick of a rollout that is not running wrote something"
        again = engine.tick(rollout_id, now=now)
        assert all(isinstance(a, RecordGates) and not a.changed for a in again), again
        assert dump() == settled, f"replaying the tick changed the database: {again}"
        after = self._rollout(rollout_id)
        if row.state != "completed" and after.state == "completed":
            self._check_expected_bundles(after)
        db.session.rollback()
        return actions

    def _check_expected_bundles(self, rollout: Any) -> None:
        """The tick that completes a rollout expects each verified node on its target."""
        steps = self._steps().get(rollout.id, [])
        deliveries = self._deliveries()
        targets = {k: v for step in steps for k, v in (step.node_targets or {}).items()}
        for step in steps:
            for raw in step.node_ids:
                delivery = deliveries.get((rollout.id, uuid.UUID(raw)))
                if delivery is not None and delivery.state == "verified":
                    expected = self._node(uuid.UUID(raw)).expected_bundle_id
                    assert expected == targets.get(raw, rollout.bundle_id)
        REACHED[
            f"completed a {'rollback' if rollout.rollback_of else rollout.strategy} rollout"
        ] += 1

    def _operate(self, legal: bool | None, call: Callable[[], Any]) -> bool:
        """An operator action: legal ones succeed, illegal ones are a Conflict that writes
        nothing (any other exception fails the test); `None`: either is right."""
        before = dump()
        try:
            call()
        except Conflict:
            db.session.rollback()
            assert legal is not True, "a legal operator action was refused"
            assert dump() == before, "a refused operator action changed something"
            return False
        db.session.commit()
        assert legal is not False, "an illegal operator action was accepted"
        self._refresh_order()
        return True

    def _held_elsewhere(self, rollout_id: uuid.UUID) -> bool:
        """Whether another non-terminal rollout holds one of this rollout's nodes."""
        busy = self._busy()
        mine = {uuid.UUID(n) for step in self._steps().get(rollout_id, []) for n in step.node_ids}
        return any(busy.get(node, set()) - {rollout_id} for node in mine)

    # -- setup -------------------------------------------------------------------------------

    @initialize(size=st.integers(4, 7), first=settings_strategy, everyone=st.booleans())
    def register_fleet(self, size: int, first: dict[str, Any], everyone: bool = True) -> None:
        """The fleet on bundle A, and a first rollout of it to B (later ones are rules)."""
        project = db.session.get(Project, self.project_id)
        assert project is not None
        for i in range(size):
            node, key, _ = fleet.register_node(
                project,
                presented_token=None,
                name=f"edge-{i}",
                labels={},
                capabilities=[],
                version=None,
                ip=None,
                hostname=None,
                metadata={},
                now=self.clock,
            )
            self.node_ids.append(node.id)
            self.names[node.id] = node.name
            self.keys[node.id] = key
        db.session.commit()
        for node_id in self.node_ids:
            self._heartbeat(node_id, active=self._bundle("A"))
        half = None if everyone else set(range(size // 2))
        self.create_rollout("B", first, half, skip_busy=False, start=True, approvals=0)

    # -- time and the fleet ------------------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 2, 5, 15, 31, 61, 125, 301, 700]))
    def time_passes(self, seconds: int) -> None:
        self.clock += timedelta(seconds=seconds)

    @rule(
        pick=node_picks,
        health=st.sampled_from(["healthy", "healthy", "unhealthy", None]),
        active=st.sampled_from([KEEP, KEEP, "assigned", "A", "B", "C", None]),
        error_rate=st.sampled_from([0.1, 0.1, 12.0]),
    )
    def node_heartbeats(
        self, pick: int, health: str | None, active: str | None, error_rate: float
    ) -> None:
        """One heartbeat, healthy or not, with or without (or with a wrong) active bundle."""
        node_id = self._pick_node(pick)
        if node_id in self.silent:
            return
        if active == "assigned":
            active = self._node(node_id).assigned_bundle_id
        elif active in BUNDLES:
            active = self._bundle(active)
        self._heartbeat(node_id, health=health, active=active, error_rate=error_rate)

    @rule(
        pick=node_picks,
        which=st.sampled_from(["assigned", "assigned", "A", "B", "C"]),
        state=st.sampled_from(REPORTABLE),
    )
    def node_reports(self, pick: int, which: str, state: str) -> None:
        """Any report, in or out of order, repeated, or for a bundle never assigned."""
        node_id = self._pick_node(pick)
        if node_id in self.silent:
            return
        bundle = self._node(node_id).assigned_bundle_id if which == "assigned" else None
        self._report(node_id, bundle or self._bundle(which if which in BUNDLES else "B"), state)

    @rule(
        pick=node_picks,
        outcome=st.sampled_from(["verified", "verified", "activated", "failed", "rolled_back"]),
        healthy=st.booleans(),
    )
    def node_applies_its_assignment(self, pick: int, outcome: str, healthy: bool) -> None:
        """What an agent does: walk its assignment forward, then heartbeat what it runs."""
        node_id = self._pick_node(pick)
        if node_id in self.silent:
            return
        if self._apply_assignment(node_id, outcome) and outcome in ("verified", "activated"):
            self.clock += timedelta(seconds=1)
            self._heartbeat(node_id, health="healthy" if healthy else "unhealthy")

    def _apply_assignment(self, node_id: uuid.UUID, outcome: str = "verified") -> bool:
        assigned = self._node(node_id).assigned_bundle_id
        row = self._newest_delivery(node_id, assigned) if assigned else None
        if row is None or row.state in FINAL:
            return False
        path = {
            "verified": PROGRESS[1:],
            "activated": PROGRESS[1:4],
            "failed": ("downloaded", "failed"),
            "rolled_back": ("downloaded", "staged", "activated", "rolled_back"),
        }[outcome]
        for state in path:
            if state in PROGRESS and PROGRESS.index(state) <= PROGRESS.index(row.state):
                continue
            assert self._report(node_id, assigned, state), f"{row.state} → {state} refused"
        return True

    @rule(pick=node_picks, silent=st.booleans())
    def node_goes_silent_or_comes_back(self, pick: int, silent: bool) -> None:
        node_id = self._pick_node(pick)
        if silent:
            self.silent.add(node_id)
        elif node_id in self.silent:
            self.silent.discard(node_id)
            self._heartbeat(node_id)

    @rule()
    def staleness_sweep(self) -> None:
        project = db.session.get(Project, self.project_id)
        assert project is not None
        cutoff = self.clock - timedelta(seconds=project.config.staleness_timeout_s)
        stale = {
            node_id
            for node_id in self.node_ids
            if (row := self._node(node_id)).status == "online" and row.last_seen_at < cutoff
        }
        head = self._audit_head()
        flipped = fleet.mark_stale_nodes(now=self.clock)
        db.session.commit()
        assert flipped == len(stale)
        assert stale <= {n for n in self.node_ids if self._node(n).status == "offline"}
        assert self._audit_since(head) == ["node.offline"] * len(stale), "one row per node"
        db.session.rollback()

    @rule(
        healthy=st.sampled_from([True, True, True, False]),
        seconds=st.sampled_from([1, 1, 10, 31]),
        rounds=st.integers(1, 4),
    )
    def fleet_converges(self, healthy: bool, seconds: int, rounds: int) -> None:
        """`rounds` times: every reachable node applies its assignment, time passes, every
        reachable node heartbeats, and workers run the queued ticks (how rollouts progress)."""
        for _ in range(rounds):
            for node_id in self.node_ids:
                if node_id not in self.silent:
                    self._apply_assignment(node_id)
            self.clock += timedelta(seconds=seconds)
            for node_id in self.node_ids:
                if node_id not in self.silent:
                    self._heartbeat(node_id, health="healthy" if healthy else "unhealthy")
            self._run_queue(None)

    # -- rollouts ----------------------------------------------------------------------------

    @rule(
        bundle=st.sampled_from(["B", "B", "A", "C"]),
        values=settings_strategy,
        subset=st.one_of(st.none(), st.sets(node_picks, min_size=1, max_size=4)),
        skip_busy=st.booleans(),
        start=st.sampled_from([True, True, True, True, True, False]),
        approvals=st.sampled_from([0, 0, 0, 0, 0, 1]),
    )
    def create_rollout(
        self,
        bundle: str,
        values: dict[str, Any],
        subset: set[int] | None,
        skip_busy: bool,
        start: bool,
        approvals: int,
    ) -> None:
        """A rollout of any strategy and settings, to any bundle, maybe overlapping others;
        the project asks for `approvals` approvals at the time."""
        config = dict(values)
        if config["strategy"] != "rolling":
            del config["batch_size"]
        if config.pop("error_gate"):
            config["health_gates"] = {"heartbeat_healthy": True, "max_error_rate": 5}
        if subset is None:
            targets = set(self.node_ids)
            selector: dict[str, Any] = {"all": True}
        else:
            targets = {self._pick_node(i) for i in subset}
            selector = {"node_ids": sorted(str(n) for n in targets)}
        bundle_id = self._bundle(bundle)
        revoked = bundle in self.revoked
        busy = {n for n in targets if n in self._busy()}
        kept = targets - busy
        project = db.session.get(Project, self.project_id)
        assert project is not None
        project.settings = {**project.settings, "approvals_required": approvals}
        db.session.commit()
        project = db.session.get(Project, self.project_id)
        assert project is not None
        before = dump()
        try:
            rollout = engine.create(
                Actor("user", str(self.creator), "creator@example.com"),
                project,
                {
                    "bundle_id": bundle_id,
                    "target_selector": selector,
                    "config": config,
                    "start": start,
                    "skip_busy_nodes": skip_busy,
                },
                user_id=self.creator,
                now=self.clock,
            )
        except Conflict as exc:
            db.session.rollback()
            assert dump() == before
            if revoked:
                assert exc.code == "bundle_revoked"
            else:
                assert exc.code == "nodes_busy" and busy and not skip_busy
            REACHED["create refused: " + exc.code] += 1
            return
        except Invalid as exc:
            db.session.rollback()
            assert dump() == before
            assert not kept and skip_busy, exc.fields
            return
        db.session.commit()
        assert not revoked and (skip_busy or not busy), "an overlapping rollout was created"
        self.order.append(rollout.id)
        row = self._rollout(rollout.id)
        planned = {uuid.UUID(n) for s in self._steps()[rollout.id] for n in s.node_ids}
        assert planned == kept
        assert row.state == ("running" if start and not approvals else "pending")
        assert row.approval_state == ("pending_approval" if approvals else "not_required")
        db.session.rollback()

    @precondition(lambda self: self.order)
    @rule(pick=picks, skew=st.sampled_from([0, 0, 0, 3]))
    def tick(self, pick: int, skew: int) -> None:
        """A tick of any rollout (running or not), possibly on a worker whose clock lags."""
        rollout_id = self._pick(pick)
        assert rollout_id is not None
        self._tick(rollout_id, self.clock - timedelta(seconds=skew))

    @rule(rng=st.randoms(use_true_random=False))
    def workers_run_the_queue(self, rng: random.Random) -> None:
        """The cron sweep asks for a tick of every running rollout; workers then run every
        queued tick, in any order, duplicates included."""
        engine.sweep(now=self.clock)
        self._run_queue(rng)

    def _run_queue(self, rng: random.Random | None) -> None:
        requested = [
            uuid.UUID(args[0]) for name, args, _, _ in self.outbox.jobs if name == "tick_rollout"
        ]
        self.outbox.jobs.clear()
        if rng is not None:
            rng.shuffle(requested)
        for rollout_id in requested:
            self._tick(rollout_id, self.clock)

    @precondition(lambda self: self.order)
    @rule(
        pick=picks,
        committed=st.integers(0, 2),
        point=st.sampled_from(["before_audit", "after_audit", "at_commit"]),
    )
    def worker_crashes(self, pick: int, committed: int, point: str) -> None:
        """A worker dies after `committed` transactions of a tick, and the next one dies inside
        its first transaction: the database must be exactly as the last commit left it, and a
        later tick carries on."""
        rollout_id = self._pick(pick)
        assert rollout_id is not None
        with mock.patch.object(engine, "MAX_ACTIONS_PER_TICK", committed):
            done = engine.tick(rollout_id, now=self.clock)
        assert len(done) <= committed
        self.ticked.add(rollout_id)
        settled = dump()
        outbox = (len(self.outbox.jobs), len(self.outbox.events))
        with crashing(point):
            try:
                engine.tick(rollout_id, now=self.clock)
                crashed = False
            except WorkerCrash:
                crashed = True
            finally:
                db.session.rollback()
        REACHED[
            f"worker crashed {point} after {len(done)} commit(s)"
            if crashed
            else "crash point not reached"
        ] += 1
        assert dump() == settled, "a crashed transaction left something behind"
        assert (len(self.outbox.jobs), len(self.outbox.events)) == outbox, (
            "a crashed transaction enqueued a job or published an event"
        )
        self._tick(rollout_id, self.clock)

    # -- operators ---------------------------------------------------------------------------

    def _legality(self, action: str, row: Any, user_id: uuid.UUID) -> tuple[bool, tuple[str, ...]]:
        """Whether `action` is legal on rollout `row` for `user_id` (the spec's operator
        actions), and the states it may leave the rollout in."""
        approved_before = db.session.scalar(
            select(func.count())
            .select_from(RolloutApproval)
            .where(RolloutApproval.rollout_id == row.id, RolloutApproval.user_id == user_id)
        )
        awaiting_approval = row.state == "pending" and row.approval_state == "pending_approval"
        return {
            "pause": (row.state == "running", ("paused",)),
            "resume": (
                (row.state == "paused" and row.reason != "awaiting_promotion")
                or (row.state == "pending" and row.approval_state in ("not_required", "approved")),
                ("running",),
            ),
            "cancel": (row.state in ("pending", "running", "paused"), ("cancelled",)),
            "rollback": (
                row.state in ("running", "paused", "failed", "completed")
                and row.rollback_of is None,
                ("rolling_back", "rolled_back"),
            ),
            "approve": (
                awaiting_approval and row.created_by_user_id != user_id and not approved_before,
                ("running",),  # one approval is all the project asks for
            ),
            "reject": (awaiting_approval, ("pending",)),
            "promote": (row.state == "paused" and row.reason == "awaiting_promotion", ("running",)),
        }[action]

    @precondition(lambda self: self.order)
    @rule(
        action=st.sampled_from(
            ["pause", "resume", "cancel", "rollback", "approve", "reject", "promote"]
        ),
        pick=picks,
        eligible=st.booleans(),
        who=st.sampled_from(["creator", "first", "second"]),
        skip_unavailable=st.booleans(),
    )
    def operator_acts(
        self, action: str, pick: int, eligible: bool, who: str, skip_unavailable: bool
    ) -> None:
        """An operator action on any rollout (`eligible`: on one where it is legal, if any):
        legal ones must succeed and do what they say, illegal ones must be the domain's
        Conflict and change nothing."""
        user_id = {"creator": self.creator, "first": self.approvers[0]}.get(who, self.approvers[1])
        actor = Actor("user", str(user_id), f"{who}@example.com")
        rollout_id = self._pick(pick)
        assert rollout_id is not None
        if eligible:
            legal_ones = [
                r for r in self.order if self._legality(action, self._rollout(r), user_id)[0]
            ]
            if legal_ones:
                rollout_id = legal_ones[pick % len(legal_ones)]
        row = self._rollout(rollout_id)
        legal: bool | None
        legal, expected = self._legality(action, row, user_id)
        if action == "rollback" and legal and self._held_elsewhere(rollout_id):
            # Rolling back a finished rollout whose nodes another rollout took since: the spec
            # does not say whether that is a 409 or a rollback of the other nodes only; either
            # is fine here, and invariant 1 judges what a success did.
            legal = None
        calls: dict[str, Callable[[], Any]] = {
            "pause": lambda: engine.pause(actor, rollout_id, reason="look", now=self.clock),
            "resume": lambda: engine.resume(
                actor, rollout_id, reason=None, skip_unavailable=skip_unavailable, now=self.clock
            ),
            "cancel": lambda: engine.cancel(actor, rollout_id, reason="no", now=self.clock),
            "rollback": lambda: engine.rollback(actor, rollout_id, reason="bad", now=self.clock),
            "approve": lambda: engine.approve(
                actor, rollout_id, user_id=user_id, comment="ok", now=self.clock
            ),
            "reject": lambda: engine.reject(
                actor, rollout_id, user_id=user_id, comment="not now", now=self.clock
            ),
            "promote": lambda: engine.promote(actor, rollout_id, reason=None, now=self.clock),
        }
        if self._operate(legal, calls[action]):
            after = self._rollout(rollout_id)
            assert after.state in expected, f"{action} left the rollout {after.state}"
            REACHED[f"operator {action}: {row.state} → {after.state}"] += 1
            db.session.rollback()

    def _waiting_for_an_operator(self) -> bool:
        return any(
            row.state == "paused" or (row.state == "pending" and row.approval_state != "rejected")
            for row in self.seen.values()
        )

    @precondition(lambda self: self._waiting_for_an_operator())
    @rule(pick=picks, who=st.sampled_from(["first", "second"]), skip_unavailable=st.booleans())
    def operator_attends_to_a_waiting_rollout(
        self, pick: int, who: str, skip_unavailable: bool
    ) -> None:
        """Paused and pending rollouts are what operators come for: one of the resumes,
        approvals or promotions that are legal now (a rejected rollout waits for nothing)."""
        user_id = self.approvers[0] if who == "first" else self.approvers[1]
        self._refresh_order()
        choices = [
            (action, index)
            for index, rollout_id in enumerate(self.order)
            for action in ("resume", "approve", "promote")
            if self._legality(action, self._rollout(rollout_id), user_id)[0]
        ]
        if choices:
            action, index = choices[pick % len(choices)]
            self.operator_acts(action, index, False, who, skip_unavailable)

    @precondition(lambda self: "C" not in self.revoked)
    @rule()
    def bundle_c_is_revoked(self) -> None:
        """An operator revokes C: rollouts to it fail, rollbacks to it cannot return there."""
        bundle = db.session.get(Bundle, self._bundle("C"))
        assert bundle is not None
        actor = Actor("user", str(self.approvers[0]), "ops@example.com")
        distribution.revoke(actor, bundle, reason="cve", now=self.clock)
        db.session.commit()
        self.revoked.add("C")

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def a_node_is_in_at_most_one_live_rollout(self) -> None:
        # Found a bug (fixed): rolling back a finished rollout whose nodes another live
        # rollout took since (replay:
        # test_rolling_back_a_finished_rollout_leaves_nodes_another_rollout_holds_alone).
        rollouts = self._rollouts()
        for node_id, holders in self._busy().items():
            # a rollback rollout is its original's rollback, not a second claim on the node
            units = {rollouts[r].rollback_of or r for r in holders}
            assert len(units) <= 1, (
                f"{self.names.get(node_id)} is in {len(units)} non-terminal rollouts: "
                + ", ".join(f"{rollouts[r].state} {rollouts[r].strategy}" for r in holders)
            )
        db.session.rollback()

    @invariant()
    def steps_start_in_order_after_passing_gates(self) -> None:
        rollouts = self._rollouts()
        for rollout_id, steps in self._steps().items():
            rollout = rollouts[rollout_id]
            open_step = None
            for step in steps:
                if step.state == "pending":
                    continue
                assert open_step is None, (
                    f"step {step.index} is {step.state} after step {open_step} did not complete"
                )
                if step.kind == "promote":
                    assert rollout.promoted, "a promote step started before promotion"
                if step.state == "completed":
                    assert step.reason == "step_skipped" or (
                        (step.gate_verdict or {}).get("state") == "passing"
                    ), f"step {step.index} completed without passing gates"
                else:
                    open_step = step.index
            states = [s.state for s in steps]
            started = [s for s in states if s != "pending"]
            assert states[: len(started)] == started, f"a later step started first: {states}"
            if rollout.state == "completed":
                assert set(states) <= {"completed"}, states
        db.session.rollback()

    @invariant()
    def steps_start_only_in_ticks_of_running_rollouts(self) -> None:
        rollouts = self._rollouts()
        for rollout_id, steps in self._steps().items():
            for step in steps:
                key = (rollout_id, step.index)
                if step.started_at is not None and step.started_at != self.seen_starts.get(key):
                    assert rollout_id in self.ticked, f"step {step.index} started outside a tick"
                    before = self.seen.get(rollout_id)
                    was = before.state if before else "new"
                    if before is None and rollouts[rollout_id].rollback_of:
                        was = "running"  # a rollback is born running, in this very step
                    assert was == "running", f"step {step.index} started while {was}"
                self.seen_starts[key] = step.started_at
        self.seen = rollouts
        self.ticked = set()
        db.session.rollback()

    @invariant()
    def completed_rollouts_are_verified_on_their_bundle(self) -> None:
        deliveries = self._deliveries()
        steps_by_rollout = self._steps()
        for rollout in self._rollouts().values():
            if rollout.state != "completed":
                continue
            config = RolloutConfig.from_dict(rollout.config)
            for step in steps_by_rollout.get(rollout.id, []):
                targets = step.node_targets or {}
                counts = {"verified": 0, "failed": 0, "skipped": 0}
                for raw in step.node_ids:
                    row = deliveries.get((rollout.id, uuid.UUID(raw)))
                    assert row is not None, f"{raw} of a completed rollout was never assigned"
                    if row.state in ("failed", "rolled_back"):
                        counts["failed"] += 1
                    elif row.state == "skipped":
                        counts["skipped"] += 1
                    else:
                        assert row.state == "verified", (
                            f"a node of a completed rollout is {row.state}"
                        )
                        assert row.bundle_id == targets.get(raw, rollout.bundle_id)
                        counts["verified"] += 1
                assert counts["failed"] <= config.failure_budget(len(step.node_ids)), counts
                if not step.skip_unavailable:
                    assert counts["skipped"] <= config.max_unavailable, counts
                if step.reason != "step_skipped":
                    assert counts["verified"] >= 1, "a step completed with no node on the bundle"
        db.session.rollback()

    @invariant()
    def every_state_change_has_exactly_one_audit_row(self) -> None:
        # Found a bug (fixed): a rollback with nothing to return finished inside
        # `_create_rollback`, so the original's `rollout.rolled_back` row came before the row
        # that moved it to `rolling_back` (replay:
        # test_a_rollback_with_nothing_to_return_is_audited_in_order).
        assert audit.linker.wait_idle()
        rows = db.session.execute(
            select(
                AuditLog.seq,
                AuditLog.action,
                AuditLog.resource_id,
                AuditLog.changes,
                AuditLog.meta,
            )
            .where(AuditLog.chain == str(self.project_id), AuditLog.resource_type == "rollout")
            .order_by(AuditLog.seq)
        ).all()
        by_rollout: dict[str, list[Any]] = {}
        for row in rows:
            by_rollout.setdefault(row.resource_id, []).append(row)
        steps = self._steps()
        for rollout in self._rollouts().values():
            replay_audit_trail(rollout, steps.get(rollout.id, []), by_rollout.pop(str(rollout.id)))
        assert not by_rollout, "audit rows for rollouts that do not exist"
        db.session.rollback()


def replay_audit_trail(rollout: Any, steps: Sequence[Any], rows: Sequence[Any]) -> None:
    """Fold one rollout's audit rows from its birth; the result must be the rollout's rows."""
    created, *changes = rows
    assert created.action == "rollout.created", created.action
    if rollout.rollback_of is None:
        state = "pending"
    else:  # a rollback is born started (all at once), or completed when it has nothing to do
        state = "running" if created.meta["nodes"] else "completed"
    approval = "pending_approval" if rollout.approvals_required else "not_required"
    step_states = {step.index: "pending" for step in steps}
    trail = [f"{created.seq} created → {state}"]
    for row in changes:
        moved = (row.changes or {}).get("state")
        trail.append(f"{row.seq} {row.action} {moved or ''}")
        where = f"{rollout.strategy} rollout, trail: {'; '.join(trail)}"
        if moved is not None:
            assert moved[0] == state and moved[1] != state, f"the rollout was {state}: {where}"
            state = moved[1]
        approved = (row.changes or {}).get("approval_state")
        if approved is not None:
            assert approved[0] == approval, where
            approval = approved[1]
        meta = row.meta or {}
        active = [i for i, s in step_states.items() if s in ACTIVE_STEP]
        if row.action == "rollout.step_started":
            index = meta["index"]
            assert state == "running", f"step {index} started while the rollout was {state}"
            assert step_states[index] in ("pending", "failed") and not active, where
            assert all(step_states[i] == "completed" for i in range(index)), where
            step_states[index] = "running"
        elif row.action == "rollout.step_baking":
            assert step_states[meta["index"]] == "running", where
            step_states[meta["index"]] = "baking"
        elif row.action == "rollout.step_completed":
            index = meta["index"]
            if meta["reason"] == "step_skipped":
                assert step_states[index] == "running", where
            else:
                assert step_states[index] == "baking", where
                assert meta["gates"]["state"] == "passing", "a step completed on failing gates"
            step_states[index] = "completed"
        elif row.action == "rollout.step_failed":
            assert step_states[meta["index"]] in ACTIVE_STEP, where
            step_states[meta["index"]] = "failed"
        elif row.action == "rollout.failed" and meta.get("step_index") is not None:
            assert step_states[meta["step_index"]] in ACTIVE_STEP, where
            step_states[meta["step_index"]] = "failed"
        elif row.action == "rollout.rolling_back":
            for index in active:  # the operator's rollback interrupts the active step
                step_states[index] = "failed"
    where = f"{rollout.strategy} rollout, trail: {'; '.join(trail)}"
    assert state == rollout.state, f"the audit trail ends {state}, the rollout is: {where}"
    assert approval == rollout.approval_state, where
    assert step_states == {step.index: step.state for step in steps}, where


# --- the test -------------------------------------------------------------------------------


def compile_bundles(app: Any, redis_url: str) -> dict[str, str]:
    """Bundles A, B and C of project `default`, compiled by the real compile job."""
    setup_project(app)
    key = operator_key(app)
    client = app.test_client()
    ids = {}
    for name, source in zip(BUNDLES, (CONFIG, route_config(2), route_config(3)), strict=True):
        response = submit(client, key, source, f"v-{name.lower()}")
        assert response.status_code in (200, 201, 202), response.get_json()
        ids[name] = response.get_json()["id"]
    run_jobs(app, redis_url)
    with app.app_context():
        statuses = db.session.scalars(select(Bundle.status).where(Bundle.id.in_(ids.values())))
        assert set(statuses) == {"compiled"}
    return ids


@pytest.fixture
def machine(app: Any, backend: Any) -> Iterator[type[RolloutMachine]]:
    """The machine class bound to this backend's app, with bundles compiled once; jobs and
    events go to an outbox instead of Redis."""
    bundle_ids = compile_bundles(app, backend.redis_url)
    with app.app_context():
        base = snapshot_rows()
    outbox = Outbox()
    bound = type(
        "RolloutEngineMachine",
        (RolloutMachine,),
        {
            "app": app,
            "base": base,
            "bundle_ids": bundle_ids,
            "epoch": utcnow().replace(microsecond=0),
            "outbox": outbox,
        },
    )
    with (
        mock.patch.object(jobqueue, "_backend", outbox.enqueue),
        mock.patch("sentinel_cp.events.send", outbox.publish),
    ):
        yield bound


def test_the_rollout_engine_keeps_its_invariants_under_random_operation(
    machine: type[RolloutMachine],
) -> None:
    REACHED.clear()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            phases=PHASES,
        ),
    )
    if os.environ.get("SENTINEL_MACHINE_STATS"):
        print("\n".join(f"{count:6d}  {what}" for what, count in sorted(REACHED.items())))


@contextmanager
def played(machine: type[RolloutMachine]) -> Iterator[RolloutMachine]:
    """One example of the machine, driven by hand (a replay of a sequence it found)."""
    state = machine()
    try:
        yield state
    finally:
        state.teardown()


ALL_AT_ONCE = {
    "strategy": "all_at_once",
    "batch_size": 1,
    "max_failures": 0,
    "max_unavailable": 0,
    "bake_s": 0,
    "gate_grace_s": 60,
    "progress_deadline_s": 600,
    "on_failure": "pause",
    "error_gate": False,
}


def test_rolling_back_a_finished_rollout_leaves_nodes_another_rollout_holds_alone(
    machine: type[RolloutMachine],
) -> None:
    """Invariant 1 regression: rollout 1 completes, rollout 2 takes the same nodes; rolling
    back rollout 1 must not start a rollback rollout on rollout 2's nodes."""
    with played(machine) as state:
        state.register_fleet(size=4, first=ALL_AT_ONCE)
        state.fleet_converges(healthy=True, seconds=1, rounds=2)
        assert state._rollout(state.order[0]).state == "completed"
        state.create_rollout("C", ALL_AT_ONCE, None, skip_busy=False, start=True, approvals=0)
        state.operator_acts("rollback", pick=0, eligible=False, who="first", skip_unavailable=False)
        state.a_node_is_in_at_most_one_live_rollout()


def test_a_rollback_with_nothing_to_return_is_audited_in_order(
    machine: type[RolloutMachine],
) -> None:
    """Invariant 4 regression: a rollout rolled back before its first tick assigned anything
    goes straight on to `rolled_back`, and its trail must read `rolling_back
    [running→rolling_back]` before `rolled_back [rolling_back→rolled_back]`."""
    with played(machine) as state:
        state.register_fleet(size=4, first=ALL_AT_ONCE)
        state.operator_acts("rollback", pick=0, eligible=False, who="first", skip_unavailable=False)
        state.every_state_change_has_exactly_one_audit_row()
