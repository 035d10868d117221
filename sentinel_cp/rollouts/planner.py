"""Planning a rollout: which nodes it targets, in which steps, and which are busy elsewhere.

Pure functions over `PlanNode`s. The plan is computed once, at creation (or for a dry-run
preview), and stored: what an operator previewed is what runs. Every ordering is by node name,
then id, so the same fleet always gives the same plan whatever order the database returned.

Selectors (`select_targets`) — exactly one key:

- `{"all": true}`: every node given.
- `{"labels": {"k": "v", …}}`: nodes whose labels contain every pair (at least one pair).
- `{"node_ids": ["<uuid>", …]}`: exactly these nodes (at least one); an id that is not among
  the given nodes is `Invalid` naming it.
- `{"group": {"labels": {…}}}`: a node group, resolved by the caller from the group's name to
  its label selector; an empty selector is every node (as `nodes.labels_contain` treats it).
  A group still given by name (`{"group": "edge-eu"}`) is `Invalid`: resolving names needs the
  database, which this module does not touch.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

from sentinel_cp.errors import Invalid
from sentinel_cp.rollouts.types import NodeId, PlannedStep, PlanNode, RolloutConfig

SELECTOR_KEYS = ("all", "labels", "node_ids", "group")


def order_nodes(nodes: Iterable[PlanNode]) -> list[PlanNode]:
    """Nodes by name, then id, each id once (the first occurrence in that order wins)."""
    seen: set[NodeId] = set()
    result = []
    for node in sorted(nodes, key=lambda n: (n.name, str(n.id))):
        if node.id not in seen:
            seen.add(node.id)
            result.append(node)
    return result


def plan_steps(nodes: Sequence[PlanNode], config: RolloutConfig) -> list[PlannedStep]:
    """Split the targets into steps for `config.strategy`; every target lands in one step.

    - `all_at_once`: one `deploy` step.
    - `rolling`: `deploy` steps of `batch_size` nodes, or of `batch_percent` of the targets
      rounded down (at least 1); the last step takes the remainder.
    - `canary`: step *i* brings the cumulative total to ceil(n × canary_steps[i] / 100) nodes
      (at least 1); a percentage that adds no node is dropped, so no step is empty.
    - `blue_green`: a `standby` step — the nodes labelled `slot=<standby_slot>` if any, else
      the first half by name (rounded down, at least 1) — then a `promote` step with the rest
      (left out when nothing is left).

    No nodes, no steps: refusing an empty rollout is the caller's rule.
    """
    ordered = order_nodes(nodes)
    if not ordered:
        return []
    ids = [node.id for node in ordered]
    if config.strategy == "all_at_once":
        groups = [ids]
    elif config.strategy == "rolling":
        groups = _chunks(ids, _batch_size(len(ids), config))
    elif config.strategy == "canary":
        groups = _canary_groups(ids, config.canary_steps)
    else:
        return _blue_green(ordered, config.standby_slot)
    return [
        PlannedStep(index=index, kind="deploy", node_ids=tuple(group))
        for index, group in enumerate(groups)
    ]


def _batch_size(total: int, config: RolloutConfig) -> int:
    if config.batch_percent is None:
        return config.batch_size
    return max(1, math.floor(total * _exact(config.batch_percent) / 100))


def _exact(number: float) -> Fraction:
    """The decimal the user wrote (`0.57`), not its binary approximation (0.5699999…)."""
    return Fraction(str(number))


def _chunks(ids: list[NodeId], size: int) -> list[list[NodeId]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def _canary_groups(ids: list[NodeId], percentages: Sequence[float]) -> list[list[NodeId]]:
    total = len(ids)
    groups = []
    done = 0
    for percent in percentages:
        reach = min(total, max(1, math.ceil(total * _exact(percent) / 100)))
        if reach > done:
            groups.append(ids[done:reach])
            done = reach
    return groups  # the last percentage is 100 (RolloutConfig checks it): every id is placed


def _blue_green(ordered: list[PlanNode], slot: str) -> list[PlannedStep]:
    standby = [node for node in ordered if node.labels.get("slot") == slot]
    if not standby:
        standby = ordered[: max(1, len(ordered) // 2)]
    chosen = {node.id for node in standby}
    rest = [node.id for node in ordered if node.id not in chosen]
    steps = [PlannedStep(index=0, kind="standby", node_ids=tuple(node.id for node in standby))]
    if rest:
        steps.append(PlannedStep(index=1, kind="promote", node_ids=tuple(rest)))
    return steps


def select_targets(nodes: Sequence[PlanNode], selector: Mapping[str, Any]) -> list[PlanNode]:
    """The nodes `selector` targets, ordered by name (see the module docstring for the forms).

    Raises `Invalid` with `fields` under `target_selector` naming what is wrong.
    """
    if not isinstance(selector, Mapping) or len(selector) != 1:
        raise _bad("target_selector", f"must have exactly one of {', '.join(SELECTOR_KEYS)}")
    ((key, value),) = selector.items()
    if key == "all":
        if value is not True:
            raise _bad("target_selector.all", "must be true")
        return order_nodes(nodes)
    if key == "labels":
        pairs = _label_pairs(value, "target_selector.labels")
        if not pairs:
            raise _bad("target_selector.labels", "must name at least one label")
        return order_nodes(node for node in nodes if _matches(node, pairs))
    if key == "group":
        if not isinstance(value, Mapping) or set(value) != {"labels"}:
            raise _bad(
                "target_selector.group",
                'must be resolved to {"labels": {…}} before selecting (group names are '
                "looked up by the caller)",
            )
        pairs = _label_pairs(value["labels"], "target_selector.group.labels")
        return order_nodes(node for node in nodes if _matches(node, pairs))
    if key == "node_ids":
        wanted = _node_ids(value)
        by_id = {node.id: node for node in nodes}
        unknown = [node_id for node_id in wanted if node_id not in by_id]
        if unknown:
            raise _bad(
                "target_selector.node_ids",
                "unknown node ids: " + ", ".join(str(node_id) for node_id in unknown),
            )
        return order_nodes(by_id[node_id] for node_id in wanted)
    raise _bad("target_selector", f"must have exactly one of {', '.join(SELECTOR_KEYS)}")


def _bad(field: str, problem: str) -> Invalid:
    return Invalid("Invalid target selector", fields={field: [problem]})


def _label_pairs(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad(field, "must be an object of string label values")
    return dict(value)


def _matches(node: PlanNode, pairs: Mapping[str, str]) -> bool:
    return all(node.labels.get(key) == wanted for key, wanted in pairs.items())


def _node_ids(value: object) -> list[NodeId]:
    if not isinstance(value, list | tuple) or not value:
        raise _bad("target_selector.node_ids", "must be a non-empty list of node ids")
    result: list[NodeId] = []
    bad: list[str] = []
    for item in value:
        if isinstance(item, uuid.UUID):
            parsed = item
        else:
            try:
                parsed = uuid.UUID(str(item))
            except ValueError:
                bad.append(str(item))
                continue
        if parsed not in result:
            result.append(parsed)
    if bad:
        raise _bad("target_selector.node_ids", "not node ids: " + ", ".join(bad))
    return result


class Conflicts(NamedTuple):
    """`conflicts()`'s answer.

    - `kept_ids`: the targets the rollout keeps, in the given order.
    - `skipped_busy`: targets left out because another rollout holds them (only with
      `skip_busy`), in the given order.
    - `conflicting_rollout_ids`: every other rollout holding one of the targets, sorted; when
      it is non-empty and `skip_busy` is false the caller answers 409 naming them.
    """

    kept_ids: list[NodeId]
    skipped_busy: list[NodeId]
    conflicting_rollout_ids: list[uuid.UUID]


def conflicts(
    target_ids: Sequence[NodeId], busy: Mapping[NodeId, uuid.UUID], skip_busy: bool
) -> Conflicts:
    """Targets against `busy` (node id → the running or paused rollout that holds it).

    A node takes part in at most one non-terminal rollout: with `skip_busy` the busy targets
    are dropped, otherwise every target is kept and the conflicts are reported for a 409.
    """
    busy_targets = [node_id for node_id in target_ids if node_id in busy]
    rollouts = sorted({busy[node_id] for node_id in busy_targets}, key=str)
    if skip_busy:
        taken = set(busy_targets)
        kept = [node_id for node_id in target_ids if node_id not in taken]
        return Conflicts(kept, busy_targets, rollouts)
    return Conflicts(list(target_ids), [], rollouts)
