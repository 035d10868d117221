"""Health gates: only fresh heartbeats received after activation count, missing data never
passes, and every verdict says per node and per gate why."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_sim import BUNDLE, OLD, T0, at, node, verified

from sentinel_cp.rollouts.gates import BASELINE_ERROR_RATE_FLOOR, baseline_summary, evaluate
from sentinel_cp.rollouts.types import GateVerdict, NodeView, RolloutConfig

DEFAULT = RolloutConfig.from_dict({})


def gates(**values: object) -> RolloutConfig:
    return RolloutConfig.from_dict({"health_gates": values})


def judge(
    nodes: list[NodeView], config: RolloutConfig = DEFAULT, now: float = 10, **kw: object
) -> GateVerdict:
    kw.setdefault("bundle_id", BUNDLE)
    return evaluate(nodes, config, at(now), **kw)  # type: ignore[arg-type]


def only(verdict: GateVerdict) -> tuple[str, str]:
    (result,) = verdict.nodes
    return result.result, result.data


# --- data: after activation, fresh ----------------------------------------------------------


def test_a_healthy_heartbeat_after_activation_passes() -> None:
    verdict = judge([verified(0, activated=0, heartbeat=5)])
    assert verdict.passing and verdict.state == "passing"
    assert only(verdict) == ("passed", "fresh")


def test_a_heartbeat_from_before_activation_does_not_count() -> None:
    verdict = judge([verified(0, activated=5, heartbeat=4)], now=10)
    assert not verdict.passing
    assert only(verdict) == ("waiting", "awaiting_heartbeat")


def test_a_heartbeat_at_the_instant_of_activation_does_not_count() -> None:
    assert only(judge([verified(0, activated=5, heartbeat=5)])) == ("waiting", "awaiting_heartbeat")


def test_no_heartbeat_since_activation_within_the_data_timeout_fails() -> None:
    verdict = judge([verified(0, activated=0, heartbeat=-1)], now=61)
    assert verdict.state == "failing"
    assert only(verdict) == ("failed", "no_heartbeat_since_activation")


def test_no_heartbeat_at_all_fails_after_the_data_timeout() -> None:
    verdict = judge([verified(0, activated=0, last_heartbeat_at=None)], now=61)
    assert only(verdict) == ("failed", "no_heartbeat_since_activation")


def test_awaiting_the_first_heartbeat_lasts_exactly_the_data_timeout() -> None:
    assert only(judge([verified(0, activated=0, heartbeat=-1)], now=60))[0] == "waiting"


def test_a_stale_heartbeat_fails() -> None:
    verdict = judge([verified(0, activated=0, heartbeat=5)], now=66)
    assert only(verdict) == ("failed", "stale_heartbeat")
    assert verdict.nodes[0].heartbeat_age_s == 61


def test_the_data_timeout_defaults_to_two_heartbeat_intervals() -> None:
    n = verified(0, activated=0, heartbeat=5)
    assert judge([n], now=125, heartbeat_interval_s=60).passing
    assert not judge([n], now=126, heartbeat_interval_s=60).passing
    assert judge([n], now=125, heartbeat_interval_s=60).data_timeout_s == 120


def test_an_explicit_gate_data_timeout_wins_over_the_heartbeat_interval() -> None:
    config = RolloutConfig.from_dict({"gate_data_timeout_s": 10})
    n = verified(0, activated=0, heartbeat=5)
    assert judge([n], config, now=15, heartbeat_interval_s=600).passing
    assert not judge([n], config, now=16, heartbeat_interval_s=600).passing


def test_a_node_never_activated_fails() -> None:
    verdict = judge([verified(0, activated_at=None)])
    assert only(verdict) == ("failed", "not_activated")


def test_a_node_no_longer_running_the_bundle_fails() -> None:
    verdict = judge([verified(0, active_bundle_id=OLD)])
    assert only(verdict) == ("failed", "not_on_bundle")


def test_a_node_is_judged_on_its_own_target_bundle() -> None:
    n = verified(0, active_bundle_id=OLD, target_bundle_id=OLD)
    assert judge([n]).passing


def test_without_a_bundle_id_the_bundle_is_not_checked() -> None:
    assert judge([verified(0, active_bundle_id=OLD)], bundle_id=None).passing


# --- gates ----------------------------------------------------------------------------------


def test_an_unhealthy_heartbeat_fails_heartbeat_healthy() -> None:
    verdict = judge([verified(0, health_status="degraded")])
    (check,) = verdict.nodes[0].checks
    assert (check.gate, check.passed, check.observed, check.problem) == (
        "heartbeat_healthy",
        False,
        "degraded",
        "unhealthy",
    )


def test_a_heartbeat_without_health_fails_heartbeat_healthy() -> None:
    (check,) = judge([verified(0, health_status=None)]).nodes[0].checks
    assert check.problem == "missing_health"


def test_heartbeat_healthy_false_does_not_check_health() -> None:
    verdict = judge([verified(0, health_status="unhealthy")], gates(heartbeat_healthy=False))
    assert verdict.passing and verdict.nodes[0].checks == ()


def test_gates_still_need_fresh_data_when_no_gate_is_configured() -> None:
    verdict = judge([verified(0, heartbeat=5)], gates(heartbeat_healthy=False), now=100)
    assert only(verdict) == ("failed", "stale_heartbeat")


METRIC_GATES = [
    ("max_error_rate", "error_rate", 1.0),
    ("max_latency_ms", "latency_p99_ms", 250),
    ("max_cpu_percent", "cpu_percent", 80),
    ("max_memory_percent", "memory_percent", 90),
]


def metric_check(gate: str, metric: str, limit: float, value: object) -> tuple[bool, str | None]:
    n = verified(0, metrics={metric: value} if value is not None else {})
    verdict = judge([n], gates(**{gate: limit}))
    check = next(c for c in verdict.nodes[0].checks if c.gate == gate)
    return check.passed, check.problem


def test_each_metric_gate_passes_at_its_threshold() -> None:
    for gate, metric, limit in METRIC_GATES:
        assert metric_check(gate, metric, limit, limit) == (True, None), gate


def test_each_metric_gate_fails_above_its_threshold() -> None:
    for gate, metric, limit in METRIC_GATES:
        assert metric_check(gate, metric, limit, limit + 0.5) == (False, "above_threshold"), gate


def test_each_metric_gate_fails_when_the_metric_is_missing() -> None:
    for gate, metric, limit in METRIC_GATES:
        assert metric_check(gate, metric, limit, None) == (False, "missing_metric"), gate


def test_each_metric_gate_fails_when_the_metric_is_not_a_number() -> None:
    for gate, metric, limit in METRIC_GATES:
        for value in ("12", True, float("nan"), [1]):
            assert metric_check(gate, metric, limit, value) == (False, "invalid_metric"), gate


def test_every_configured_gate_is_checked_on_every_node() -> None:
    config = gates(max_error_rate=1, max_latency_ms=100)
    n0 = verified(0, metrics={"error_rate": 0.5, "latency_p99_ms": 40})
    n1 = verified(1, metrics={"error_rate": 0.5, "latency_p99_ms": 400})
    verdict = judge([n0, n1], config)
    assert [r.result for r in verdict.nodes] == ["passed", "failed"]
    assert [c.gate for c in verdict.nodes[1].checks] == [
        "heartbeat_healthy",
        "max_error_rate",
        "max_latency_ms",
    ]


# --- population -----------------------------------------------------------------------------


def test_failed_rolled_back_and_skipped_nodes_are_excluded_and_listed() -> None:
    nodes = [
        verified(0),
        node(1, state="failed"),
        node(2, state="rolled_back"),
        node(3, state="skipped"),
    ]
    verdict = judge(nodes)
    assert verdict.passing
    assert [r.name for r in verdict.nodes] == ["n00"]
    assert [(e.name, e.state) for e in verdict.excluded] == [
        ("n01", "failed"),
        ("n02", "rolled_back"),
        ("n03", "skipped"),
    ]


def test_a_step_with_nobody_left_to_judge_fails() -> None:
    verdict = judge([node(0, state="failed")])
    assert (verdict.state, verdict.problem) == ("failing", "no_nodes_to_judge")
    assert verdict.summary() == "no node of the step is left to judge"


def test_one_failing_node_fails_the_verdict_even_while_another_waits() -> None:
    nodes = [verified(0, health_status="unhealthy"), verified(1, activated=8, heartbeat=4)]
    assert judge(nodes).state == "failing"


def test_a_node_awaiting_its_first_heartbeat_makes_the_verdict_wait() -> None:
    nodes = [verified(0), verified(1, activated=8, heartbeat=4)]
    verdict = judge(nodes)
    assert verdict.state == "waiting" and not verdict.passing
    assert "n01: awaiting_heartbeat" in verdict.summary()


# --- canary baseline ------------------------------------------------------------------------

CANARY_CONFIG = RolloutConfig.from_dict(
    {"strategy": "canary", "health_gates": {"max_error_rate_vs_baseline": 2}}
)


def canary_verdict(
    canary_rate: float, baseline_rates: Sequence[float | None], **kw: Any
) -> GateVerdict:
    baseline = [
        node(
            10 + i,
            metrics={"error_rate": rate} if rate is not None else {},
            last_heartbeat_at=at(5),
        )
        for i, rate in enumerate(baseline_rates)
    ]
    n = verified(0, metrics={"error_rate": canary_rate})
    return judge([n], CANARY_CONFIG, baseline=baseline, **kw)


def test_the_canary_may_reach_the_multiplier_times_the_baseline_mean() -> None:
    verdict = canary_verdict(6.0, [2.0, 4.0])
    assert verdict.passing
    assert verdict.baseline is not None
    assert (verdict.baseline.error_rate, verdict.baseline.allowed_error_rate) == (3.0, 6.0)
    assert not canary_verdict(6.1, [2.0, 4.0]).passing


def test_the_baseline_has_a_floor_so_a_near_zero_baseline_allows_some_errors() -> None:
    assert BASELINE_ERROR_RATE_FLOOR == 1.0
    verdict = canary_verdict(2.0, [0.0])
    assert verdict.passing
    assert verdict.baseline is not None and verdict.baseline.allowed_error_rate == 2.0
    assert not canary_verdict(2.01, [0.0]).passing


def test_without_untouched_nodes_the_baseline_gate_does_not_apply() -> None:
    verdict = canary_verdict(50.0, [])
    assert verdict.passing
    assert verdict.baseline is not None and not verdict.baseline.applicable
    assert [c.gate for c in verdict.nodes[0].checks] == ["heartbeat_healthy"]


def test_untouched_nodes_without_fresh_data_fail_the_baseline_gate() -> None:
    verdict = canary_verdict(0.1, [None, None])
    check = verdict.nodes[0].checks[-1]
    assert (check.gate, check.passed, check.problem) == (
        "max_error_rate_vs_baseline",
        False,
        "baseline_data_missing",
    )


def test_stale_baseline_heartbeats_are_not_sampled() -> None:
    stale = node(10, metrics={"error_rate": 50.0}, last_heartbeat_at=at(-100))
    fresh = node(11, metrics={"error_rate": 2.0}, last_heartbeat_at=at(5))
    summary = baseline_summary([stale, fresh], 2, at(10), timeout_s=60)
    assert (summary.node_count, summary.sampled_node_count, summary.error_rate) == (2, 1, 2.0)


def test_the_canary_baseline_gate_needs_the_canary_error_rate() -> None:
    n = verified(0, metrics={})
    verdict = judge(
        [n],
        CANARY_CONFIG,
        baseline=[node(10, metrics={"error_rate": 1.0}, last_heartbeat_at=at(5))],
    )
    assert verdict.nodes[0].checks[-1].problem == "missing_metric"


def test_a_verdict_without_the_baseline_gate_has_no_baseline() -> None:
    assert judge([verified(0)]).baseline is None


# --- the record -----------------------------------------------------------------------------


def test_a_verdict_is_json_ready_with_every_input() -> None:
    config = RolloutConfig.from_dict(
        {
            "strategy": "canary",
            "health_gates": {"max_error_rate": 5, "max_error_rate_vs_baseline": 2},
        }
    )
    nodes = [verified(0, metrics={"error_rate": 7.0}), node(1, state="failed")]
    baseline = [node(9, metrics={"error_rate": 1.0}, last_heartbeat_at=at(5))]
    data = json.loads(
        json.dumps(evaluate(nodes, config, at(10), baseline=baseline, bundle_id=BUNDLE).to_dict())
    )
    assert data["state"] == "failing" and data["passing"] is False
    assert data["gates"] == {
        "heartbeat_healthy": True,
        "max_error_rate": 5,
        "max_error_rate_vs_baseline": 2,
    }
    (result,) = data["nodes"]
    assert result["name"] == "n00" and result["data"] == "fresh"
    assert result["activated_at"] == T0.isoformat()
    assert {c["gate"]: c["problem"] for c in result["checks"]} == {
        "heartbeat_healthy": None,
        "max_error_rate": "above_threshold",
        "max_error_rate_vs_baseline": "above_threshold",
    }
    assert data["excluded"] == [
        {"node_id": str(nodes[1].node_id), "name": "n01", "state": "failed"}
    ]
    assert data["baseline"]["allowed_error_rate"] == 2.0


def test_the_summary_names_the_failing_nodes_and_gates() -> None:
    verdict = judge([verified(0, health_status="unhealthy"), verified(1, activated_at=None)])
    assert verdict.summary() == (
        "gates failed on 2 of 2 node(s): n00: heartbeat_healthy (unhealthy); n01: not_activated"
    )
    assert verdict.failing_node_names == ("n00", "n01")


def test_the_summary_of_a_passing_verdict_counts_its_nodes() -> None:
    assert judge([verified(0), verified(1)]).summary() == "all gates pass on 2 node(s)"


def test_the_summary_shortens_long_lists() -> None:
    verdict = judge([verified(i, health_status="unhealthy") for i in range(7)])
    assert verdict.summary().endswith("; …")


# --- properties -----------------------------------------------------------------------------

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

offsets = st.one_of(st.none(), st.integers(-400, 400))
metric_values = st.one_of(st.none(), st.floats(0, 100), st.integers(0, 10_000), st.text(max_size=3))


@st.composite
def node_views(draw: st.DrawFn, i: int) -> NodeView:
    activated = draw(offsets)
    heartbeat = draw(offsets)
    return NodeView(
        node_id=node(i).node_id,
        name=f"n{i:02d}",
        online=draw(st.booleans()),
        state=draw(st.sampled_from(["assigned", "activated", "verified", "failed", "skipped"])),
        active_bundle_id=draw(st.sampled_from([BUNDLE, BUNDLE, OLD, None])),
        activated_at=None if activated is None else at(activated),
        last_heartbeat_at=None if heartbeat is None else at(heartbeat),
        health_status=draw(st.sampled_from(["healthy", "healthy", "degraded", None])),
        metrics=draw(
            st.dictionaries(
                st.sampled_from(["error_rate", "latency_p99_ms", "cpu_percent"]), metric_values
            )
        ),
    )


configs = st.sampled_from(
    [
        DEFAULT,
        gates(heartbeat_healthy=False),
        gates(max_error_rate=5, max_latency_ms=300),
        RolloutConfig.from_dict({"gate_data_timeout_s": 15}),
    ]
)


@PROPS
@given(data=st.data(), count=st.integers(1, 6), config=configs, now=st.integers(-50, 500))
def test_a_node_without_a_fresh_heartbeat_after_activation_never_passes(
    data: st.DataObject, count: int, config: RolloutConfig, now: int
) -> None:
    nodes = [data.draw(node_views(i)) for i in range(count)]
    verdict = evaluate(nodes, config, at(now), bundle_id=BUNDLE)
    timeout = timedelta(seconds=verdict.data_timeout_s)
    by_id = {n.node_id: n for n in nodes}
    for result in verdict.nodes:
        n = by_id[result.node_id]
        fresh_after_activation = (
            n.activated_at is not None
            and n.last_heartbeat_at is not None
            and n.last_heartbeat_at > n.activated_at
            and at(now) - n.last_heartbeat_at <= timeout
            and n.active_bundle_id == BUNDLE
        )
        if not fresh_after_activation:
            assert result.result != "passed"
            assert result.checks == ()
    if verdict.passing:
        assert verdict.nodes, "an empty population never passes"
        assert all(r.result == "passed" for r in verdict.nodes)


@PROPS
@given(
    health=st.sampled_from(["healthy", "degraded", None]),
    metrics=st.dictionaries(st.sampled_from(["error_rate", "latency_p99_ms"]), st.floats(0, 10)),
    before=st.integers(0, 10_000),
    since_activation=st.integers(0, 10_000),
)
def test_a_heartbeat_sent_before_activation_never_counts(
    health: str | None, metrics: dict, before: int, since_activation: int
) -> None:
    activated = at(100)
    n = verified(
        0,
        activated_at=activated,
        last_heartbeat_at=activated - timedelta(seconds=before),
        health_status=health,
        metrics=metrics,
    )
    verdict = evaluate(
        [n],
        gates(heartbeat_healthy=False),
        activated + timedelta(seconds=since_activation),
        bundle_id=BUNDLE,
    )
    assert not verdict.passing
    assert verdict.nodes[0].data in ("awaiting_heartbeat", "no_heartbeat_since_activation")


@PROPS
@given(
    rates=st.lists(st.floats(0, 100), max_size=5),
    canary_rate=st.floats(0, 100),
)
def test_the_baseline_gate_allows_at_least_the_floor_times_the_multiplier(
    rates: list[float], canary_rate: float
) -> None:
    verdict = canary_verdict(canary_rate, rates)
    assert verdict.baseline is not None
    if rates:
        allowed = verdict.baseline.allowed_error_rate
        assert allowed is not None and allowed >= 2 * BASELINE_ERROR_RATE_FLOOR
        assert verdict.passing == (canary_rate <= allowed)
    else:
        assert verdict.passing
