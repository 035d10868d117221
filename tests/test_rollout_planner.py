"""Rollout settings, target selection, step planning and busy-node conflicts (all pure)."""

from __future__ import annotations

import math
import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel_cp.errors import Invalid
from sentinel_cp.rollouts.planner import conflicts, order_nodes, plan_steps, select_targets
from sentinel_cp.rollouts.types import (
    CONFIG_FIELDS,
    DEFAULT_CANARY_STEPS,
    HealthGates,
    PlannedStep,
    PlanNode,
    RolloutConfig,
)


def nid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def fleet(count: int, **labels_by_index: dict[str, str]) -> list[PlanNode]:
    return [
        PlanNode(id=nid(i), name=f"n{i:03d}", labels=labels_by_index.get(f"n{i}", {}))
        for i in range(count)
    ]


def config(**values: object) -> RolloutConfig:
    return RolloutConfig.from_dict(values)


def sizes(steps: list[PlannedStep]) -> list[int]:
    return [len(s.node_ids) for s in steps]


def problems(values: dict, **kw: str) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        RolloutConfig.from_dict(values, **kw)
    return caught.value.fields


# --- settings -------------------------------------------------------------------------------


def test_empty_settings_are_the_spec_defaults() -> None:
    c = RolloutConfig.from_dict({})
    assert c.to_dict() == {
        "strategy": "rolling",
        "batch_size": 1,
        "max_unavailable": 0,
        "max_failures": 0,
        "progress_deadline_s": 600,
        "bake_s": 0,
        "health_gates": {"heartbeat_healthy": True},
        "on_failure": "pause",
        "gate_grace_s": 60,
        "gate_data_timeout_s": None,
    }
    assert RolloutConfig.from_dict(None) == c == RolloutConfig()


def test_canary_defaults_to_a_60_second_bake_and_the_spec_steps() -> None:
    c = config(strategy="canary")
    assert (c.bake_s, c.canary_steps) == (60, DEFAULT_CANARY_STEPS)
    assert config(strategy="canary", bake_s=0).bake_s == 0


def test_blue_green_takes_the_projects_standby_slot_unless_given() -> None:
    assert (
        RolloutConfig.from_dict({"strategy": "blue_green"}, standby_slot="blue").standby_slot
        == "blue"
    )
    given_slot = RolloutConfig.from_dict(
        {"strategy": "blue_green", "standby_slot": "x"}, standby_slot="blue"
    )
    assert given_slot.standby_slot == "x"


def test_null_values_count_as_absent() -> None:
    assert config(batch_size=None, bake_s=None, health_gates=None) == config()


@pytest.mark.parametrize(
    "values",
    [
        {"strategy": "rolling", "batch_size": 3},
        {"strategy": "rolling", "batch_percent": 12.5},
        {"strategy": "canary", "canary_steps": [10, 100], "bake_s": 5},
        {"strategy": "blue_green", "standby_slot": "blue"},
        {
            "strategy": "all_at_once",
            "max_unavailable": 2,
            "max_failures": "10%",
            "progress_deadline_s": 900,
            "health_gates": {"heartbeat_healthy": False, "max_latency_ms": 200},
            "on_failure": "rollback",
            "gate_grace_s": 0,
            "gate_data_timeout_s": 45,
        },
        {"strategy": "canary", "health_gates": {"max_error_rate_vs_baseline": 1.5}},
    ],
)
def test_settings_survive_a_round_trip_through_their_dict(values: dict) -> None:
    c = RolloutConfig.from_dict(values)
    assert RolloutConfig.from_dict(c.to_dict()) == c
    assert set(c.to_dict()) <= CONFIG_FIELDS


def test_unknown_settings_are_named() -> None:
    assert problems({"bundle_id": "x", "batchsize": 2}) == {
        "bundle_id": ["unknown field"],
        "batchsize": ["unknown field"],
    }


def test_an_unknown_strategy_is_named() -> None:
    assert "strategy" in problems({"strategy": "big_bang"})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"strategy": "canary", "batch_size": 2}, "batch_size"),
        ({"strategy": "all_at_once", "batch_percent": 10}, "batch_percent"),
        ({"strategy": "rolling", "canary_steps": [50, 100]}, "canary_steps"),
        ({"strategy": "canary", "standby_slot": "blue"}, "standby_slot"),
        (
            {"health_gates": {"max_error_rate_vs_baseline": 2}},
            "health_gates.max_error_rate_vs_baseline",
        ),
    ],
)
def test_a_setting_of_another_strategy_is_refused(values: dict, field: str) -> None:
    assert "only used by the" in problems(values)[field][0]


def test_batch_size_and_batch_percent_together_are_refused() -> None:
    assert "batch_percent" in problems({"batch_size": 2, "batch_percent": 10})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_percent": 0}, "batch_percent"),
        ({"batch_percent": 101}, "batch_percent"),
        ({"strategy": "canary", "canary_steps": []}, "canary_steps"),
        ({"strategy": "canary", "canary_steps": [50, 25, 100]}, "canary_steps"),
        ({"strategy": "canary", "canary_steps": [25, 50]}, "canary_steps"),
        ({"strategy": "canary", "canary_steps": [0, 100]}, "canary_steps"),
        ({"strategy": "canary", "canary_steps": "5,100"}, "canary_steps"),
        ({"strategy": "canary", "canary_steps": [*range(1, 22), 100]}, "canary_steps"),
        ({"max_unavailable": -1}, "max_unavailable"),
        ({"max_failures": "ten"}, "max_failures"),
        ({"max_failures": "101%"}, "max_failures"),
        ({"max_failures": 1.5}, "max_failures"),
        ({"progress_deadline_s": 0}, "progress_deadline_s"),
        ({"bake_s": 600}, "bake_s"),
        ({"gate_grace_s": -1}, "gate_grace_s"),
        ({"gate_data_timeout_s": 0}, "gate_data_timeout_s"),
        ({"on_failure": "retry"}, "on_failure"),
        ({"strategy": "blue_green", "standby_slot": ""}, "standby_slot"),
        ({"health_gates": []}, "health_gates"),
        ({"health_gates": {"max_rps": 5}}, "health_gates.max_rps"),
        ({"health_gates": {"heartbeat_healthy": "yes"}}, "health_gates.heartbeat_healthy"),
        ({"health_gates": {"max_error_rate": 101}}, "health_gates.max_error_rate"),
        ({"health_gates": {"max_latency_ms": "fast"}}, "health_gates.max_latency_ms"),
        (
            {"strategy": "canary", "health_gates": {"max_error_rate_vs_baseline": 0}},
            "health_gates.max_error_rate_vs_baseline",
        ),
    ],
)
def test_a_bad_setting_is_named(values: dict, field: str) -> None:
    assert field in problems(values)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "strategy": "rolling",
            "canary_steps": [1, 100],
            "max_failures": "200%",
            "health_gates": {"bogus": 1, "max_cpu_percent": -5},
            "extra": True,
        }
    )
    assert set(found) == {
        "canary_steps",
        "max_failures",
        "health_gates.bogus",
        "health_gates.max_cpu_percent",
        "extra",
    }


def test_health_gates_given_are_merged_over_the_default() -> None:
    assert config(health_gates={"max_error_rate": 2}).health_gates == HealthGates(
        heartbeat_healthy=True, max_error_rate=2
    )


def test_the_constructor_checks_values_too() -> None:
    with pytest.raises(Invalid) as caught:
        RolloutConfig(batch_size=0)
    assert "batch_size" in caught.value.fields


def test_a_percentage_failure_budget_rounds_down() -> None:
    c = config(max_failures="10%")
    assert [c.failure_budget(n) for n in (1, 9, 10, 25)] == [0, 0, 1, 2]
    assert config(max_failures=3).failure_budget(1) == 3
    assert config(max_failures="33.3%").failure_budget(1000) == 333


def test_the_data_timeout_follows_the_heartbeat_interval_unless_set() -> None:
    assert config().data_timeout_s(45) == 90
    assert config(gate_data_timeout_s=20).data_timeout_s(45) == 20


# --- planning -------------------------------------------------------------------------------


def test_nodes_are_planned_by_name_then_id_whatever_the_input_order() -> None:
    a, b = PlanNode(id=nid(2), name="same"), PlanNode(id=nid(1), name="same")
    c = PlanNode(id=nid(0), name="zeta")
    d = PlanNode(id=nid(3), name="alpha")
    (only,) = plan_steps([c, a, d, b], config(strategy="all_at_once"))
    assert only.node_ids == (nid(3), nid(1), nid(2), nid(0))


def test_a_node_listed_twice_is_planned_once() -> None:
    n = PlanNode(id=nid(0), name="n")
    assert order_nodes([n, n]) == [n]


def test_no_nodes_plan_no_steps() -> None:
    assert plan_steps([], config()) == []


def test_all_at_once_is_one_deploy_step() -> None:
    steps = plan_steps(fleet(5), config(strategy="all_at_once"))
    assert [(s.index, s.kind) for s in steps] == [(0, "deploy")]
    assert sizes(steps) == [5]


def test_rolling_steps_have_batch_size_nodes_and_the_rest_last() -> None:
    assert sizes(plan_steps(fleet(7), config(batch_size=3))) == [3, 3, 1]
    assert sizes(plan_steps(fleet(3), config())) == [1, 1, 1]


def test_rolling_batch_percent_rounds_down_to_at_least_one_node() -> None:
    assert sizes(plan_steps(fleet(10), config(batch_percent=25))) == [2, 2, 2, 2, 2]
    assert sizes(plan_steps(fleet(3), config(batch_percent=10))) == [1, 1, 1]


def test_rolling_batch_percent_uses_the_decimal_written() -> None:
    # 0.57 * 100 is 56.99999999999999 in binary floating point.
    assert sizes(plan_steps(fleet(100), config(batch_percent=57)))[0] == 57
    assert sizes(plan_steps(fleet(10_000), config(batch_percent=0.57)))[0] == 57


def test_canary_steps_reach_cumulative_percentages() -> None:
    steps = plan_steps(fleet(40), config(strategy="canary"))
    assert sizes(steps) == [2, 8, 10, 20]
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert {s.kind for s in steps} == {"deploy"}


def test_a_canary_step_has_at_least_one_node() -> None:
    assert sizes(plan_steps(fleet(10), config(strategy="canary"))) == [1, 2, 2, 5]


def test_canary_percentages_that_add_no_node_are_dropped() -> None:
    assert sizes(plan_steps(fleet(2), config(strategy="canary"))) == [1, 1]
    assert sizes(plan_steps(fleet(1), config(strategy="canary"))) == [1]


def test_blue_green_standby_is_the_nodes_labelled_with_the_standby_slot() -> None:
    nodes = fleet(4, n1={"slot": "green"}, n3={"slot": "green"}, n0={"slot": "blue"})
    steps = plan_steps(nodes, config(strategy="blue_green"))
    assert [(s.kind, s.node_ids) for s in steps] == [
        ("standby", (nid(1), nid(3))),
        ("promote", (nid(0), nid(2))),
    ]


def test_blue_green_honours_another_standby_slot() -> None:
    nodes = fleet(4, n1={"slot": "green"}, n3={"slot": "blue"})
    steps = plan_steps(nodes, config(strategy="blue_green", standby_slot="blue"))
    assert steps[0].node_ids == (nid(3),)


def test_blue_green_without_slot_labels_stands_by_the_first_half_by_name() -> None:
    assert sizes(plan_steps(fleet(5), config(strategy="blue_green"))) == [2, 3]
    steps = plan_steps(fleet(4), config(strategy="blue_green"))
    assert steps[0].node_ids == (nid(0), nid(1))


def test_blue_green_with_one_node_has_only_the_standby_step() -> None:
    steps = plan_steps(fleet(1), config(strategy="blue_green"))
    assert [(s.kind, len(s.node_ids)) for s in steps] == [("standby", 1)]


def test_blue_green_with_every_node_on_the_standby_slot_has_no_promote_step() -> None:
    nodes = fleet(2, n0={"slot": "green"}, n1={"slot": "green"})
    assert [s.kind for s in plan_steps(nodes, config(strategy="blue_green"))] == ["standby"]


def test_a_planned_step_is_json_ready() -> None:
    (only,) = plan_steps(fleet(1), config())
    assert only.to_dict() == {"index": 0, "kind": "deploy", "node_ids": [str(nid(0))]}


# --- selecting targets ----------------------------------------------------------------------

LABELLED = [
    PlanNode(id=nid(0), name="c", labels={"env": "prod", "region": "eu"}),
    PlanNode(id=nid(1), name="a", labels={"env": "prod", "region": "us"}),
    PlanNode(id=nid(2), name="b", labels={"env": "dev"}),
]


def names(nodes: list[PlanNode]) -> list[str]:
    return [n.name for n in nodes]


def selector_problems(selector: object) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        select_targets(LABELLED, selector)  # type: ignore[arg-type]
    return caught.value.fields


def test_all_selects_every_node_by_name() -> None:
    assert names(select_targets(LABELLED, {"all": True})) == ["a", "b", "c"]


def test_labels_select_nodes_matching_every_pair() -> None:
    assert names(select_targets(LABELLED, {"labels": {"env": "prod"}})) == ["a", "c"]
    assert names(select_targets(LABELLED, {"labels": {"env": "prod", "region": "eu"}})) == ["c"]
    assert select_targets(LABELLED, {"labels": {"env": "staging"}}) == []


def test_node_ids_select_exactly_those_nodes_ordered_by_name() -> None:
    chosen = select_targets(LABELLED, {"node_ids": [str(nid(0)), nid(1), str(nid(0))]})
    assert names(chosen) == ["a", "c"]


def test_unknown_node_ids_are_named() -> None:
    missing = uuid.UUID(int=99)
    found = selector_problems({"node_ids": [str(nid(0)), str(missing)]})
    assert found == {"target_selector.node_ids": [f"unknown node ids: {missing}"]}


def test_malformed_node_ids_are_named() -> None:
    assert selector_problems({"node_ids": ["nope"]}) == {
        "target_selector.node_ids": ["not node ids: nope"]
    }


def test_a_resolved_group_selects_by_its_labels() -> None:
    assert names(select_targets(LABELLED, {"group": {"labels": {"env": "dev"}}})) == ["b"]


def test_a_group_with_no_labels_selects_every_node() -> None:
    assert names(select_targets(LABELLED, {"group": {"labels": {}}})) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({}, "target_selector"),
        ({"all": True, "labels": {"env": "prod"}}, "target_selector"),
        ({"everything": True}, "target_selector"),
        ([], "target_selector"),
        ({"all": False}, "target_selector.all"),
        ({"labels": {}}, "target_selector.labels"),
        ({"labels": {"env": 1}}, "target_selector.labels"),
        ({"labels": ["env"]}, "target_selector.labels"),
        ({"node_ids": []}, "target_selector.node_ids"),
        ({"node_ids": "abc"}, "target_selector.node_ids"),
        ({"group": "edge-eu"}, "target_selector.group"),
        ({"group": {"labels": {"a": "b"}, "name": "x"}}, "target_selector.group"),
        ({"group": {"labels": {"a": 2}}}, "target_selector.group.labels"),
    ],
)
def test_a_bad_selector_is_named(selector: object, field: str) -> None:
    assert field in selector_problems(selector)


# --- busy nodes -----------------------------------------------------------------------------

R1, R2 = uuid.UUID(int=1001), uuid.UUID(int=1002)


def test_targets_nobody_holds_are_all_kept() -> None:
    assert conflicts([nid(0), nid(1)], {nid(5): R1}, skip_busy=False) == ([nid(0), nid(1)], [], [])


def test_busy_targets_are_reported_and_kept_without_skip_busy() -> None:
    result = conflicts([nid(0), nid(1), nid(2)], {nid(2): R2, nid(0): R1}, skip_busy=False)
    assert result.kept_ids == [nid(0), nid(1), nid(2)]
    assert result.skipped_busy == []
    assert result.conflicting_rollout_ids == [R1, R2]


def test_skip_busy_drops_busy_targets_and_still_names_their_rollouts() -> None:
    result = conflicts([nid(0), nid(1), nid(2)], {nid(0): R1, nid(2): R1}, skip_busy=True)
    assert (result.kept_ids, result.skipped_busy, result.conflicting_rollout_ids) == (
        [nid(1)],
        [nid(0), nid(2)],
        [R1],
    )


# --- properties -----------------------------------------------------------------------------

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

plan_nodes = st.lists(
    st.builds(
        PlanNode,
        id=st.integers(0, 200).map(nid),
        name=st.text(alphabet="abcxyz-0", min_size=1, max_size=4),
        labels=st.fixed_dictionaries({}, optional={"slot": st.sampled_from(["green", "blue"])}),
    ),
    max_size=40,
    unique_by=lambda n: n.id,
)
plan_configs = st.one_of(
    st.just(config(strategy="all_at_once")),
    st.integers(1, 12).map(lambda size: config(batch_size=size)),
    st.floats(0.1, 100).map(lambda pct: config(batch_percent=round(pct, 2))),
    st.lists(st.integers(1, 99), max_size=5, unique=True).map(
        lambda ps: config(strategy="canary", canary_steps=[*sorted(ps), 100])
    ),
    st.sampled_from(["green", "blue"]).map(
        lambda slot: config(strategy="blue_green", standby_slot=slot)
    ),
)


@PROPS
@given(nodes=plan_nodes, cfg=plan_configs)
def test_every_target_is_in_exactly_one_non_empty_step(
    nodes: list[PlanNode], cfg: RolloutConfig
) -> None:
    steps = plan_steps(nodes, cfg)
    planned = [node_id for s in steps for node_id in s.node_ids]
    assert sorted(planned) == sorted({n.id for n in nodes})
    assert all(s.node_ids for s in steps)
    assert [s.index for s in steps] == list(range(len(steps)))


@PROPS
@given(nodes=plan_nodes, cfg=plan_configs, seed=st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_the_input_order(
    nodes: list[PlanNode], cfg: RolloutConfig, seed: random.Random
) -> None:
    shuffled = list(nodes)
    seed.shuffle(shuffled)
    assert plan_steps(shuffled, cfg) == plan_steps(nodes, cfg)
    ordered = [n for s in plan_steps(nodes, cfg) for n in s.node_ids]
    if cfg.strategy != "blue_green":
        assert ordered == [n.id for n in order_nodes(nodes)]


@PROPS
@given(nodes=plan_nodes, cfg=plan_configs)
def test_step_sizes_follow_the_strategy(nodes: list[PlanNode], cfg: RolloutConfig) -> None:
    steps = plan_steps(nodes, cfg)
    total = len({n.id for n in nodes})
    if not total:
        assert steps == []
        return
    if cfg.strategy == "all_at_once":
        assert sizes(steps) == [total]
    elif cfg.strategy == "rolling":
        size = (
            cfg.batch_size
            if cfg.batch_percent is None
            else max(1, math.floor(total * cfg.batch_percent / 100 + 1e-9))
        )
        assert all(n == size for n in sizes(steps)[:-1])
        assert 1 <= sizes(steps)[-1] <= size
    elif cfg.strategy == "canary":
        cumulative = 0
        reached = []
        for n in sizes(steps):
            cumulative += n
            reached.append(cumulative)
        targets = sorted(
            {min(total, max(1, math.ceil(total * p / 100 - 1e-9))) for p in cfg.canary_steps}
        )
        assert reached == targets
    else:
        standby = {n.id for n in nodes if n.labels.get("slot") == cfg.standby_slot}
        assert steps[0].kind == "standby"
        if standby:
            assert set(steps[0].node_ids) == standby
        else:
            assert len(steps[0].node_ids) == max(1, total // 2)
        assert [s.kind for s in steps[1:]] in ([], ["promote"])
