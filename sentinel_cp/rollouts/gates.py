"""Health gates: is a step's new bundle demonstrably healthy on its nodes, and if not, why.

`evaluate` judges each node of the step from its latest heartbeat — but only a heartbeat that
arrived *after* the node activated the bundle, and no older than the data timeout (default 2 ×
the heartbeat interval). Missing data is failure, never success (the peer implementation read
whatever heartbeat was last, even one sent before activation, and counted a missing error rate
as 0). The one allowance: right after activation a node has had no chance to heartbeat yet, so
until the data timeout has passed since activation it is `waiting` — not passing, and not yet
failing, so the failure grace does not start before a heartbeat could have arrived.

The population is the step's nodes that are still in it: nodes whose delivery `failed`, that
`rolled_back`, or that the rollout `skipped` (offline within `max_unavailable`) are listed as
excluded. Their failures are counted against `max_failures` by `decide`, not here. A
population with nobody left fails: there is nothing to show healthy.

Canary baseline (`max_error_rate_vs_baseline`, a multiplier): the baseline is the mean
`error_rate` of the untouched nodes with a fresh heartbeat; each canary node may reach
`multiplier × max(baseline, BASELINE_ERROR_RATE_FLOOR)`. The floor (1 percentage point) keeps a
healthy baseline near 0 % from failing a canary for a single stray error. When no untouched
node remains (the last canary step) the gate does not apply; when untouched nodes exist but none
has fresh data the gate fails (no comparison, no pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sentinel_cp.rollouts.types import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    EXCLUDED_DELIVERY_STATES,
    BaselineSummary,
    ExcludedNode,
    GateCheck,
    GateVerdict,
    HealthGates,
    NodeGateResult,
    NodeGateResultState,
    NodeView,
    RolloutConfig,
    VerdictState,
    is_number,
)

BASELINE_ERROR_RATE_FLOOR = 1.0  # percent

__all__ = ["BASELINE_ERROR_RATE_FLOOR", "GateVerdict", "baseline_summary", "evaluate"]


def evaluate(
    step_nodes: Sequence[NodeView],
    config: RolloutConfig,
    now: datetime,
    *,
    baseline: Sequence[NodeView] | None = None,
    bundle_id: str | None = None,
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S,
) -> GateVerdict:
    """Evaluate `config.health_gates` over the step's available nodes at `now`.

    `bundle_id` is the rollout's bundle: a node that no longer reports running its target
    (`target_bundle_id` or `bundle_id`) fails. `baseline` is the canary baseline population
    (ignored unless `max_error_rate_vs_baseline` is set). Returns every node's data and checks.
    """
    timeout = config.data_timeout_s(heartbeat_interval_s)
    gates = config.health_gates
    population = [node for node in step_nodes if node.state not in EXCLUDED_DELIVERY_STATES]
    excluded = tuple(
        ExcludedNode(node_id=node.node_id, name=node.name, state=node.state)
        for node in step_nodes
        if node.state in EXCLUDED_DELIVERY_STATES
    )
    summary = None
    if gates.max_error_rate_vs_baseline is not None:
        summary = baseline_summary(
            baseline or (), gates.max_error_rate_vs_baseline, now, timeout_s=timeout
        )
    results = tuple(
        _judge(node, gates, summary, now, timeout, node.target_bundle_id or bundle_id)
        for node in population
    )
    problem = None
    state: VerdictState
    if not results:
        state, problem = "failing", "no_nodes_to_judge"
    elif any(result.result == "failed" for result in results):
        state = "failing"
    elif any(result.result == "waiting" for result in results):
        state = "waiting"
    else:
        state = "passing"
    return GateVerdict(
        state=state,
        evaluated_at=now,
        data_timeout_s=timeout,
        gates=gates.to_dict(),
        nodes=results,
        excluded=excluded,
        baseline=summary,
        problem=problem,
    )


def baseline_summary(
    nodes: Sequence[NodeView], multiplier: float, now: datetime, *, timeout_s: int
) -> BaselineSummary:
    """The canary baseline from untouched `nodes` (only heartbeats at most `timeout_s` old)."""
    samples = [
        float(node.metrics["error_rate"])
        for node in nodes
        if _fresh(node.last_heartbeat_at, now, timeout_s)
        and is_number(node.metrics.get("error_rate"))
    ]
    rate = sum(samples) / len(samples) if samples else None
    return BaselineSummary(
        applicable=bool(nodes),
        node_count=len(nodes),
        sampled_node_count=len(samples),
        error_rate=rate,
        floor=BASELINE_ERROR_RATE_FLOOR,
        multiplier=multiplier,
        allowed_error_rate=(
            multiplier * max(rate, BASELINE_ERROR_RATE_FLOOR) if rate is not None else None
        ),
    )


def _fresh(heartbeat_at: datetime | None, now: datetime, timeout_s: int) -> bool:
    return heartbeat_at is not None and (now - heartbeat_at).total_seconds() <= timeout_s


def _judge(
    node: NodeView,
    gates: HealthGates,
    baseline: BaselineSummary | None,
    now: datetime,
    timeout_s: int,
    target: str | None,
) -> NodeGateResult:
    heartbeat = node.last_heartbeat_at
    age = (now - heartbeat).total_seconds() if heartbeat is not None else None

    def result(
        outcome: NodeGateResultState, data: str, checks: tuple[GateCheck, ...] = ()
    ) -> NodeGateResult:
        return NodeGateResult(
            node_id=node.node_id,
            name=node.name,
            result=outcome,
            data=data,
            activated_at=node.activated_at,
            heartbeat_at=heartbeat,
            heartbeat_age_s=age,
            checks=checks,
        )

    if target is not None and node.active_bundle_id != target:
        return result("failed", "not_on_bundle")
    activated = node.activated_at
    if activated is None:
        return result("failed", "not_activated")
    if heartbeat is None or heartbeat <= activated:
        # Only what the node said while running the bundle counts.
        if (now - activated).total_seconds() <= timeout_s:
            return result("waiting", "awaiting_heartbeat")
        return result("failed", "no_heartbeat_since_activation")
    if age is not None and age > timeout_s:
        return result("failed", "stale_heartbeat")
    checks = _checks(node, gates, baseline)
    return result("passed" if all(c.passed for c in checks) else "failed", "fresh", checks)


def _checks(
    node: NodeView, gates: HealthGates, baseline: BaselineSummary | None
) -> tuple[GateCheck, ...]:
    checks = []
    if gates.heartbeat_healthy:
        status = node.health_status
        checks.append(
            GateCheck(
                gate="heartbeat_healthy",
                passed=status == "healthy",
                observed=status,
                threshold=True,
                problem=None
                if status == "healthy"
                else ("missing_health" if status is None else "unhealthy"),
            )
        )
    for gate, metric in HealthGates.METRIC_GATES.items():
        limit = getattr(gates, gate)
        if limit is not None:
            checks.append(_limit_check(gate, node.metrics.get(metric), limit))
    if baseline is not None and baseline.applicable:
        allowed = baseline.allowed_error_rate
        if allowed is None:
            observed = node.metrics.get("error_rate")
            checks.append(
                GateCheck(
                    gate="max_error_rate_vs_baseline",
                    passed=False,
                    observed=float(observed) if is_number(observed) else None,
                    threshold=None,
                    problem="baseline_data_missing",
                )
            )
        else:
            checks.append(
                _limit_check("max_error_rate_vs_baseline", node.metrics.get("error_rate"), allowed)
            )
    return tuple(checks)


def _limit_check(gate: str, value: object, limit: float) -> GateCheck:
    if value is None:
        return GateCheck(gate, False, None, limit, "missing_metric")
    if not is_number(value):
        return GateCheck(gate, False, str(value)[:64], limit, "invalid_metric")
    observed = float(value)
    passed = observed <= limit
    return GateCheck(gate, passed, observed, limit, None if passed else "above_threshold")
