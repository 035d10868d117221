"""The values the pure rollout engine works on: settings, views, gate verdicts and actions.

Everything here is a frozen dataclass with no database or framework behind it. The tick reads
the rows into a `RolloutView`, `decide.decide(view, now)` returns exactly one `Action`, and the
applier translates that action into one transaction. Keeping the values in one module lets the
planner, the gates and the decision import them without cycles, and lets the applier import one
place for every type it has to handle.

Node ids are `uuid.UUID`s (the `nodes.id` column); bundle ids are the sha256 hex strings.
"""

from __future__ import annotations

import itertools
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from fractions import Fraction
from typing import Any, ClassVar, Literal, TypeAlias, TypeGuard

from sentinel_cp.errors import Invalid

NodeId: TypeAlias = uuid.UUID

Strategy = Literal["rolling", "canary", "blue_green", "all_at_once"]
OnFailure = Literal["pause", "rollback"]
RolloutState = Literal[
    "pending",
    "running",
    "paused",
    "completed",
    "failed",
    "cancelled",
    "rolling_back",
    "rolled_back",
]
StepState = Literal["pending", "running", "baking", "completed", "failed"]
StepKind = Literal["deploy", "standby", "promote"]
DeliveryState = Literal[
    "pending",
    "assigned",
    "downloaded",
    "staged",
    "activated",
    "verified",
    "failed",
    "rolled_back",
    "skipped",
]

STRATEGIES: tuple[Strategy, ...] = ("rolling", "canary", "blue_green", "all_at_once")
ON_FAILURE: tuple[OnFailure, ...] = ("pause", "rollback")
ROLLOUT_STATES: tuple[RolloutState, ...] = (
    "pending",
    "running",
    "paused",
    "completed",
    "failed",
    "cancelled",
    "rolling_back",
    "rolled_back",
)
STEP_STATES: tuple[StepState, ...] = ("pending", "running", "baking", "completed", "failed")
ACTIVE_STEP_STATES: tuple[StepState, ...] = ("running", "baking")
STEP_KINDS: tuple[StepKind, ...] = ("deploy", "standby", "promote")
DELIVERY_STATES: tuple[DeliveryState, ...] = (
    "pending",
    "assigned",
    "downloaded",
    "staged",
    "activated",
    "verified",
    "failed",
    "rolled_back",
    "skipped",
)
# A node in one of these has left the step for good: it is not waited for and not gated.
# `rolled_back` here is the node's own report (its agent went back to the last known good
# bundle), so it counts as a failure of this bundle on that node.
FAILED_DELIVERY_STATES: tuple[DeliveryState, ...] = ("failed", "rolled_back")
EXCLUDED_DELIVERY_STATES: tuple[DeliveryState, ...] = ("failed", "rolled_back", "skipped")

DEFAULT_CANARY_STEPS: tuple[float, ...] = (5, 25, 50, 100)
DEFAULT_CANARY_BAKE_S = 60
DEFAULT_HEARTBEAT_INTERVAL_S = 30
DEFAULT_STANDBY_SLOT = "green"
MAX_DEADLINE_S = 7 * 86400
MAX_DURATION_S = 86400
MAX_CANARY_STEPS = 20
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d{1,6})?)%")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def is_number(value: object) -> TypeGuard[int | float]:
    """A real, finite JSON number (bools are ints in Python, and are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthGates:
    """The gates of spec/rollouts.md "Health gates"; `None` means the gate is not used.

    `max_error_rate` and the metric limits are compared with the node's latest heartbeat
    `metrics`; error rates are percentages (0–100). `max_error_rate_vs_baseline` is a multiplier
    of the baseline (untouched nodes') error rate and is only valid for the canary strategy.
    """

    heartbeat_healthy: bool = True
    max_error_rate: float | None = None
    max_latency_ms: float | None = None
    max_cpu_percent: float | None = None
    max_memory_percent: float | None = None
    max_error_rate_vs_baseline: float | None = None

    # gate name -> the metric it reads from the heartbeat's `metrics`
    METRIC_GATES: ClassVar[dict[str, str]] = {
        "max_error_rate": "error_rate",
        "max_latency_ms": "latency_p99_ms",
        "max_cpu_percent": "cpu_percent",
        "max_memory_percent": "memory_percent",
    }
    # upper bounds of the thresholds (percentages cannot exceed 100)
    _LIMITS: ClassVar[dict[str, float]] = {
        "max_error_rate": 100,
        "max_latency_ms": 3_600_000,
        "max_cpu_percent": 100,
        "max_memory_percent": 100,
        "max_error_rate_vs_baseline": 1000,
    }

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise Invalid("Invalid health gates", fields=problems)

    def _problems(self) -> dict[str, list[str]]:
        problems: dict[str, list[str]] = {}
        if not isinstance(self.heartbeat_healthy, bool):
            problems["health_gates.heartbeat_healthy"] = ["must be true or false"]
        for name, limit in self._LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not is_number(value):
                problems[f"health_gates.{name}"] = ["must be a number"]
            elif name == "max_error_rate_vs_baseline" and value <= 0:
                problems[f"health_gates.{name}"] = ["must be greater than 0"]
            elif not 0 <= value <= limit:
                problems[f"health_gates.{name}"] = [f"must be between 0 and {limit:g}"]
        return problems

    @classmethod
    def from_dict(cls, data: object) -> HealthGates:
        """Parse the `health_gates` object, merged over the default (`heartbeat_healthy`)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise Invalid("Invalid health gates", fields={"health_gates": ["must be an object"]})
        known = {f.name for f in fields(cls)}
        problems = {
            f"health_gates.{key}": ["unknown gate"]
            for key in sorted(map(str, data))
            if key not in known
        }
        given = {key: value for key, value in data.items() if value is not None and key in known}
        try:
            gates = cls(**given)
        except Invalid as exc:
            problems.update(exc.fields)
        if problems:
            raise Invalid("Invalid health gates", fields=problems)
        return gates

    def to_dict(self) -> dict[str, Any]:
        """The gates in use, as stored and shown (unused gates are left out)."""
        result: dict[str, Any] = {"heartbeat_healthy": self.heartbeat_healthy}
        for name in self._LIMITS:
            value = getattr(self, name)
            if value is not None:
                result[name] = value
        return result


# Keys of a rollout definition that `RolloutConfig.from_dict` accepts; the API splits a request
# into these and the rest (bundle_id, target_selector, scheduled_at, start, skip_busy_nodes, …).
CONFIG_FIELDS = frozenset(
    {
        "strategy",
        "batch_size",
        "batch_percent",
        "canary_steps",
        "max_unavailable",
        "max_failures",
        "progress_deadline_s",
        "bake_s",
        "health_gates",
        "on_failure",
        "gate_grace_s",
        "gate_data_timeout_s",
        "standby_slot",
    }
)
# Settings that only one strategy reads: giving them to another strategy is an error, not a
# silent no-op, so a template that says `canary_steps` with `strategy: rolling` is caught.
_STRATEGY_FIELDS: dict[str, Strategy] = {
    "batch_size": "rolling",
    "batch_percent": "rolling",
    "canary_steps": "canary",
    "standby_slot": "blue_green",
}


# Given one of these, the template's other one does not apply.
_EXCLUSIVE_FIELDS = {"batch_size": "batch_percent", "batch_percent": "batch_size"}


def merge_with_template(template: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """A request's settings over a template's: the request's values win, and template
    settings that no longer apply are dropped — those of another strategy when the request
    picks a different one, and `batch_size`/`batch_percent` when the request gives the other."""
    given = {key: value for key, value in given.items() if value is not None}
    strategy = given.get("strategy") or template.get("strategy") or "rolling"
    kept = {
        key: value
        for key, value in template.items()
        if _STRATEGY_FIELDS.get(key, strategy) == strategy
        and _EXCLUSIVE_FIELDS.get(key) not in given
    }
    return {**kept, **given}


@dataclass(frozen=True)
class RolloutConfig:
    """How a rollout moves: the settings of spec/rollouts.md "Definition" plus the gate timing.

    Build it with `from_dict` (which applies the strategy's defaults and names every bad field);
    the constructor checks values but applies no strategy-dependent defaults. Settings another
    strategy would use are kept at their defaults and ignored (`to_dict` leaves them out).

    - `batch_size` / `batch_percent`: rolling step size; `batch_percent` wins when set.
    - `canary_steps`: cumulative percentages, increasing, ending at 100.
    - `max_unavailable`: offline nodes a step may leave behind (skip) before the rollout pauses.
    - `max_failures`: a count, or a percentage string (`"10%"`) of the step's nodes, rounded down.
    - `progress_deadline_s`: a step's time from start (or resume) to completion.
    - `bake_s`: how long the gates must keep passing after every node of a step verified.
    - `gate_grace_s`: how long the gates may keep failing before the step fails.
    - `gate_data_timeout_s`: how old a node's latest heartbeat may be and still count;
      `None` follows the project: 2 × its heartbeat interval at evaluation time.
    - `standby_slot`: blue-green's standby label value (`slot=<value>`).
    """

    strategy: Strategy = "rolling"
    batch_size: int = 1
    batch_percent: float | None = None
    canary_steps: tuple[float, ...] = DEFAULT_CANARY_STEPS
    max_unavailable: int = 0
    max_failures: int | str = 0
    progress_deadline_s: int = 600
    bake_s: int = 0
    health_gates: HealthGates = field(default_factory=HealthGates)
    on_failure: OnFailure = "pause"
    gate_grace_s: int = 60
    gate_data_timeout_s: int | None = None
    standby_slot: str = DEFAULT_STANDBY_SLOT

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise Invalid("Invalid rollout settings", fields=problems)

    # -- reading ---------------------------------------------------------------------------

    def failure_budget(self, step_node_count: int) -> int:
        """How many nodes of a step of `step_node_count` may fail before the step fails."""
        if isinstance(self.max_failures, int):
            return self.max_failures
        percent = Fraction(self.max_failures[:-1])
        return math.floor(step_node_count * percent / 100)

    def data_timeout_s(self, heartbeat_interval_s: int) -> int:
        """The gate data timeout in seconds for a project heartbeating every `…_interval_s`."""
        if self.gate_data_timeout_s is not None:
            return self.gate_data_timeout_s
        return 2 * heartbeat_interval_s

    # -- parsing ---------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, *, standby_slot: str = DEFAULT_STANDBY_SLOT
    ) -> RolloutConfig:
        """Validate a rollout's settings and apply the spec's defaults.

        `data` holds only `CONFIG_FIELDS`; a key whose value is `None` counts as absent.
        `standby_slot` is the project's setting, used for blue-green unless `data` names one.
        Raises `Invalid` whose `fields` name every bad field (`health_gates.<gate>` for gates).
        """
        given = {key: value for key, value in (data or {}).items() if value is not None}
        problems: dict[str, list[str]] = {}
        values: dict[str, Any] = {}
        for key, value in given.items():
            if key in CONFIG_FIELDS:
                values[str(key)] = value
            else:
                problems[str(key)] = ["unknown field"]

        strategy = values.get("strategy", "rolling")
        if strategy not in STRATEGIES:
            problems["strategy"] = [f"must be one of {', '.join(STRATEGIES)}"]
            del values["strategy"]
        else:
            for key, owner in _STRATEGY_FIELDS.items():
                if key in values and owner != strategy:
                    problems[key] = [f"only used by the {owner} strategy"]
                    del values[key]
        if "batch_size" in values and "batch_percent" in values:
            problems["batch_percent"] = ["give batch_size or batch_percent, not both"]
            del values["batch_percent"]
        if "canary_steps" in values:
            steps = values["canary_steps"]
            if isinstance(steps, list | tuple):
                values["canary_steps"] = tuple(steps)
            else:
                problems["canary_steps"] = ["must be a list of percentages"]
                del values["canary_steps"]
        if strategy == "canary" and "bake_s" not in values:
            values["bake_s"] = DEFAULT_CANARY_BAKE_S
        if strategy == "blue_green" and "standby_slot" not in values:
            values["standby_slot"] = standby_slot
        try:
            values["health_gates"] = HealthGates.from_dict(values.get("health_gates"))
        except Invalid as exc:
            problems.update(exc.fields)
            values["health_gates"] = HealthGates()
        try:
            config = cls(**values)
        except Invalid as exc:
            for key, messages in exc.fields.items():
                problems.setdefault(key, []).extend(messages)
        if problems:
            raise Invalid("Invalid rollout settings", fields=problems)
        return config

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored and shown; `from_dict(to_dict())` gives an equal config."""
        result: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "rolling":
            if self.batch_percent is not None:
                result["batch_percent"] = self.batch_percent
            else:
                result["batch_size"] = self.batch_size
        elif self.strategy == "canary":
            result["canary_steps"] = list(self.canary_steps)
        elif self.strategy == "blue_green":
            result["standby_slot"] = self.standby_slot
        result.update(
            {
                "max_unavailable": self.max_unavailable,
                "max_failures": self.max_failures,
                "progress_deadline_s": self.progress_deadline_s,
                "bake_s": self.bake_s,
                "health_gates": self.health_gates.to_dict(),
                "on_failure": self.on_failure,
                "gate_grace_s": self.gate_grace_s,
                "gate_data_timeout_s": self.gate_data_timeout_s,
            }
        )
        return result

    def _problems(self) -> dict[str, list[str]]:
        problems: dict[str, list[str]] = {}

        def bad(name: str, message: str) -> None:
            problems.setdefault(name, []).append(message)

        def whole(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if not _integer(value):
                bad(name, "must be an integer")
            elif not low <= value <= high:
                bad(name, f"must be between {low} and {high}")

        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.on_failure not in ON_FAILURE:
            bad("on_failure", "must be pause or rollback")
        whole("batch_size", 1, 100_000)
        if self.batch_percent is not None and (
            not is_number(self.batch_percent) or not 0 < self.batch_percent <= 100
        ):
            bad("batch_percent", "must be a number greater than 0 and at most 100")
        steps = self.canary_steps
        if not isinstance(steps, tuple) or not steps:
            bad("canary_steps", "must be a non-empty list of percentages")
        elif len(steps) > MAX_CANARY_STEPS:
            bad("canary_steps", f"at most {MAX_CANARY_STEPS} steps")
        elif not all(is_number(p) and 0 < p <= 100 for p in steps):
            bad("canary_steps", "each must be a number greater than 0 and at most 100")
        elif any(b <= a for a, b in itertools.pairwise(steps)):
            bad("canary_steps", "must be strictly increasing")
        elif steps[-1] != 100:
            bad("canary_steps", "must end at 100")
        whole("max_unavailable", 0, 100_000)
        if isinstance(self.max_failures, str):
            match = _PERCENT.fullmatch(self.max_failures)
            if match is None or Fraction(match.group(1)) > 100:
                bad("max_failures", 'must be a count or a percentage such as "10%"')
        elif not _integer(self.max_failures) or not 0 <= self.max_failures <= 100_000:
            bad("max_failures", 'must be a count or a percentage such as "10%"')
        whole("progress_deadline_s", 1, MAX_DEADLINE_S)
        whole("bake_s", 0, MAX_DURATION_S)
        whole("gate_grace_s", 0, MAX_DURATION_S)
        if self.gate_data_timeout_s is not None:
            whole("gate_data_timeout_s", 1, MAX_DURATION_S)
        if (
            "bake_s" not in problems
            and "progress_deadline_s" not in problems
            and self.bake_s >= self.progress_deadline_s
        ):
            # Baking happens inside the step's deadline: such a step could never complete.
            bad("bake_s", "must be shorter than progress_deadline_s")
        if not isinstance(self.standby_slot, str) or not 0 < len(self.standby_slot) <= 255:
            bad("standby_slot", "must be a label value of 1 to 255 characters")
        if not isinstance(self.health_gates, HealthGates):
            bad("health_gates", "must be an object")
        elif self.strategy != "canary" and self.health_gates.max_error_rate_vs_baseline is not None:
            bad("health_gates.max_error_rate_vs_baseline", "only used by the canary strategy")
        return problems


# --- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanNode:
    """A target candidate as the planner sees it (`status`: unknown, online or offline)."""

    id: NodeId
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    status: str = "online"


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: its position, kind and node ids in the order they are shown."""

    index: int
    kind: StepKind
    node_ids: tuple[NodeId, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "node_ids": [str(node_id) for node_id in self.node_ids],
        }


# --- the tick's snapshot ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """One node of a step, as the tick reads it.

    - `online`: the node row's status is `online` (`unknown` and `offline` are not).
    - `state`: this rollout's delivery row for the node (`pending` before its step starts,
      `skipped` when the rollout went on without it).
    - `active_bundle_id`: what the node last reported running (heartbeat or status report).
    - `activated_at`: when the node was first known to run the target bundle in this rollout —
      the `activated`/`verified` report, or the moment the tick marked it verified from a
      heartbeat (`StartBaking.mark_verified_node_ids`). Gates count only heartbeats after it.
    - `last_heartbeat_at`, `health_status`, `metrics`: the latest heartbeat snapshot.
    - `target_bundle_id`: the bundle this node must end on when it differs from the rollout's
      (a rollback rollout returns each node to its own previous bundle); `None` = the rollout's.
    """

    node_id: NodeId
    name: str
    online: bool = True
    state: DeliveryState = "pending"
    active_bundle_id: str | None = None
    activated_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    health_status: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    target_bundle_id: str | None = None

    def __post_init__(self) -> None:
        if self.state not in DELIVERY_STATES:
            raise ValueError(f"unknown delivery state {self.state!r}")


@dataclass(frozen=True)
class StepView:
    """One planned step with its nodes and its clocks.

    `resumed_at` is set when an operator resumes a paused rollout during this step: the
    progress deadline then counts from it, and gate clocks older than it are ignored (paused
    time neither bakes nor fails a step). `skip_unavailable` is set by a resume with
    `skip_unavailable`: the step goes on without every offline node, whatever `max_unavailable`.
    """

    index: int
    kind: StepKind
    state: StepState
    nodes: tuple[NodeView, ...]
    started_at: datetime | None = None
    baking_since: datetime | None = None
    gates_passing_since: datetime | None = None
    gates_failing_since: datetime | None = None
    resumed_at: datetime | None = None
    skip_unavailable: bool = False

    def __post_init__(self) -> None:
        if self.state not in STEP_STATES:
            raise ValueError(f"unknown step state {self.state!r}")
        if self.kind not in STEP_KINDS:
            raise ValueError(f"unknown step kind {self.kind!r}")
        if self.state in ACTIVE_STEP_STATES and self.started_at is None:
            raise ValueError(f"step {self.index} is {self.state} without started_at")

    @property
    def clock_start(self) -> datetime | None:
        """Where the progress deadline counts from: the start, or the latest resume."""
        if self.started_at is None:
            return None
        if self.resumed_at is not None and self.resumed_at > self.started_at:
            return self.resumed_at
        return self.started_at


@dataclass(frozen=True)
class RolloutView:
    """Everything `decide` needs about one rollout at one instant.

    - `bundle_status`: the bundle row's status (`compiled`, `revoked`, …).
    - `freeze_active`: a project freeze window covers now; `freeze_overridden`: an admin
      overrode freezes for this rollout.
    - `promoted`: blue-green promotion was requested.
    - `baseline_nodes`: the population the canary baseline gate compares with; `None` (the
      usual case) means the nodes of this rollout's still-pending steps, the untouched targets.
    - `heartbeat_interval_s`: the project's, for the default gate data timeout.
    """

    id: uuid.UUID
    state: RolloutState
    bundle_id: str
    bundle_status: str
    config: RolloutConfig
    steps: tuple[StepView, ...]
    freeze_active: bool = False
    freeze_overridden: bool = False
    promoted: bool = False
    baseline_nodes: tuple[NodeView, ...] | None = None
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S

    def __post_init__(self) -> None:
        if self.state not in ROLLOUT_STATES:
            raise ValueError(f"unknown rollout state {self.state!r}")
        if [step.index for step in self.steps] != list(range(len(self.steps))):
            raise ValueError("steps must be given in index order 0, 1, 2, …")

    @property
    def strategy(self) -> Strategy:
        return self.config.strategy


# --- gate verdicts --------------------------------------------------------------------------

NodeGateResultState = Literal["passed", "failed", "waiting"]
VerdictState = Literal["passing", "failing", "waiting"]


@dataclass(frozen=True)
class GateCheck:
    """One gate on one node: what was observed, against what, and what was wrong, if anything.

    `problem` is `None` when the check passed, else one of `unhealthy`, `missing_health`,
    `missing_metric`, `invalid_metric`, `above_threshold`, `baseline_data_missing`.
    """

    gate: str
    passed: bool
    observed: float | str | None
    threshold: float | bool | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "observed": self.observed,
            "threshold": self.threshold,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class NodeGateResult:
    """The gates on one node and the data they read.

    `data` says whether the heartbeat could be used: `fresh`, or the reason it could not —
    `not_on_bundle`, `not_activated`, `awaiting_heartbeat` (activated less than the data
    timeout ago, no heartbeat since: `waiting`), `no_heartbeat_since_activation`, `stale_heartbeat`
    (both `failed`). `checks` is empty unless the data was fresh.
    """

    node_id: NodeId
    name: str
    result: NodeGateResultState
    data: str
    activated_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    checks: tuple[GateCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "name": self.name,
            "result": self.result,
            "data": self.data,
            "activated_at": _iso(self.activated_at),
            "heartbeat_at": _iso(self.heartbeat_at),
            "heartbeat_age_s": self.heartbeat_age_s,
            "checks": [check.to_dict() for check in self.checks],
        }


@dataclass(frozen=True)
class ExcludedNode:
    """A step node outside the gate population (failed, rolled back or skipped)."""

    node_id: NodeId
    name: str
    state: DeliveryState

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": str(self.node_id), "name": self.name, "state": self.state}


@dataclass(frozen=True)
class BaselineSummary:
    """The canary baseline: untouched nodes' mean error rate and what the canary may reach.

    `allowed_error_rate = multiplier × max(error_rate, floor)`. Not `applicable` when there is
    no untouched node to compare with (the last canary step).
    """

    applicable: bool
    node_count: int
    sampled_node_count: int
    error_rate: float | None
    floor: float
    multiplier: float
    allowed_error_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "applicable": self.applicable,
            "node_count": self.node_count,
            "sampled_node_count": self.sampled_node_count,
            "error_rate": self.error_rate,
            "floor": self.floor,
            "multiplier": self.multiplier,
            "allowed_error_rate": self.allowed_error_rate,
        }


@dataclass(frozen=True)
class GateVerdict:
    """One evaluation of a step's gates, with every input, so the console can show why.

    `state` is `failing` when any node failed a gate (or there is no node to judge),
    else `waiting` when some node's first heartbeat after activation is still due, else
    `passing`. Only `passing` lets a step bake to completion.
    """

    state: VerdictState
    evaluated_at: datetime
    data_timeout_s: int
    gates: Mapping[str, Any]
    nodes: tuple[NodeGateResult, ...]
    excluded: tuple[ExcludedNode, ...] = ()
    baseline: BaselineSummary | None = None
    problem: str | None = None

    @property
    def passing(self) -> bool:
        return self.state == "passing"

    @property
    def failing_node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes if node.result == "failed")

    def summary(self) -> str:
        """One human sentence: what failed or is awaited, for action details."""
        if self.problem == "no_nodes_to_judge":
            return "no node of the step is left to judge"
        if self.state == "passing":
            return f"all gates pass on {len(self.nodes)} node(s)"
        label = "failed" if self.state == "failing" else "awaited"
        wanted: NodeGateResultState = "failed" if self.state == "failing" else "waiting"
        parts = []
        for node in self.nodes:
            if node.result != wanted:
                continue
            if node.data != "fresh":
                parts.append(f"{node.name}: {node.data}")
            else:
                bad = ", ".join(f"{c.gate} ({c.problem})" for c in node.checks if not c.passed)
                parts.append(f"{node.name}: {bad}")
        shown = "; ".join(parts[:5]) + ("; …" if len(parts) > 5 else "")
        return f"gates {label} on {len(parts)} of {len(self.nodes)} node(s): {shown}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "passing": self.passing,
            "evaluated_at": self.evaluated_at.isoformat(),
            "data_timeout_s": self.data_timeout_s,
            "gates": dict(self.gates),
            "problem": self.problem,
            "nodes": [node.to_dict() for node in self.nodes],
            "excluded": [node.to_dict() for node in self.excluded],
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
        }


# --- actions --------------------------------------------------------------------------------


def _jsonable(value: object) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, GateVerdict):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class _ActionBase:
    """What every action carries: a machine `reason` code, a human sentence (`details`) and
    JSON-ready facts (`metadata`) — audited and published verbatim by the applier."""

    KIND: ClassVar[str] = ""
    AUDIT_ACTION: ClassVar[str | None] = None

    reason: str
    details: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def audit_action(self) -> str | None:
        """The audit action name the applier records, or `None` when nothing is audited."""
        return self.AUDIT_ACTION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for events and the console: `{"action": KIND, …every field}`."""
        result: dict[str, Any] = {"action": self.KIND}
        for item in fields(self):
            result[item.name] = _jsonable(getattr(self, item.name))
        return result


@dataclass(frozen=True, kw_only=True)
class Nothing(_ActionBase):
    """Nothing to change now. `reason`: `not_running`, `waiting_for_nodes`.

    A running rollout that gets `Nothing` still needs its next tick: the applier reschedules.
    """

    KIND: ClassVar[str] = "nothing"


@dataclass(frozen=True, kw_only=True)
class StartStep(_ActionBase):
    """Start step `index` (also a retry of a failed step, after a resume: `retry`).

    Apply: step → `running`, `started_at = now`, gate clocks and `resumed_at` cleared; assign the
    bundle to `assign_node_ids` (fresh delivery rows recording `previous_bundle_id`, shorter
    poll interval); mark `skip_node_ids` `skipped` and leave them unassigned. Nodes in neither
    list keep the delivery row they have (on a retry: those already verified or still moving).
    """

    KIND: ClassVar[str] = "start_step"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.step_started"

    index: int
    assign_node_ids: tuple[NodeId, ...]
    skip_node_ids: tuple[NodeId, ...] = ()
    retry: bool = False


@dataclass(frozen=True, kw_only=True)
class StartBaking(_ActionBase):
    """Every available node of step `index` runs the bundle: step → `baking`.

    Apply: `baking_since = now`, gate clocks cleared; mark `mark_verified_node_ids` (nodes
    counted verified from their heartbeat, without a `verified` report) `verified` with
    `verified_at = now` and `activated_at = coalesce(activated_at, now)`; mark `skip_node_ids`
    (offline nodes within `max_unavailable`) `skipped` and clear their assignment.
    """

    KIND: ClassVar[str] = "start_baking"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.step_baking"

    index: int
    mark_verified_node_ids: tuple[NodeId, ...] = ()
    skip_node_ids: tuple[NodeId, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RecordGates(_ActionBase):
    """Store the gates' latest evaluation of baking step `index`; the step keeps baking.

    Apply: `gate_verdict = verdict.to_dict()`, `gates_passing_since = passing_since`,
    `gates_failing_since = failing_since` (either may become `None`). Audit and publish only
    when `changed` (the verdict's state differs from the step's recorded clocks).
    `reason`: `gates_passing`, `gates_failing`, `gates_waiting`.
    """

    KIND: ClassVar[str] = "record_gates"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.gates_changed"

    index: int
    verdict: GateVerdict
    passing_since: datetime | None
    failing_since: datetime | None
    changed: bool

    @property
    def audit_action(self) -> str | None:
        return self.AUDIT_ACTION if self.changed else None


@dataclass(frozen=True, kw_only=True)
class CompleteStep(_ActionBase):
    """Step `index` is done: step → `completed`, `finished_at = now`, `verdict` stored.

    `reason` `step_completed`: the gates passed for the whole bake (`verdict` passing).
    `reason` `step_skipped`: every node was unavailable within `max_unavailable`; no gates ran
    (`verdict` is `None`) and `skip_node_ids` are marked `skipped`, assignment cleared, as in
    `StartBaking`. `expected_bundle_id` is set by `Complete`, when the whole rollout completes.
    """

    KIND: ClassVar[str] = "complete_step"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.step_completed"

    index: int
    verdict: GateVerdict | None
    skip_node_ids: tuple[NodeId, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FailStep(_ActionBase):
    """Step `index` failed; `then` is the rollout's `on_failure`.

    Apply: step → `failed` (`reason`, `verdict` if any, `finished_at = now`); then `pause`:
    rollout → `paused` with this `reason`; `rollback`: rollout → `rolling_back` and a linked
    rollback rollout is created. `reason`: `max_failures_exceeded`, `gates_failed`,
    `deadline_exceeded`, `no_available_nodes`.
    """

    KIND: ClassVar[str] = "fail_step"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.step_failed"

    index: int
    then: OnFailure
    verdict: GateVerdict | None = None


@dataclass(frozen=True, kw_only=True)
class Pause(_ActionBase):
    """Rollout → `paused` with `reason` (`freeze_window`, `max_unavailable_exceeded`).

    `step_index` names the step concerned, if any (a resume with `skip_unavailable` sets that
    step's `skip_unavailable`).
    """

    KIND: ClassVar[str] = "pause"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.paused"

    step_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class AwaitPromotion(_ActionBase):
    """Blue-green: the standby step completed; rollout → `paused` with reason
    `awaiting_promotion` until `POST …/promote`. `index` is the promote step that waits."""

    KIND: ClassVar[str] = "await_promotion"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.paused"

    index: int


@dataclass(frozen=True, kw_only=True)
class Fail(_ActionBase):
    """Rollout → `failed` (`bundle_revoked`, `bundle_unavailable`); the active step, if any,
    → `failed` too (`step_index`). Nodes are left where they are."""

    KIND: ClassVar[str] = "fail"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.failed"

    step_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class Complete(_ActionBase):
    """Every step completed: rollout → `completed`, `finished_at = now`, and
    `expected_bundle_id` set on `verified_node_ids` (to each node's target bundle)."""

    KIND: ClassVar[str] = "complete"
    AUDIT_ACTION: ClassVar[str | None] = "rollout.completed"

    verified_node_ids: tuple[NodeId, ...] = ()


Action: TypeAlias = (
    Nothing
    | StartStep
    | StartBaking
    | RecordGates
    | CompleteStep
    | FailStep
    | Pause
    | AwaitPromotion
    | Fail
    | Complete
)
ACTION_TYPES: tuple[type[_ActionBase], ...] = (
    Nothing,
    StartStep,
    StartBaking,
    RecordGates,
    CompleteStep,
    FailStep,
    Pause,
    AwaitPromotion,
    Fail,
    Complete,
)
