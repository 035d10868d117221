"""The rollout tick's decision: one snapshot and one instant in, exactly one next action out.

`decide(view, now)` is pure: it reads a `RolloutView` and returns the `Action` the applier
turns into one transaction (see `types` for what each action changes). It never looks at the
clock itself and keeps no state, so the same view at the same instant always gives an equal
action, and repeating a tick after its action was applied continues from the new state.

The checks run in the order of the spec's tick (spec/rollouts.md "The tick"); the first that
applies wins:

1. Not `running` → `Nothing(not_running)`. Paused, pending and terminal rollouts never move
   on their own; operators resume them.
2. A freeze window is active and not overridden → `Pause(freeze_window)`, also mid-step, as
   the spec's tick says (nodes already assigned keep going; no further step can start).
3. The bundle is no longer `compiled` → `Fail(bundle_revoked | bundle_unavailable)`. Nodes
   would not be offered it any more, so no step could finish.
4. No step is `running` or `baking` → start the first step that is `pending` (or `failed`: a
   failed step is only met in a running rollout after an operator resumed it, and resuming
   means retrying it). Before starting: a blue-green `promote` step waits for promotion
   (`AwaitPromotion`); more offline nodes than `max_unavailable` → `Pause(max_unavailable_
   exceeded)`. No step left → `Complete`.
5. The active step is `running`. Failures first (more than `max_failures` →
   `FailStep(max_failures_exceeded)`, which carries `on_failure`), because a failing bundle
   must not be hidden behind a pause for offline nodes; then unavailability (skipped + offline
   unverified nodes beyond `max_unavailable` → `Pause(max_unavailable_exceeded)`); then, when
   no online node is still on its way, `StartBaking`. Two edge cases when not a single node
   verified: some failed (within `max_failures`) → `FailStep(no_available_nodes)`, nothing
   shows the bundle works; all were unavailable within `max_unavailable` →
   `CompleteStep(step_skipped)` without gates, because the spec lets a step skip that many
   nodes without pausing (failing would trap e.g. a one-node rolling batch whose node is off:
   every resume would retry and fail it again).
6. The active step is `baking`. Failures first as in 5 (a node may still report `failed` or
   `rolled_back`); then the gates: passing continuously for `bake_s` → `CompleteStep`,
   failing continuously for longer than `gate_grace_s` → `FailStep(gates_failed)`.
7. Deadline: the step is older than `progress_deadline_s` (counted from its start, or from
   the latest resume) → `FailStep(deadline_exceeded)`. Checked after the step's own progress
   so that a step whose work is done when the tick comes is not failed for the tick's delay.
   Otherwise the step waits: `Nothing(waiting_for_nodes)` while running, `RecordGates` (the
   new evaluation, and the gate clocks) while baking.

Every wait is bounded: a running or baking step that makes no progress meets its deadline, so
a running rollout always reaches a terminal state, a pause with a reason, or a next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sentinel_cp.rollouts.gates import evaluate
from sentinel_cp.rollouts.types import (
    ACTIVE_STEP_STATES,
    FAILED_DELIVERY_STATES,
    Action,
    AwaitPromotion,
    Complete,
    CompleteStep,
    DeliveryState,
    Fail,
    FailStep,
    GateVerdict,
    NodeView,
    Nothing,
    Pause,
    RecordGates,
    RolloutView,
    StartBaking,
    StartStep,
    StepView,
)

NodeOutcome = Literal["verified", "failed", "skipped", "offline", "in_progress"]

# Delivery states after which starting (or retrying) a step assigns the node afresh; a node
# in any other state keeps its row, so its `previous_bundle_id` stays what it ran before.
REASSIGNABLE_STATES: tuple[DeliveryState, ...] = ("pending", "failed", "rolled_back", "skipped")


def node_outcome(node: NodeView, bundle_id: str) -> NodeOutcome:
    """Where one node of a step stands.

    `verified`: a `verified` report, or the node reports running its target bundle (the
    rollout's, or its own `target_bundle_id`) and reported no failure. After an `activated`
    report (which itself records the bundle as active) only a heartbeat received later counts:
    the node is still checking its health, and a tick in between must not take the report for
    the verdict. `failed`: it reported
    `failed` or `rolled_back`. `skipped`: the rollout went on without it. `offline`: none of
    these and not online. `in_progress`: online and on its way.
    """
    if node.state == "skipped":
        return "skipped"
    if node.state in FAILED_DELIVERY_STATES:
        return "failed"
    if node.state == "verified" or (
        node.active_bundle_id == (node.target_bundle_id or bundle_id)
        and _heartbeat_since_activation(node)
    ):
        return "verified"
    if not node.online:
        return "offline"
    return "in_progress"


def _heartbeat_since_activation(node: NodeView) -> bool:
    if node.state != "activated":
        return True  # no activation report: the active bundle came from a heartbeat
    return (
        node.last_heartbeat_at is not None
        and node.activated_at is not None
        and node.last_heartbeat_at > node.activated_at
    )


@dataclass(frozen=True)
class StepTally:
    """A step's nodes by `node_outcome`, each in the step's order (also the API's progress)."""

    verified: tuple[NodeView, ...]
    failed: tuple[NodeView, ...]
    skipped: tuple[NodeView, ...]
    offline: tuple[NodeView, ...]
    in_progress: tuple[NodeView, ...]

    @classmethod
    def of(cls, nodes: Sequence[NodeView], bundle_id: str) -> StepTally:
        groups: dict[NodeOutcome, list[NodeView]] = {
            "verified": [],
            "failed": [],
            "skipped": [],
            "offline": [],
            "in_progress": [],
        }
        for node in nodes:
            groups[node_outcome(node, bundle_id)].append(node)
        return cls(
            verified=tuple(groups["verified"]),
            failed=tuple(groups["failed"]),
            skipped=tuple(groups["skipped"]),
            offline=tuple(groups["offline"]),
            in_progress=tuple(groups["in_progress"]),
        )


def active_step(view: RolloutView) -> StepView | None:
    """The step being worked on (`running` or `baking`); the first one if, wrongly, several."""
    return next((step for step in view.steps if step.state in ACTIVE_STEP_STATES), None)


def decide(view: RolloutView, now: datetime) -> Action:
    """The one next action for `view` at `now` (the order of checks: the module docstring)."""
    if view.state != "running":
        return Nothing(
            reason="not_running",
            details=f"The rollout is {view.state}; nothing to do.",
            metadata={"state": view.state},
        )
    step = active_step(view)
    step_index = step.index if step is not None else None
    if view.freeze_active and not view.freeze_overridden:
        return Pause(
            reason="freeze_window",
            details="A freeze window is active; the rollout pauses until it is resumed.",
            metadata={"step_index": step_index},
            step_index=step_index,
        )
    if view.bundle_status != "compiled":
        reason = "bundle_revoked" if view.bundle_status == "revoked" else "bundle_unavailable"
        return Fail(
            reason=reason,
            details=f"The bundle is {view.bundle_status}; nodes can no longer be given it.",
            metadata={"bundle_id": view.bundle_id, "bundle_status": view.bundle_status},
            step_index=step_index,
        )
    if step is None:
        return _start_next(view)
    if step.state == "running":
        return _running(view, step, now)
    return _baking(view, step, now)


# --- 4. no active step ----------------------------------------------------------------------


def _start_next(view: RolloutView) -> Action:
    step = next((s for s in view.steps if s.state in ("pending", "failed")), None)
    if step is None:
        verified = tuple(
            node.node_id
            for s in view.steps
            for node in s.nodes
            if node_outcome(node, view.bundle_id) == "verified"
        )
        return Complete(
            reason="all_steps_completed",
            details=f"Every step completed; {len(verified)} node(s) run the bundle.",
            metadata={"steps": len(view.steps), "verified": len(verified)},
            verified_node_ids=verified,
        )
    if step.kind == "promote" and not view.promoted:
        return AwaitPromotion(
            reason="awaiting_promotion",
            details="The standby nodes passed their gates; promote to roll out to the rest.",
            metadata={"step_index": step.index},
            index=step.index,
        )
    config = view.config
    offline = [
        node
        for node in step.nodes
        if not node.online and node_outcome(node, view.bundle_id) != "verified"
    ]
    if len(offline) > config.max_unavailable and not step.skip_unavailable:
        return _unavailable_pause(step, [], offline, config.max_unavailable)
    skipped = {node.node_id for node in offline}
    assign = tuple(
        node.node_id
        for node in step.nodes
        if node.node_id not in skipped and node.state in REASSIGNABLE_STATES
    )
    retry = step.state == "failed"
    verb = "retried" if retry else "started"
    return StartStep(
        reason="step_retried" if retry else "step_started",
        details=(
            f"Step {step.index + 1} of {len(view.steps)} {verb}: {len(assign)} node(s) assigned"
            + (f", {len(skipped)} offline node(s) skipped." if skipped else ".")
        ),
        metadata={
            "step_index": step.index,
            "kind": step.kind,
            "assigned": len(assign),
            "skipped": _names(offline),
        },
        index=step.index,
        assign_node_ids=assign,
        skip_node_ids=tuple(node.node_id for node in offline),
        retry=retry,
    )


# --- 5. running -----------------------------------------------------------------------------


def _running(view: RolloutView, step: StepView, now: datetime) -> Action:
    config = view.config
    tally = StepTally.of(step.nodes, view.bundle_id)
    too_many = _too_many_failures(view, step, tally)
    if too_many is not None:
        return too_many
    if (
        len(tally.skipped) + len(tally.offline) > config.max_unavailable
        and not step.skip_unavailable
    ):
        return _unavailable_pause(step, tally.skipped, tally.offline, config.max_unavailable)
    if not tally.in_progress:
        if not tally.verified and tally.failed:
            return _fail_step(
                view,
                step,
                "no_available_nodes",
                f"Step {step.index + 1} has no node left that runs the bundle "
                f"({len(tally.failed)} failed, {len(tally.skipped) + len(tally.offline)} "
                "unavailable).",
                {"failed": _names(tally.failed), "unavailable": _names(tally.offline)},
            )
        if not tally.verified:
            return CompleteStep(
                reason="step_skipped",
                details=(
                    f"Step {step.index + 1}: every node is unavailable, within max_unavailable "
                    f"({view.config.max_unavailable}); the step is skipped."
                ),
                metadata={
                    "step_index": step.index,
                    "skipped": _names(tally.skipped) + _names(tally.offline),
                },
                index=step.index,
                verdict=None,
                skip_node_ids=tuple(node.node_id for node in tally.offline),
            )
        heartbeat_verified = tuple(node for node in tally.verified if node.state != "verified")
        return StartBaking(
            reason="step_verified",
            details=(
                f"Every available node of step {step.index + 1} runs the bundle "
                f"({len(tally.verified)} verified); the gates start baking."
            ),
            metadata={
                "step_index": step.index,
                "verified": len(tally.verified),
                "verified_by_heartbeat": _names(heartbeat_verified),
                "skipped": _names(tally.offline),
            },
            index=step.index,
            mark_verified_node_ids=tuple(node.node_id for node in heartbeat_verified),
            skip_node_ids=tuple(node.node_id for node in tally.offline),
        )
    overdue = _deadline(view, step, now, None)
    if overdue is not None:
        return overdue
    return Nothing(
        reason="waiting_for_nodes",
        details=(
            f"Step {step.index + 1}: {len(tally.verified)} of {len(step.nodes)} node(s) "
            f"verified, {len(tally.in_progress)} on their way."
        ),
        metadata={
            "step_index": step.index,
            "verified": len(tally.verified),
            "in_progress": len(tally.in_progress),
            "failed": len(tally.failed),
            "offline": len(tally.offline),
        },
    )


def _unavailable_pause(
    step: StepView, skipped: Sequence[NodeView], offline: Sequence[NodeView], allowed: int
) -> Pause:
    count = len(skipped) + len(offline)
    return Pause(
        reason="max_unavailable_exceeded",
        details=(
            f"Step {step.index + 1}: {count} node(s) unavailable, at most {allowed} may be; "
            "resume with skip_unavailable to go on without them."
        ),
        metadata={
            "step_index": step.index,
            "unavailable": count,
            "max_unavailable": allowed,
            "offline": _names(offline),
            "skipped": _names(skipped),
        },
        step_index=step.index,
    )


def _too_many_failures(view: RolloutView, step: StepView, tally: StepTally) -> FailStep | None:
    budget = view.config.failure_budget(len(step.nodes))
    if len(tally.failed) <= budget:
        return None
    return _fail_step(
        view,
        step,
        "max_failures_exceeded",
        f"Step {step.index + 1}: {len(tally.failed)} node(s) failed, at most {budget} may.",
        {"failed": _names(tally.failed), "max_failures": budget},
    )


# --- 6. baking ------------------------------------------------------------------------------


def _baking(view: RolloutView, step: StepView, now: datetime) -> Action:
    config = view.config
    tally = StepTally.of(step.nodes, view.bundle_id)
    too_many = _too_many_failures(view, step, tally)
    if too_many is not None:
        return too_many
    verdict = evaluate(
        step.nodes,
        config,
        now,
        baseline=_baseline(view),
        bundle_id=view.bundle_id,
        heartbeat_interval_s=view.heartbeat_interval_s,
    )
    passing_since = _current_clock(step.gates_passing_since, step)
    failing_since = _current_clock(step.gates_failing_since, step)
    start = _clock_start(step, now)
    base = {"step_index": step.index, "verdict": verdict.state}
    if verdict.passing:
        since = passing_since or start
        baked = max(0.0, (now - since).total_seconds())
        if baked >= config.bake_s:
            return CompleteStep(
                reason="step_completed",
                details=(
                    f"Step {step.index + 1} completed: gates passed for {baked:g} s "
                    f"(bake {config.bake_s} s) on {len(verdict.nodes)} node(s)."
                ),
                metadata={**base, "baked_s": baked},
                index=step.index,
                verdict=verdict,
            )
        return _deadline(view, step, now, verdict) or RecordGates(
            reason="gates_passing",
            details=(f"Step {step.index + 1}: gates passing for {baked:g} of {config.bake_s} s."),
            metadata={**base, "passing_s": baked},
            index=step.index,
            verdict=verdict,
            passing_since=since,
            failing_since=None,
            changed=passing_since is None,
        )
    if verdict.state == "failing":
        since = failing_since or start
        failing = max(0.0, (now - since).total_seconds())
        if failing > config.gate_grace_s:
            return _fail_step(
                view,
                step,
                "gates_failed",
                f"Step {step.index + 1}: {verdict.summary()}, for {failing:g} s "
                f"(grace {config.gate_grace_s} s).",
                {"failing_s": failing, "failing_nodes": list(verdict.failing_node_names)},
                verdict,
            )
        return _deadline(view, step, now, verdict) or RecordGates(
            reason="gates_failing",
            details=(
                f"Step {step.index + 1}: {verdict.summary()}; failing for {failing:g} of "
                f"{config.gate_grace_s} s grace."
            ),
            metadata={**base, "failing_s": failing},
            index=step.index,
            verdict=verdict,
            passing_since=None,
            failing_since=since,
            changed=failing_since is None,
        )
    return _deadline(view, step, now, verdict) or RecordGates(
        reason="gates_waiting",
        details=f"Step {step.index + 1}: {verdict.summary()}.",
        metadata=base,
        index=step.index,
        verdict=verdict,
        passing_since=None,
        failing_since=None,
        changed=passing_since is not None or failing_since is not None,
    )


def _baseline(view: RolloutView) -> tuple[NodeView, ...]:
    if view.baseline_nodes is not None:
        return view.baseline_nodes
    return tuple(node for step in view.steps if step.state == "pending" for node in step.nodes)


def _current_clock(since: datetime | None, step: StepView) -> datetime | None:
    """A gate clock, unless it predates this bake or the latest resume (then it is void)."""
    if since is None or any(since < floor for floor in _clock_floors(step)):
        return None
    return since


def _clock_start(step: StepView, now: datetime) -> datetime:
    """When a gate clock started now begins: never before the bake or the latest resume.

    A worker whose clock runs behind the one that started the bake (or took the resume) would
    otherwise start a clock that `_current_clock` voids at once, and every tick would record
    a new one: a tick would never be a fixed point.
    """
    return max([now, *_clock_floors(step)])


def _clock_floors(step: StepView) -> list[datetime]:
    """The instants no gate clock of this step may predate: the bake's start, the resume."""
    return [floor for floor in (step.baking_since, step.resumed_at) if floor is not None]


# --- 7. deadline ----------------------------------------------------------------------------


def _deadline(
    view: RolloutView, step: StepView, now: datetime, verdict: GateVerdict | None
) -> FailStep | None:
    start = step.clock_start
    assert start is not None  # StepView guarantees it for running and baking steps
    elapsed = (now - start).total_seconds()
    limit = view.config.progress_deadline_s
    if elapsed <= limit:
        return None
    return _fail_step(
        view,
        step,
        "deadline_exceeded",
        f"Step {step.index + 1} did not complete within {limit} s ({elapsed:g} s).",
        {"elapsed_s": elapsed, "progress_deadline_s": limit},
        verdict,
    )


def _fail_step(
    view: RolloutView,
    step: StepView,
    reason: str,
    details: str,
    facts: dict[str, object],
    verdict: GateVerdict | None = None,
) -> FailStep:
    then = view.config.on_failure
    outcome = "the rollout pauses" if then == "pause" else "the rollout rolls back"
    return FailStep(
        reason=reason,
        details=f"{details} Step failed; {outcome}.",
        metadata={"step_index": step.index, "on_failure": then, **facts},
        index=step.index,
        then=then,
        verdict=verdict,
    )


def _names(nodes: Sequence[NodeView]) -> list[str]:
    return [node.name for node in nodes]
