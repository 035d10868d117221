"""An in-memory rollout for tests of the pure engine: view builders, a pure applier of
`decide`'s actions (the contract the database applier implements), operator actions, and a
scripted fleet whose nodes progress, fail, go silent or drop offline on a seeded schedule.

Nothing here sleeps: time is a value passed in.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sentinel_cp.rollouts.planner import plan_steps
from sentinel_cp.rollouts.types import (
    Action,
    AwaitPromotion,
    Complete,
    CompleteStep,
    Fail,
    FailStep,
    NodeView,
    Nothing,
    Pause,
    PlanNode,
    RecordGates,
    RolloutConfig,
    RolloutView,
    StartBaking,
    StartStep,
    StepView,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
BUNDLE = "b" * 64
OLD = "a" * 64
ROLLOUT_ID = uuid.UUID(int=0xABC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def nid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def node(i: int, **changes: Any) -> NodeView:
    """Node `n<i>`: online, not yet assigned, running the old bundle, healthy at T0."""
    base = NodeView(
        node_id=nid(i),
        name=f"n{i:02d}",
        online=True,
        state="pending",
        active_bundle_id=OLD,
        last_heartbeat_at=T0,
        health_status="healthy",
        metrics={"error_rate": 0.1},
    )
    return replace(base, **changes)


def verified(i: int, activated: float = 0, heartbeat: float = 5, **changes: Any) -> NodeView:
    """Node `n<i>` verified on BUNDLE at `activated`, last heartbeat healthy at `heartbeat`."""
    values: dict[str, Any] = {
        "state": "verified",
        "active_bundle_id": BUNDLE,
        "activated_at": at(activated),
        "last_heartbeat_at": at(heartbeat),
    }
    return node(i, **{**values, **changes})


def step(index: int, nodes: Sequence[NodeView], state: str = "pending", **changes: Any) -> StepView:
    kind = changes.pop("kind", "deploy")
    if state in ("running", "baking"):
        changes.setdefault("started_at", T0)
    if state == "baking":
        changes.setdefault("baking_since", T0)
    return StepView(index=index, kind=kind, state=state, nodes=tuple(nodes), **changes)  # type: ignore[arg-type]


def view(
    steps: Sequence[StepView], config: RolloutConfig | None = None, **changes: Any
) -> RolloutView:
    return RolloutView(
        id=ROLLOUT_ID,
        state=changes.pop("state", "running"),
        bundle_id=BUNDLE,
        bundle_status=changes.pop("bundle_status", "compiled"),
        config=config or RolloutConfig.from_dict({}),
        steps=tuple(steps),
        **changes,
    )


def planned_view(nodes: Sequence[NodeView], config: RolloutConfig, **changes: Any) -> RolloutView:
    """A fresh running rollout whose steps come from the planner."""
    by_id = {n.node_id: n for n in nodes}
    plan = plan_steps(
        [PlanNode(id=n.node_id, name=n.name, labels={}, status="online") for n in nodes], config
    )
    steps = [
        StepView(
            index=p.index, kind=p.kind, state="pending", nodes=tuple(by_id[i] for i in p.node_ids)
        )
        for p in plan
    ]
    return view(steps, config, **changes)


# --- the applier's contract, in memory ----------------------------------------------------


def _nodes(step_view: StepView, ids: Iterable[uuid.UUID], **changes: Any) -> StepView:
    wanted = set(ids)
    return replace(
        step_view,
        nodes=tuple(replace(n, **changes) if n.node_id in wanted else n for n in step_view.nodes),
    )


def _with_step(v: RolloutView, index: int, new: StepView) -> RolloutView:
    steps = list(v.steps)
    steps[index] = new
    return replace(v, steps=tuple(steps))


def apply(v: RolloutView, action: Action, now: datetime) -> RolloutView:
    """What the transactional applier does with each action, on values."""
    if isinstance(action, Nothing):
        return v
    if isinstance(action, StartStep):
        s = replace(
            v.steps[action.index],
            state="running",
            started_at=now,
            baking_since=None,
            gates_passing_since=None,
            gates_failing_since=None,
            resumed_at=None,
        )
        s = _nodes(s, action.assign_node_ids, state="assigned", activated_at=None, reason=None)
        s = _nodes(s, action.skip_node_ids, state="skipped")
        return _with_step(v, action.index, s)
    if isinstance(action, StartBaking):
        s = replace(
            v.steps[action.index],
            state="baking",
            baking_since=now,
            gates_passing_since=None,
            gates_failing_since=None,
        )
        s = replace(
            s,
            nodes=tuple(
                replace(n, state="verified", activated_at=n.activated_at or now)
                if n.node_id in set(action.mark_verified_node_ids)
                else n
                for n in s.nodes
            ),
        )
        s = _nodes(s, action.skip_node_ids, state="skipped")
        return _with_step(v, action.index, s)
    if isinstance(action, RecordGates):
        s = replace(
            v.steps[action.index],
            gates_passing_since=action.passing_since,
            gates_failing_since=action.failing_since,
        )
        return _with_step(v, action.index, s)
    if isinstance(action, CompleteStep):
        s = _nodes(v.steps[action.index], action.skip_node_ids, state="skipped")
        return _with_step(v, action.index, replace(s, state="completed"))
    if isinstance(action, FailStep):
        v = _with_step(v, action.index, replace(v.steps[action.index], state="failed"))
        return replace(v, state="paused" if action.then == "pause" else "rolling_back")
    if isinstance(action, Pause | AwaitPromotion):
        return replace(v, state="paused")
    if isinstance(action, Fail):
        if action.step_index is not None:
            v = _with_step(
                v, action.step_index, replace(v.steps[action.step_index], state="failed")
            )
        return replace(v, state="failed")
    if isinstance(action, Complete):
        return replace(v, state="completed")
    raise AssertionError(f"unknown action {action!r}")


def resume(v: RolloutView, now: datetime, *, skip_unavailable: bool = False) -> RolloutView:
    """The operator's resume: running again, the active step's clocks restart from now."""
    steps = []
    target = next(
        (s.index for s in v.steps if s.state in ("running", "baking", "pending", "failed")), None
    )
    for s in v.steps:
        if s.state in ("running", "baking"):
            s = replace(s, resumed_at=now)
        if skip_unavailable and s.index == target:
            s = replace(s, skip_unavailable=True)
        steps.append(s)
    return replace(v, state="running", steps=tuple(steps))


def promote(v: RolloutView) -> RolloutView:
    return replace(v, state="running", promoted=True)


# --- a scripted fleet ---------------------------------------------------------------------

DELIVERY = ("assigned", "downloaded", "staged", "activated", "verified")
PROFILES = (
    "good",
    "good",
    "good",
    "slow",
    "heartbeat_only",  # never reports past `assigned`; its heartbeat shows the bundle
    "fails",  # reports `failed` after downloading
    "rolls_back",  # activates, then its agent reports `rolled_back`
    "unhealthy",  # heartbeats `unhealthy` once running the bundle
    "flaky",  # each heartbeat is unhealthy with probability 0.3
    "silent",  # stops heartbeating once running the bundle
    "offline",  # offline from the start
    "drops",  # goes offline for a while at a random time
    "high_errors",  # error_rate 20 % once running the bundle
)
HEARTBEAT_S = 30


@dataclass
class SimNode:
    profile: str
    phase: float  # heartbeat offset within the interval
    offline_from: float | None = None
    offline_until: float | None = None
    running: str = OLD
    next_heartbeat: float = 0.0

    def online(self, t: float) -> bool:
        if self.offline_from is None:
            return True
        until = self.offline_until if self.offline_until is not None else float("inf")
        return not self.offline_from <= t < until


@dataclass
class Fleet:
    """Node behaviour over simulated time; `step_world` moves the view's nodes forward."""

    rng: random.Random
    nodes: dict[uuid.UUID, SimNode] = field(default_factory=dict)

    @classmethod
    def build(cls, rng: random.Random, profiles: Sequence[str]) -> tuple[Fleet, list[NodeView]]:
        fleet = cls(rng)
        views = []
        for i, profile in enumerate(profiles):
            sim = SimNode(profile=profile, phase=rng.uniform(0, HEARTBEAT_S))
            if profile == "offline":
                sim.offline_from = -1.0
                sim.offline_until = rng.choice([None, rng.uniform(60, 900)])
            elif profile == "drops":
                sim.offline_from = rng.uniform(0, 600)
                sim.offline_until = sim.offline_from + rng.uniform(30, 600)
            sim.next_heartbeat = sim.phase
            fleet.nodes[nid(i)] = sim
            views.append(node(i, online=sim.online(0), last_heartbeat_at=None))
        return fleet, views

    def step_world(self, v: RolloutView, t: float) -> RolloutView:
        now = at(t)
        steps = []
        for s in v.steps:
            steps.append(replace(s, nodes=tuple(self._node(n, t, now, s.state) for n in s.nodes)))
        return replace(v, steps=tuple(steps))

    def _node(self, n: NodeView, t: float, now: datetime, step_state: str) -> NodeView:
        sim = self.nodes[n.node_id]
        online = sim.online(t)
        changes: dict[str, Any] = {"online": online}
        if n.state == "skipped":
            # The applier cleared its assignment: it stays on what it runs.
            pass
        elif online and n.state in DELIVERY[:-1] and self.rng.random() < self._speed(sim):
            changes.update(self._progress(n, sim, now))
        if online and t >= sim.next_heartbeat:
            sim.next_heartbeat = t + HEARTBEAT_S
            if not (sim.profile == "silent" and sim.running == BUNDLE):
                changes.update(
                    last_heartbeat_at=now,
                    active_bundle_id=sim.running,
                    health_status=self._health(sim),
                    metrics={"error_rate": self._error_rate(sim)},
                )
        return replace(n, **changes)

    def _speed(self, sim: SimNode) -> float:
        return 0.15 if sim.profile == "slow" else 0.6

    def _progress(self, n: NodeView, sim: SimNode, now: datetime) -> dict[str, Any]:
        nxt = DELIVERY[DELIVERY.index(n.state) + 1]
        if sim.profile == "fails" and nxt == "staged":
            return {"state": "failed", "reason": "checksum mismatch"}
        if sim.profile == "heartbeat_only":
            if sim.running != BUNDLE and self.rng.random() < 0.5:
                sim.running = BUNDLE  # shows in its next heartbeat
            return {}
        if nxt == "activated":
            sim.running = BUNDLE
            return {"state": nxt, "active_bundle_id": BUNDLE, "activated_at": now}
        if nxt == "verified" and sim.profile == "rolls_back":
            sim.running = OLD
            return {"state": "rolled_back", "active_bundle_id": OLD, "reason": "health check"}
        return {"state": nxt}

    def _health(self, sim: SimNode) -> str:
        if sim.running == BUNDLE and sim.profile == "unhealthy":
            return "unhealthy"
        if sim.profile == "flaky" and self.rng.random() < 0.3:
            return "unhealthy"
        return "healthy"

    def _error_rate(self, sim: SimNode) -> float:
        if sim.running == BUNDLE and sim.profile == "high_errors":
            return 20.0
        return round(self.rng.uniform(0, 0.5), 3)


def copy_view(v: RolloutView) -> RolloutView:
    """An equal view built from fresh objects (decide must not depend on identity)."""
    return dataclasses.replace(
        v,
        steps=tuple(
            replace(s, nodes=tuple(replace(n, metrics=dict(n.metrics)) for n in s.nodes))
            for s in v.steps
        ),
    )
