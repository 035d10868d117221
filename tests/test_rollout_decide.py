"""The rollout tick's pure decision: one example per branch of `decide`, in the spec's order,
then a seeded simulation of whole rollouts checking the engine's invariants after every tick."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_sim import (
    BUNDLE,
    OLD,
    PROFILES,
    T0,
    Fleet,
    apply,
    at,
    copy_view,
    nid,
    node,
    planned_view,
    promote,
    resume,
    step,
    verified,
    view,
)

from sentinel_cp.rollouts.decide import StepTally, active_step, decide, node_outcome
from sentinel_cp.rollouts.gates import evaluate
from sentinel_cp.rollouts.types import (
    EXCLUDED_DELIVERY_STATES,
    Action,
    AwaitPromotion,
    Complete,
    CompleteStep,
    Fail,
    FailStep,
    GateVerdict,
    Nothing,
    Pause,
    RecordGates,
    RolloutConfig,
    RolloutView,
    StartBaking,
    StartStep,
)


def config(**values: object) -> RolloutConfig:
    return RolloutConfig.from_dict(values)


def started(nodes: list, settings: dict | None = None, **changes: object) -> RolloutView:
    """One running step holding `nodes`, started at T0."""
    return view([step(0, nodes, "running")], config(**(settings or {})), **changes)


def baking(nodes: list, settings_: dict | None = None, **step_changes: object) -> RolloutView:
    return view([step(0, nodes, "baking", **step_changes)], config(**(settings_ or {})))


# --- 1-3: before any step -------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    ["pending", "paused", "completed", "failed", "cancelled", "rolling_back", "rolled_back"],
)
def test_a_rollout_that_is_not_running_gets_nothing(state: str) -> None:
    action = decide(view([step(0, [node(0)])], state=state), T0)
    assert action == Nothing(
        reason="not_running",
        details=f"The rollout is {state}; nothing to do.",
        metadata={"state": state},
    )


def test_an_active_freeze_window_pauses_the_rollout() -> None:
    action = decide(view([step(0, [node(0)])], freeze_active=True), T0)
    assert isinstance(action, Pause)
    assert action.reason == "freeze_window"
    assert action.step_index is None


def test_a_freeze_pause_names_the_active_step() -> None:
    action = decide(view([step(0, [node(0, state="assigned")], "running")], freeze_active=True), T0)
    assert isinstance(action, Pause) and action.step_index == 0


def test_an_overridden_freeze_window_does_not_pause() -> None:
    action = decide(view([step(0, [node(0)])], freeze_active=True, freeze_overridden=True), T0)
    assert isinstance(action, StartStep)


def test_a_freeze_is_checked_before_a_revoked_bundle() -> None:
    action = decide(view([step(0, [node(0)])], freeze_active=True, bundle_status="revoked"), T0)
    assert isinstance(action, Pause) and action.reason == "freeze_window"


def test_a_revoked_bundle_fails_the_rollout() -> None:
    action = decide(view([step(0, [node(0)])], bundle_status="revoked"), T0)
    assert isinstance(action, Fail)
    assert (action.reason, action.step_index) == ("bundle_revoked", None)
    assert action.metadata["bundle_status"] == "revoked"


def test_a_revoked_bundle_fails_the_active_step_too() -> None:
    v = view([step(0, [node(0, state="assigned")], "running")], bundle_status="revoked")
    action = decide(v, T0)
    assert isinstance(action, Fail) and action.step_index == 0


def test_a_bundle_in_another_non_compiled_state_fails_as_unavailable() -> None:
    action = decide(view([step(0, [node(0)])], bundle_status="collected"), T0)
    assert isinstance(action, Fail) and action.reason == "bundle_unavailable"


# --- 4: no active step --------------------------------------------------------------------


def test_the_first_pending_step_starts_with_every_node_assigned() -> None:
    v = view([step(0, [node(0), node(1)]), step(1, [node(2)])])
    action = decide(v, T0)
    assert isinstance(action, StartStep)
    assert (action.index, action.assign_node_ids, action.skip_node_ids) == (
        0,
        (nid(0), nid(1)),
        (),
    )
    assert (action.reason, action.retry) == ("step_started", False)


def test_the_next_step_starts_after_completed_ones() -> None:
    v = view([step(0, [verified(0)], "completed", started_at=T0), step(1, [node(1)])])
    action = decide(v, at(100))
    assert isinstance(action, StartStep) and action.index == 1


def test_offline_nodes_within_max_unavailable_are_skipped_when_a_step_starts() -> None:
    v = view(
        [step(0, [node(0), node(1, online=False)])],
        config(max_unavailable=1),
    )
    action = decide(v, T0)
    assert isinstance(action, StartStep)
    assert action.assign_node_ids == (nid(0),)
    assert action.skip_node_ids == (nid(1),)
    assert action.metadata["skipped"] == ["n01"]


def test_more_offline_nodes_than_max_unavailable_pause_before_a_step_starts() -> None:
    v = view([step(0, [node(0, online=False), node(1, online=False)])], config(max_unavailable=1))
    action = decide(v, T0)
    assert isinstance(action, Pause)
    assert (action.reason, action.step_index) == ("max_unavailable_exceeded", 0)
    assert action.metadata["unavailable"] == 2


def test_an_offline_node_already_running_the_bundle_is_not_unavailable() -> None:
    v = view([step(0, [node(0, online=False, active_bundle_id=BUNDLE)])])
    action = decide(v, T0)
    assert isinstance(action, StartStep)
    assert (action.assign_node_ids, action.skip_node_ids) == ((nid(0),), ())


def test_skip_unavailable_starts_the_step_without_every_offline_node() -> None:
    v = view([step(0, [node(0, online=False), node(1, online=False), node(2)])])
    action = decide(replace(v, steps=(replace(v.steps[0], skip_unavailable=True),)), T0)
    assert isinstance(action, StartStep)
    assert action.skip_node_ids == (nid(0), nid(1))
    assert action.assign_node_ids == (nid(2),)


def test_a_failed_step_in_a_resumed_rollout_is_retried_keeping_its_verified_nodes() -> None:
    nodes = [verified(0), node(1, state="failed"), node(2, state="downloaded")]
    action = decide(view([step(0, nodes, "failed", started_at=T0)]), at(900))
    assert isinstance(action, StartStep)
    assert (action.retry, action.reason) == (True, "step_retried")
    assert action.assign_node_ids == (nid(1),)


def test_no_step_left_completes_the_rollout_with_its_verified_nodes() -> None:
    steps = [
        step(0, [verified(0), node(1, state="failed")], "completed", started_at=T0),
        step(1, [verified(2), node(3, state="skipped")], "completed", started_at=T0),
    ]
    action = decide(view(steps, config(max_failures=1, max_unavailable=1)), at(900))
    assert isinstance(action, Complete)
    assert action.verified_node_ids == (nid(0), nid(2))
    assert action.audit_action == "rollout.completed"


def test_a_rollout_without_steps_completes() -> None:
    assert isinstance(decide(view([]), T0), Complete)


def blue_green(promoted: bool) -> RolloutView:
    steps = [
        step(0, [verified(0)], "completed", kind="standby", started_at=T0),
        step(1, [node(1)], kind="promote"),
    ]
    return view(steps, config(strategy="blue_green"), promoted=promoted)


def test_a_blue_green_rollout_awaits_promotion_after_its_standby_step() -> None:
    action = decide(blue_green(promoted=False), at(100))
    assert isinstance(action, AwaitPromotion)
    assert (action.reason, action.index) == ("awaiting_promotion", 1)


def test_a_promoted_blue_green_rollout_starts_the_promote_step() -> None:
    action = decide(blue_green(promoted=True), at(100))
    assert isinstance(action, StartStep) and action.index == 1


# --- 5: running -------------------------------------------------------------------------------


def test_more_failures_than_max_failures_fail_the_step_and_pause() -> None:
    action = decide(started([node(0, state="failed"), node(1, state="assigned")]), at(10))
    assert isinstance(action, FailStep)
    assert (action.reason, action.then, action.index) == ("max_failures_exceeded", "pause", 0)
    assert action.metadata["failed"] == ["n00"]


def test_on_failure_rollback_is_carried_by_the_failed_step() -> None:
    v = started([node(0, state="failed")], settings={"on_failure": "rollback"})
    action = decide(v, at(10))
    assert isinstance(action, FailStep) and action.then == "rollback"
    assert "rolls back" in action.details


def test_failures_within_max_failures_do_not_fail_the_step() -> None:
    v = started([node(0, state="failed"), node(1, state="assigned")], settings={"max_failures": 1})
    action = decide(v, at(10))
    assert isinstance(action, Nothing) and action.reason == "waiting_for_nodes"


def test_a_percentage_max_failures_counts_the_step_nodes_rounded_down() -> None:
    nodes = [node(0, state="failed")] + [node(i, state="assigned") for i in range(1, 10)]
    assert isinstance(decide(started(nodes, settings={"max_failures": "10%"}), at(1)), Nothing)
    assert isinstance(decide(started(nodes, settings={"max_failures": "9%"}), at(1)), FailStep)


def test_a_node_that_rolled_back_counts_as_failed() -> None:
    v = started([node(0, state="rolled_back"), node(1, state="assigned")])
    action = decide(v, at(10))
    assert isinstance(action, FailStep) and action.reason == "max_failures_exceeded"


def test_a_failed_report_wins_over_a_heartbeat_showing_the_bundle() -> None:
    assert node_outcome(node(0, state="failed", active_bundle_id=BUNDLE), BUNDLE) == "failed"


def test_offline_nodes_beyond_max_unavailable_pause_a_running_step() -> None:
    v = started([node(0, state="assigned", online=False), node(1, state="assigned")])
    action = decide(v, at(10))
    assert isinstance(action, Pause)
    assert (action.reason, action.step_index) == ("max_unavailable_exceeded", 0)


def test_skipped_nodes_count_against_max_unavailable_while_running() -> None:
    nodes = [node(0, state="skipped"), node(1, state="assigned", online=False), verified(2)]
    action = decide(started(nodes, settings={"max_unavailable": 1}), at(10))
    assert isinstance(action, Pause) and action.metadata["unavailable"] == 2


def test_failures_are_checked_before_unavailability() -> None:
    v = started([node(0, state="failed"), node(1, state="assigned", online=False)])
    assert isinstance(decide(v, at(10)), FailStep)


def test_every_available_node_verified_starts_baking() -> None:
    action = decide(started([verified(0), verified(1)]), at(10))
    assert isinstance(action, StartBaking)
    assert (action.index, action.mark_verified_node_ids, action.skip_node_ids) == (0, (), ())
    assert action.reason == "step_verified"


def test_a_heartbeat_showing_the_bundle_counts_as_verified_and_is_marked() -> None:
    nodes = [verified(0), node(1, state="assigned", active_bundle_id=BUNDLE)]
    action = decide(started(nodes), at(10))
    assert isinstance(action, StartBaking)
    assert action.mark_verified_node_ids == (nid(1),)


def test_an_activated_report_alone_is_not_a_verdict() -> None:
    """The `activated` report records the bundle as active while the node still checks its
    health; a tick in between must wait for `verified`/`failed` (CI caught a failing node being
    marked verified this way)."""
    reported = node(1, state="activated", active_bundle_id=BUNDLE, activated_at=at(6))
    assert node_outcome(reported, BUNDLE) == "in_progress"
    action = decide(started([verified(0), reported]), at(7))
    assert isinstance(action, Nothing) and action.reason == "waiting_for_nodes"


def test_a_heartbeat_after_an_activated_report_counts_as_verified() -> None:
    confirmed = node(1, state="activated", active_bundle_id=BUNDLE, activated_at=at(6))
    confirmed = replace(confirmed, last_heartbeat_at=at(8))
    assert node_outcome(confirmed, BUNDLE) == "verified"
    action = decide(started([verified(0), confirmed]), at(9))
    assert isinstance(action, StartBaking) and action.mark_verified_node_ids == (nid(1),)


def test_offline_unverified_nodes_within_budget_are_skipped_when_baking_starts() -> None:
    nodes = [verified(0), node(1, state="downloaded", online=False)]
    action = decide(started(nodes, settings={"max_unavailable": 1}), at(10))
    assert isinstance(action, StartBaking)
    assert action.skip_node_ids == (nid(1),)


def test_skip_unavailable_lets_a_running_step_bake_without_its_offline_nodes() -> None:
    nodes = [verified(0), node(1, state="assigned", online=False)]
    v = view([step(0, nodes, "running", skip_unavailable=True)])
    action = decide(v, at(10))
    assert isinstance(action, StartBaking) and action.skip_node_ids == (nid(1),)


def test_a_step_whose_remaining_nodes_all_failed_within_budget_fails() -> None:
    nodes = [node(0, state="failed"), node(1, state="skipped")]
    v = started(nodes, settings={"max_failures": 1, "max_unavailable": 1})
    action = decide(v, at(10))
    assert isinstance(action, FailStep) and action.reason == "no_available_nodes"


def test_a_step_whose_nodes_are_all_unavailable_within_budget_is_skipped() -> None:
    nodes = [node(0, state="skipped"), node(1, state="assigned", online=False)]
    action = decide(started(nodes, settings={"max_unavailable": 2}), at(10))
    assert isinstance(action, CompleteStep)
    assert (action.reason, action.verdict, action.skip_node_ids) == (
        "step_skipped",
        None,
        (nid(1),),
    )


def test_a_running_step_with_nodes_on_their_way_waits() -> None:
    action = decide(started([verified(0), node(1, state="staged")]), at(10))
    assert isinstance(action, Nothing)
    assert action.reason == "waiting_for_nodes"
    assert action.metadata["verified"] == 1 and action.metadata["in_progress"] == 1


def test_a_running_step_past_its_deadline_fails() -> None:
    action = decide(started([node(0, state="staged")]), at(601))
    assert isinstance(action, FailStep)
    assert action.reason == "deadline_exceeded"
    assert action.metadata["elapsed_s"] == 601


def test_a_running_step_exactly_at_its_deadline_still_waits() -> None:
    assert isinstance(decide(started([node(0, state="staged")]), at(600)), Nothing)


def test_a_step_verified_after_its_deadline_still_bakes() -> None:
    assert isinstance(decide(started([verified(0)]), at(5000)), StartBaking)


def test_a_resume_restarts_the_deadline() -> None:
    v = view([step(0, [node(0, state="staged")], "running", resumed_at=at(1000))])
    assert isinstance(decide(v, at(1500)), Nothing)
    assert isinstance(decide(v, at(1601)), FailStep)


# --- 6: baking --------------------------------------------------------------------------------


def test_passing_gates_with_no_bake_complete_the_step_at_once() -> None:
    action = decide(baking([verified(0)]), at(10))
    assert isinstance(action, CompleteStep)
    assert action.verdict is not None and action.verdict.passing
    assert action.audit_action == "rollout.step_completed"


def test_passing_gates_start_the_bake_clock() -> None:
    action = decide(baking([verified(0)], {"bake_s": 60}), at(10))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.failing_since, action.changed) == (at(10), None, True)
    assert action.reason == "gates_passing"
    assert action.audit_action == "rollout.gates_changed"


def test_gates_passing_for_less_than_the_bake_keep_baking_unchanged() -> None:
    n = verified(0, heartbeat=40)
    action = decide(baking([n], {"bake_s": 60}, gates_passing_since=at(10)), at(50))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.changed) == (at(10), False)
    assert action.audit_action is None


def test_gates_passing_for_the_whole_bake_complete_the_step() -> None:
    n = verified(0, heartbeat=65)
    action = decide(baking([n], {"bake_s": 60}, gates_passing_since=at(10)), at(70))
    assert isinstance(action, CompleteStep)
    assert action.metadata["baked_s"] == 60


def test_failing_gates_start_the_grace_clock() -> None:
    action = decide(baking([verified(0, health_status="unhealthy")]), at(10))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.failing_since, action.changed) == (None, at(10), True)
    assert action.reason == "gates_failing"
    assert "n00: heartbeat_healthy (unhealthy)" in action.details


def test_gates_failing_within_the_grace_keep_baking() -> None:
    n = verified(0, health_status="unhealthy", heartbeat=60)
    action = decide(baking([n], gates_failing_since=at(10)), at(70))
    assert isinstance(action, RecordGates) and action.failing_since == at(10)


def test_gates_failing_longer_than_the_grace_fail_the_step() -> None:
    n = verified(0, health_status="unhealthy", heartbeat=60)
    action = decide(baking([n], gates_failing_since=at(10)), at(71))
    assert isinstance(action, FailStep)
    assert (action.reason, action.then) == ("gates_failed", "pause")
    assert action.verdict is not None and not action.verdict.passing
    assert action.metadata["failing_nodes"] == ["n00"]


def test_a_gate_grace_of_zero_still_needs_two_failing_evaluations() -> None:
    n = verified(0, health_status="unhealthy", heartbeat=60)
    first = decide(baking([n], {"gate_grace_s": 0}), at(61))
    assert isinstance(first, RecordGates)
    again = decide(baking([n], {"gate_grace_s": 0}, gates_failing_since=at(61)), at(62))
    assert isinstance(again, FailStep)


def test_gates_turning_from_passing_to_failing_reset_the_bake_clock() -> None:
    n = verified(0, health_status="degraded", heartbeat=40)
    action = decide(baking([n], {"bake_s": 60}, gates_passing_since=at(10)), at(50))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.failing_since, action.changed) == (None, at(50), True)


def test_gates_turning_from_failing_to_passing_reset_the_grace_clock() -> None:
    n = verified(0, heartbeat=40)
    action = decide(baking([n], {"bake_s": 60}, gates_failing_since=at(10)), at(50))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.failing_since, action.changed) == (at(50), None, True)


def test_gates_awaiting_a_first_heartbeat_wait_without_any_clock() -> None:
    n = verified(0, activated=10, heartbeat=5)
    action = decide(baking([n], gates_passing_since=at(5)), at(20))
    assert isinstance(action, RecordGates)
    assert (action.passing_since, action.failing_since, action.changed) == (None, None, True)
    assert action.reason == "gates_waiting"


def test_gate_clocks_from_before_a_resume_are_ignored() -> None:
    n = verified(0, health_status="unhealthy", heartbeat=500)
    v = baking([n], gates_failing_since=at(10), resumed_at=at(490))
    action = decide(v, at(510))
    assert isinstance(action, RecordGates) and action.failing_since == at(510)


def test_gate_clocks_from_before_the_bake_started_are_ignored() -> None:
    n = verified(0, heartbeat=40)
    v = baking([n], {"bake_s": 60}, baking_since=at(30), gates_passing_since=at(10))
    action = decide(v, at(75))
    assert isinstance(action, RecordGates) and action.passing_since == at(75)


@pytest.mark.parametrize("floor", ["baking_since", "resumed_at"])
def test_a_tick_whose_clock_runs_behind_the_bake_starts_a_clock_it_keeps(floor: str) -> None:
    # A worker 3 s behind the one that started the bake (or took the resume): the clock it
    # starts must not be void at once, or every replay of the tick records a new one.
    failing = verified(0, health_status="unhealthy", heartbeat=25)
    first = decide(baking([failing], **{floor: at(30)}), at(27))
    assert isinstance(first, RecordGates)
    assert (first.failing_since, first.changed) == (at(30), True)
    assert first.metadata["failing_s"] == 0
    again = decide(baking([failing], **{floor: at(30)}, gates_failing_since=at(30)), at(27))
    assert isinstance(again, RecordGates) and not again.changed

    passing = verified(0, heartbeat=25)
    first = decide(baking([passing], {"bake_s": 60}, **{floor: at(30)}), at(27))
    assert isinstance(first, RecordGates) and (first.passing_since, first.changed) == (at(30), True)
    again = decide(
        baking([passing], {"bake_s": 60}, **{floor: at(30)}, gates_passing_since=at(30)), at(27)
    )
    assert isinstance(again, RecordGates) and not again.changed


def test_a_node_failing_while_baking_fails_the_step() -> None:
    action = decide(baking([verified(0), node(1, state="rolled_back")]), at(10))
    assert isinstance(action, FailStep) and action.reason == "max_failures_exceeded"


def test_a_baking_step_past_its_deadline_fails_with_its_verdict() -> None:
    n = verified(0, heartbeat=640)
    action = decide(baking([n], {"bake_s": 60}, gates_passing_since=at(600)), at(650))
    assert isinstance(action, FailStep)
    assert action.reason == "deadline_exceeded" and action.verdict is not None


def test_gates_failing_past_the_grace_are_reported_before_the_deadline() -> None:
    n = verified(0, health_status="unhealthy", heartbeat=640)
    action = decide(baking([n], gates_failing_since=at(500)), at(650))
    assert isinstance(action, FailStep) and action.reason == "gates_failed"


def test_a_waiting_baking_step_past_its_deadline_fails() -> None:
    n = verified(0, activated=640, heartbeat=5)
    action = decide(baking([n]), at(650))
    assert isinstance(action, FailStep) and action.reason == "deadline_exceeded"


def test_a_completed_bake_wins_over_the_deadline() -> None:
    n = verified(0, heartbeat=700)
    assert isinstance(decide(baking([n], gates_passing_since=at(650)), at(710)), CompleteStep)


def canary(canary_rate: float, baseline_rate: float) -> RolloutView:
    settings_ = config(strategy="canary", health_gates={"max_error_rate_vs_baseline": 2})
    steps = [
        step(0, [verified(0, metrics={"error_rate": canary_rate})], "baking"),
        step(1, [node(1, metrics={"error_rate": baseline_rate})]),
    ]
    return view(steps, settings_)


def test_the_canary_baseline_is_the_untouched_nodes_of_pending_steps() -> None:
    passing = decide(canary(canary_rate=3.9, baseline_rate=2.0), at(10))
    assert isinstance(passing, RecordGates) and passing.reason == "gates_passing"
    failing = decide(canary(canary_rate=4.1, baseline_rate=2.0), at(10))
    assert isinstance(failing, RecordGates) and failing.reason == "gates_failing"
    assert failing.verdict.baseline is not None
    assert failing.verdict.baseline.allowed_error_rate == 4.0


def test_baseline_nodes_given_in_the_view_replace_the_pending_steps() -> None:
    v = replace(
        canary(canary_rate=4.1, baseline_rate=2.0),
        baseline_nodes=(node(9, metrics={"error_rate": 3.0}),),
    )
    action = decide(v, at(10))
    assert isinstance(action, RecordGates) and action.reason == "gates_passing"


# --- properties of decide's answers ---------------------------------------------------------


def test_deciding_twice_on_the_same_view_gives_equal_actions() -> None:
    v = baking([verified(0), verified(1, health_status="unhealthy")], gates_failing_since=at(3))
    assert decide(v, at(10)) == decide(copy_view(v), at(10))


def every_kind_of_action() -> list[Action]:
    return [
        decide(view([step(0, [node(0)])], state="paused"), T0),
        decide(view([step(0, [node(0)])]), T0),
        decide(started([verified(0)]), at(10)),
        decide(baking([verified(0)], {"bake_s": 60}), at(10)),
        decide(baking([verified(0)]), at(10)),
        decide(
            baking(
                [verified(0, health_status="unhealthy", heartbeat=60)], gates_failing_since=at(0)
            ),
            at(70),
        ),
        decide(view([step(0, [node(0)])], freeze_active=True), T0),
        decide(blue_green(promoted=False), at(100)),
        decide(view([step(0, [node(0)])], bundle_status="revoked"), T0),
        decide(view([step(0, [verified(0)], "completed", started_at=T0)]), at(100)),
    ]


def test_every_kind_of_action_is_json_ready_with_a_reason_and_details() -> None:
    actions = every_kind_of_action()
    assert len({type(action) for action in actions}) == 10
    for action in actions:
        encoded = json.loads(json.dumps(action.to_dict()))
        assert encoded["action"] == type(action).KIND
        assert action.reason and action.details
        json.dumps(dict(action.metadata))


def test_only_nothing_and_unchanged_gate_records_go_unaudited() -> None:
    for action in every_kind_of_action():
        quiet = isinstance(action, Nothing) or (
            isinstance(action, RecordGates) and not action.changed
        )
        assert (action.audit_action is None) == quiet


def test_the_step_tally_sorts_nodes_by_outcome() -> None:
    nodes = [
        verified(0),
        node(1, state="failed"),
        node(2, state="skipped"),
        node(3, state="assigned", online=False),
        node(4, state="assigned"),
    ]
    tally = StepTally.of(nodes, BUNDLE)
    assert [
        len(group)
        for group in (tally.verified, tally.failed, tally.skipped, tally.offline, tally.in_progress)
    ] == [1, 1, 1, 1, 1]


def test_a_node_with_its_own_target_bundle_is_verified_on_that_bundle() -> None:
    assert node_outcome(node(0, active_bundle_id=OLD, target_bundle_id=OLD), BUNDLE) == "verified"
    assert (
        node_outcome(node(0, active_bundle_id=BUNDLE, target_bundle_id=OLD), BUNDLE)
        == "in_progress"
    )


# --- simulation ---------------------------------------------------------------------------

SIM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

settings_strategy = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(["rolling", "canary", "blue_green", "all_at_once"]),
        "max_unavailable": st.integers(0, 2),
        "max_failures": st.sampled_from([0, 1, "50%"]),
        "progress_deadline_s": st.sampled_from([240, 600]),
        "bake_s": st.sampled_from([0, 30, 90]),
        "gate_grace_s": st.sampled_from([0, 30, 60]),
        "on_failure": st.sampled_from(["pause", "rollback"]),
        "baseline": st.booleans(),
        "batch_size": st.integers(1, 2),
    }
)


def sim_config(values: dict) -> RolloutConfig:
    values = dict(values)
    baseline = values.pop("baseline")
    if values["strategy"] == "canary":
        values["canary_steps"] = [20, 50, 100]
        if baseline:
            values["health_gates"] = {"max_error_rate_vs_baseline": 3}
    if values["strategy"] == "rolling":
        values["batch_size"] = values.pop("batch_size")
    else:
        values.pop("batch_size")
    return RolloutConfig.from_dict(values)


def check_action(v: RolloutView, action: Action, now_s: float) -> None:
    """Invariants of one decision on one view."""
    now = at(now_s)
    assert decide(copy_view(v), now) == action, "decide is deterministic for equal views"
    if v.state != "running":
        assert isinstance(action, Nothing)
        return
    assert action.reason and action.details
    if isinstance(action, StartStep):
        assert not (v.freeze_active and not v.freeze_overridden)
        assert active_step(v) is None
        assert all(s.state == "completed" for s in v.steps[: action.index]), (
            "a step starts only after every earlier step passed its gates"
        )
        if v.steps[action.index].kind == "promote":
            assert v.promoted
    if isinstance(action, CompleteStep) and action.verdict is None:
        tally = StepTally.of(v.steps[action.index].nodes, v.bundle_id)
        assert not tally.verified and not tally.failed and not tally.in_progress
        assert action.reason == "step_skipped"
    elif isinstance(action, CompleteStep):
        assert action.verdict is not None and action.verdict.passing
        assert action.verdict == evaluate(
            v.steps[action.index].nodes,
            v.config,
            now,
            baseline=_baseline_of(v),
            bundle_id=v.bundle_id,
            heartbeat_interval_s=v.heartbeat_interval_s,
        )
        _only_fresh_post_activation_heartbeats(action.verdict, v, now_s)
    if isinstance(action, Complete):
        budget = v.config.failure_budget
        for s in v.steps:
            assert s.state == "completed"
            tally = StepTally.of(s.nodes, v.bundle_id)
            assert len(tally.failed) <= budget(len(s.nodes))
            for n in s.nodes:
                if n.state not in EXCLUDED_DELIVERY_STATES:
                    assert n.state == "verified" and n.active_bundle_id == BUNDLE, (
                        "a completed rollout's nodes all run its bundle, verified"
                    )
    if isinstance(action, Nothing | RecordGates):
        current = active_step(v)
        assert current is not None, "a running rollout with no active step always has work to do"
        assert current.clock_start is not None
        elapsed = (now - current.clock_start).total_seconds()
        assert elapsed <= v.config.progress_deadline_s, "waiting is bounded by the deadline"


def _baseline_of(v: RolloutView) -> tuple:
    return tuple(n for s in v.steps if s.state == "pending" for n in s.nodes)


def _only_fresh_post_activation_heartbeats(
    verdict: GateVerdict, v: RolloutView, now_s: float
) -> None:
    timeout = v.config.data_timeout_s(v.heartbeat_interval_s)
    for result in verdict.nodes:
        assert result.activated_at is not None and result.heartbeat_at is not None
        assert result.heartbeat_at > result.activated_at
        assert (at(now_s) - result.heartbeat_at).total_seconds() <= timeout


@SIM
@given(
    settings_=settings_strategy,
    profiles=st.lists(
        st.one_of(st.just("good"), st.sampled_from(PROFILES)), min_size=2, max_size=8
    ),
    seed=st.integers(0, 2**32 - 1),
    freeze=st.one_of(st.none(), st.tuples(st.integers(0, 900), st.integers(10, 300))),
    revoke_at=st.one_of(st.none(), st.integers(0, 1200)),
)
def test_simulated_rollouts_keep_the_invariants_and_always_settle(
    settings_: dict,
    profiles: list[str],
    seed: int,
    freeze: tuple[int, int] | None,
    revoke_at: int | None,
) -> None:
    rng = random.Random(seed)
    cfg = sim_config(settings_)
    fleet, nodes = Fleet.build(rng, profiles)
    v = planned_view(nodes, cfg)
    t = 0.0
    resumes = 0
    ticks = 0
    # Each active step either moves or meets its deadline; a few operator resumes restart it.
    limit = (len(v.steps) + 1) * 5 * (cfg.progress_deadline_s // 5 + 2)
    while ticks < limit:
        ticks += 1
        t += rng.choice([5, 10, 15, 30])
        frozen = freeze is not None and freeze[0] <= t < freeze[0] + freeze[1]
        revoked = revoke_at is not None and t >= revoke_at
        v = replace(
            fleet.step_world(v, t),
            freeze_active=frozen,
            bundle_status="revoked" if revoked else "compiled",
        )
        action = decide(v, at(t))
        check_action(v, action, t)
        before = v
        v = apply(v, action, at(t))
        if not isinstance(action, Nothing | RecordGates):
            assert v != before, "every non-waiting action changes the rollout"
        if v.state == "paused":
            if isinstance(action, AwaitPromotion):
                v = promote(v)
            elif isinstance(action, Pause) and action.reason == "freeze_window":
                assert frozen and freeze is not None, "a freeze pause happens only while frozen"
                t = float(freeze[0] + freeze[1])
                v = resume(v, at(t))
            elif resumes < 3:
                resumes += 1
                skip = isinstance(action, Pause) and action.reason == "max_unavailable_exceeded"
                v = resume(v, at(t), skip_unavailable=skip and rng.random() < 0.7)
            else:
                break
        if v.state in ("completed", "failed", "rolling_back"):
            break
    assert v.state != "running", f"the rollout settled within {ticks} ticks (t={t:g}s)"
